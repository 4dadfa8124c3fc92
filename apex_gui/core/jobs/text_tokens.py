"""Is a text long enough for a run? Counted with the model's own vocabulary (llama-tokenize).

llama-perplexity and llama-imatrix need at least two contexts of tokens; a shorter text makes
llama-perplexity exit 0 having computed nothing. Guessing tokens from characters refused
texts the tool accepts (6,000 characters are 6,000 tokens for a byte-level model, and "about
1000" by a characters-per-token guess), so the check counts with ``llama-tokenize`` where the
model and the tool are at hand, and otherwise refuses only a text that no vocabulary could
make long enough. The tool's own message still names the exact count after a run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from apex_gui.core.files.inputs import TEXT_CAP_BYTES, InputFileError, check_input_file
from apex_gui.core.jobs.specs import JobError
from apex_gui.core.jobs.tools import LlamaTools, ToolNotFoundError, child_environment

#: The most tokens one byte of text can become: with byte fallback a byte is one token, and a
#: SentencePiece vocabulary without a ``▁`` piece spells each space as its three UTF-8 bytes.
MAX_TOKENS_PER_BYTE = 3
#: BOS and EOS, which a tool may add around the text.
SPECIAL_TOKENS = 2
#: Seconds llama-tokenize may take (it loads the vocabulary only: well under one for a big
#: model) before the count is given up and the certain bound used instead.
TOKENIZE_TIMEOUT_S = 60.0


def tokens_at_most(text: bytes) -> int:
    """More tokens than any vocabulary makes of ``text``."""
    return MAX_TOKENS_PER_BYTE * len(text) + SPECIAL_TOKENS


def count_tokens(tools: LlamaTools, model: Path, text: bytes) -> int | None:
    """Tokens of ``text`` with ``model``'s vocabulary (BOS included, as the tools add it), or
    None when they cannot be counted (no llama-tokenize, a model it cannot load, a hang)."""
    try:
        executable = tools.path("tokenize")
    except ToolNotFoundError:
        return None
    argv = [str(executable), "-m", str(model), "--stdin", "--ids", "--log-disable",
            "--no-escape"]  # as the jobs pass the text (--no-escape)
    try:
        done = subprocess.run(argv, input=text, capture_output=True, env=child_environment(),
                              timeout=TOKENIZE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = done.stdout.decode("utf-8", errors="replace").strip()
    if done.returncode != 0 or not out.startswith("[") or not out.endswith("]"):
        return None
    inside = out[1:-1].strip()
    return inside.count(",") + 1 if inside else 0


def read_text_head(path: Path, what: str, needed_tokens: int) -> tuple[bytes, bool]:
    """As much of a text as a length check needs (never the whole of a huge file, a FIFO or
    a device), and whether that is the whole text; JobError for a file that is no text."""
    try:
        check_input_file(path, what, TEXT_CAP_BYTES)
    except InputFileError as error:
        raise JobError(str(error)) from None
    # 16 bytes a token is more than any tokenizer takes for one (most take 3-5 for prose).
    limit = 16 * needed_tokens + 1
    with open(path, "rb") as handle:
        head = handle.read(limit)
    return head[:limit - 1], len(head) < limit


def check_text_tokens(path: Path, what: str, context: int, model: Path | None,
                      tools: LlamaTools | None, *, purpose: str = "", fix: str,
                      context_flag: str = "--ctx") -> None:
    """Raise :class:`JobError` when ``path`` has fewer than ``2 * context`` tokens.

    ``model``: a model that exists now (its vocabulary counts the tokens), or None (then only
    a text no vocabulary could stretch to the length is refused). ``purpose`` follows "a
    context of N" ("for an importance matrix"); ``fix`` says what to do.
    """
    needed = 2 * context
    head, whole = read_text_head(path, what, needed)
    counted = count_tokens(tools, model, head) if tools is not None and model is not None \
        else None
    fit = (f"{context_flag} {max(16, counted // 2)} would fit" if counted
           else f"{context_flag}")
    purpose = f" {purpose}" if purpose else ""
    if counted is not None:
        if counted < needed and whole:
            raise JobError(
                f"the {what} {path} is too short: {counted} tokens for {model.name} (counted "
                f"with its vocabulary) but a context of {context}{purpose} needs at least "
                f"{needed}; {fix} ({fit})")
        return
    if whole and tokens_at_most(head) < needed:
        raise JobError(
            f"the {what} {path} is too short: {len(head)} bytes are at most "
            f"{tokens_at_most(head)} tokens for any model, but a context of {context}"
            f"{purpose} needs at least {needed}; {fix} ({fit})")
