"""Benchmark task files checked before any run: llama-perplexity reads what it can of a wrong
file and exits 0 without a score (a README given as the HellaSwag file "failed without saying
why"). Each check reads the file the way llama-perplexity does and says what is wrong.

HellaSwag (``--hellaswag``): 6 lines per task: the context, the right ending's number (0-3),
the four endings. Winogrande (``--winogrande``): CSV lines ``index,sentence,option1,option2,
answer`` with a ``_`` in the sentence and an answer of 1 or 2 (lines that do not parse, like
a header, are skipped). Multiple choice (``--multiple-choice``): llama.cpp's binary format,
a task count, the tasks' offsets, then per task a question and two answer lists.
"""

from __future__ import annotations

import os
import struct

from apex_gui.core.files.inputs import TASK_CAP_BYTES, InputFileError, read_bounded_bytes

__all__ = ["TASK_KINDS", "check_task_file"]

#: Kind -> (name in messages, the file people use).
TASK_KINDS: dict[str, tuple[str, str]] = {
    "hellaswag": ("HellaSwag", "hellaswag_val_full.txt"),
    "winogrande": ("Winogrande", "winogrande-debiased-eval.csv"),
    "multiple-choice": ("multiple-choice", "mmlu-validation.bin, arc-challenge-validation.bin"),
}
#: llama.cpp's own limit on answers per question.
_MAX_ANSWERS = 100


def check_task_file(kind: str, path: str | os.PathLike[str], what: str = "") -> int:
    """The number of tasks in a task file of ``kind`` (a key of :data:`TASK_KINDS`), or an
    :class:`InputFileError` in one line naming the file, what is wrong and what is expected."""
    name, example = TASK_KINDS[kind]
    label = f"{what} {path}" if what else str(path)
    data = read_bounded_bytes(path, label, TASK_CAP_BYTES)
    if kind == "multiple-choice":
        problem, count = _multiple_choice(data)
    else:
        text = data.decode("utf-8", errors="replace")
        problem, count = _hellaswag(text) if kind == "hellaswag" else _winogrande(text)
    if problem:
        raise InputFileError(f"{label} is not a {name} task file: {problem} (as in {example})")
    return count


def _hellaswag(text: str) -> tuple[str, int]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # a final newline ends the last line, as std::getline reads it
    if not lines:
        return "it is empty; each task is 6 lines", 0
    if len(lines) % 6:
        return (f"{len(lines)} lines, not a multiple of 6; each task is 6 lines: the context, "
                "the right ending's number (0-3) and the four endings"), 0
    for start in range(0, len(lines), 6):
        gold = lines[start + 1].strip()
        if gold not in ("0", "1", "2", "3"):
            shown = gold if len(gold) <= 40 else gold[:40] + "…"
            return (f"line {start + 2} should be the right ending's number (0-3) and reads "
                    f"{shown!r}"), 0
    return "", len(lines) // 6


def _winogrande_line(line: str) -> bool:
    """One CSV line as llama.cpp's load_winogrande_from_csv reads it."""
    commas, quoted = [], False
    for index, char in enumerate(line):
        if quoted:
            quoted = char != '"'
        elif char == '"':
            quoted = True
        elif char == ",":
            commas.append(index)
            if len(commas) == 4:
                break
    if len(commas) != 4:
        return False
    sentence = line[commas[0] + 1:commas[1]]
    answer = line[commas[3] + 1:].strip()
    return "_" in sentence and answer in ("1", "2")


def _winogrande(text: str) -> tuple[str, int]:
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    count = sum(_winogrande_line(line) for line in lines)
    if not count:
        return (f"none of its {len(lines)} line(s) is a task; each is index,sentence with a _ "
                "for the blank,option1,option2,answer (1 or 2)"), 0
    return "", count


def _multiple_choice(data: bytes) -> tuple[str, int]:
    expected = ("llama.cpp's binary multiple-choice format (a task count, offsets, then "
                "questions and answers)")
    if len(data) < 4:
        return f"{len(data)} bytes, too short for {expected}", 0
    (count,) = struct.unpack_from("<I", data, 0)
    if count == 0 or 4 + 4 * count > len(data):
        return f"its first bytes do not start {expected}", 0
    offsets = struct.unpack_from(f"<{count}I", data, 4)
    for task, offset in enumerate(offsets[:3]):  # the first tasks tell a real file apart
        if not _task_at(data, offset):
            return f"task {task + 1} at byte {offset} cannot be read; expected {expected}", 0
    return "", count


def _task_at(data: bytes, offset: int) -> bool:
    """A question, then two answer lists (each: count <= 100, strings, int labels)."""
    position = offset

    def read_u32() -> int | None:
        nonlocal position
        if position + 4 > len(data):
            return None
        (value,) = struct.unpack_from("<I", data, position)
        position += 4
        return int(value)

    def read_string() -> bool:
        nonlocal position
        size = read_u32()
        if size is None or position + size > len(data):
            return False
        position += size
        return True

    if not read_string():
        return False
    for _ in range(2):
        answers = read_u32()
        if answers is None or answers > _MAX_ANSWERS:
            return False
        if not all(read_string() for _ in range(answers)):
            return False
        if position + 4 * answers > len(data):
            return False
        position += 4 * answers
    return True
