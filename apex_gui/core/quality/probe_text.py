"""The default text of the calibration probes: the four kinds of the APEX calibration mix.

Mean KL divergence depends on the text: on the trained demo, a Q4_K_M quant scores 0.0021 on
the encyclopedic quick-evaluation text and 0.0033 on chat and code. A table calibrated on one
kind of text predicts another kind badly, so the probes read what quants are used for: short
pieces of multi-turn chat, code, step-by-step reasoning and tool calls in rotation, so that
even the first chunk or two cover all four. The pieces come from the end of each bundled
calibration file (evaluations that take a file's beginning see other text).
"""

from __future__ import annotations

from pathlib import Path

from apex_gui.core.jobs.calibration import bundled_calibration_files, materialize

#: Characters taken from the end of each calibration file.
TAIL_CHARS = 8192
#: Characters per piece before moving on to the next file (cut at a line end).
PIECE_CHARS = 768


def _pieces(text: str) -> list[str]:
    tail = text[-TAIL_CHARS:]
    start = tail.find("\n") + 1  # begin on a whole line
    pieces: list[str] = []
    while start < len(tail):
        end = tail.find("\n", start + PIECE_CHARS)
        end = len(tail) if end < 0 else end + 1
        pieces.append(tail[start:end])
        start = end
    return pieces


def probe_text_content() -> str:
    """The probe text: pieces of each bundled calibration file in rotation."""
    sources = [_pieces(item.read_text(encoding="utf-8")) for item in bundled_calibration_files()]
    out: list[str] = []
    for index in range(max(len(s) for s in sources)):
        out += [s[index] for s in sources if index < len(s)]
    return "".join(out)


def probe_text() -> Path:
    """The probe text as a real file (content-addressed under the cache folder)."""
    return materialize(probe_text_content().encode("utf-8"), "eval", "sensitivity-probe.txt")
