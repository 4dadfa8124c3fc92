"""Try a quant: a short prompt through ``llama-completion`` (what the quant writes, and how
fast), as a frozen job with its argument list and a pure parser of the tool's timing lines.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.tools import LlamaTools

DEFAULT_PROMPT = "The three most important ideas in computer science are"
_EVAL = re.compile(r"common_perf_print:\s+(?P<which>prompt eval|eval) time =\s*[\d.]+ ms /\s*(?P<n>\d+) "
                   r"(?:tokens|runs)\s*\(\s*[\d.]+ ms per token,\s*(?P<speed>[\d.]+) tokens per second\)")


#: SentencePiece's word boundary: it stands for a space.
SPM_SPACE = "\u2581"


def writes_spaces_as_spm_marks(tokenizer_model: str | None,
                               tokens: Sequence[str] | None) -> bool:
    """True for a SentencePiece ("llama") vocabulary without a ``▁`` token.

    llama.cpp turns ``▁`` back into a space only inside vocabulary pieces; where the vocabulary
    lacks it (byte-fallback only, like the bundled demo's), each space the model writes comes
    out as the three raw bytes of ``▁``, which SentencePiece itself would decode as a space."""
    if tokenizer_model != "llama" or tokens is None:
        return False
    return SPM_SPACE not in tokens


class CompletionText:
    """llama-completion's stdout as text, fed in the pieces the process writes.

    The tool writes one token at a time, and a byte-fallback token is one byte of a UTF-8
    character: decoding each read on its own would turn every such character into U+FFFD."""

    def __init__(self, spm_spaces: bool = False) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._spm_spaces = spm_spaces

    def _shown(self, text: str) -> str:
        return text.replace(SPM_SPACE, " ") if self._spm_spaces else text

    def feed(self, data: bytes) -> str:
        """The text completed by ``data`` (an unfinished character waits for the next piece)."""
        return self._shown(self._decoder.decode(data))

    def finish(self) -> str:
        """What is left at the end. A character still incomplete here was cut by the token
        limit (on a byte-level vocabulary a token is one byte of it), not written wrong: it
        is left out rather than shown as U+FFFD."""
        self._decoder.reset()
        return ""


@dataclass(frozen=True)
class CompletionJob:
    """``llama-completion -m MODEL -p PROMPT -n N``: plain completion, no chat loop."""

    model: Path
    prompt: str = DEFAULT_PROMPT
    n_predict: int = 48
    context: int = 512
    seed: int = 1
    #: None: llama.cpp's default sampling; 0: greedy (the same text on every run).
    temperature: float | None = None
    #: What this run chose of the run options (a crash retry's --no-repack); the tools'
    #: standing options fill the rest, as for every queued job.
    options: RunOptions = RunOptions()

    def run_options(self, tools: LlamaTools) -> RunOptions:
        """The options this run starts with."""
        return self.options.over(tools.run_options().for_tool("completion"))

    def argv(self, tools: LlamaTools) -> list[str]:
        options = self.run_options(tools)
        argv = [str(tools.executable("completion", options)), "-m", str(self.model),
                "-p", self.prompt,
                "-n", str(self.n_predict), "-c", str(self.context), "-s", str(self.seed),
                # No chat loop, no warm-up run, only the new text on stdout: one short answer.
                "-no-cnv", "--no-warmup", "--simple-io", "--no-display-prompt"]
        if self.temperature is not None:
            argv += ["--temp", f"{self.temperature:g}"]
        return [*argv, *options.tool_args("completion")]


@dataclass(frozen=True)
class CompletionSpeed:
    prompt_tokens_per_s: float | None
    generated_tokens: int | None
    tokens_per_s: float | None


def parse_completion_speed(lines: Iterable[str]) -> CompletionSpeed:
    """Prompt and generation speed from llama-completion's ``common_perf_print`` lines."""
    prompt = generated = speed = None
    for line in lines:
        match = _EVAL.search(line)
        if not match:
            continue
        if match.group("which") == "prompt eval":
            prompt = float(match.group("speed"))
        else:
            generated, speed = int(match.group("n")), float(match.group("speed"))
    return CompletionSpeed(prompt, generated, speed)
