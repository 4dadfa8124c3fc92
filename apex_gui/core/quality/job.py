"""Sensitivity as a job of the run queue: ``apex-studio sensitivity`` in a child process.

The measurement itself runs llama-quantize and llama-perplexity many times; as one child
process it gets what every queued job gets: progress with an ETA (read from the command's
``[ 43.4%] stage, about 77 s left`` lines), a polite cancel (SIGTERM: the command stops its
tool and writes no cache entry), and a row in the run history.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from apex_gui.core.jobs.progress import Progress, ProgressReader
from apex_gui.core.jobs.specs import MODEL_INPUT, JobInput, JobVerdict, ToolJob
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.quality.sensitivity import SensitivityTable

_PROGRESS = re.compile(r"\[\s*([\d.]+)%\]\s*([^\r\n\x1b]*)")
_WROTE = re.compile(r"wrote (.+): (\d+) tensors x (\d+) types, (\d+) KL probes")


def parse_sensitivity_progress(text: str) -> tuple[float, str] | None:
    """The last ``[ 43.4%] stage`` of the command's output: fraction and stage."""
    found = None
    for match in _PROGRESS.finditer(text):
        found = match
    if found is None:
        return None
    stage = found.group(2).split(", about ")[0].strip()
    return float(found.group(1)) / 100, stage


class SensitivityProgressReader(ProgressReader):
    unit = "per mille"

    def __init__(self) -> None:
        super().__init__()
        self.progress = Progress(total=1000, unit=self.unit)

    def feed_line(self, line: str) -> bool:
        return self.peek(line)

    def peek(self, pending: str) -> bool:
        parsed = parse_sensitivity_progress(pending[-400:])
        if parsed is None:
            return False
        done = round(parsed[0] * 1000)
        if done == self.progress.done and parsed[1] == self.progress.detail:
            return False
        self.progress.done, self.progress.detail = done, parsed[1]
        return True


@dataclass(frozen=True, kw_only=True)
class SensitivityJob(ToolJob):
    """Measure a model's sensitivity into a JSON table (``apex-studio sensitivity``)."""

    tool: ClassVar[str] = "apex-studio sensitivity"
    kind: ClassVar[str] = "sensitivity"
    reads: ClassVar[tuple[JobInput, ...]] = (MODEL_INPUT,
                                             JobInput("imatrix", "importance matrix"))
    writes: ClassVar[str] = "output_path"
    subject: ClassVar[str] = "sensitivity of"
    progress_reader: ClassVar[type[ProgressReader]] = SensitivityProgressReader

    model: Path
    output_path: Path
    imatrix: Path | None = None
    context: int = 512
    chunks: int | None = None

    def args(self) -> list[str]:
        partial = self.partial_output()
        assert partial is not None
        extra = ["--imatrix", str(self.imatrix)] if self.imatrix else []
        chunks = ["--chunks", str(self.chunks)] if self.chunks else []
        threads = ["--threads", str(self.options.threads)] if self.options.threads > 0 else []
        return ["-m", "apex_gui", "sensitivity", str(self.model), "-o", str(partial),
                "--probe-ctx", str(self.context), *chunks, *threads, *extra]

    def argv(self, tools: LlamaTools) -> list[str]:
        # The measurement is Python driving the tools: this interpreter runs it.
        return [sys.executable, *self.args()]

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        found = None
        for found in _WROTE.finditer(log):
            pass
        if exit_code == 0 and found is not None:
            # The counts come from the table itself (output_results).
            return JobVerdict(True, f"{found.group(2)} tensors x {found.group(3)} types, "
                                 f"{found.group(4)} KL probes")
        lines = [line for line in log.replace("\r", "\n").splitlines()
                 if line.strip() and not line.lstrip().startswith("[")]
        reason = lines[-1].strip() if lines else f"exit code {exit_code}"
        return JobVerdict(False, f"sensitivity of {self.model.name} failed: {reason}")

    def output_problem(self, written: Path) -> str | None:
        try:
            SensitivityTable.load(written)
        except (ValueError, KeyError, OSError) as error:
            return f"{written.name} is not a complete sensitivity table: {error}"
        return None

    def output_results(self, written: Path) -> dict[str, Any]:
        table = SensitivityTable.load(written)
        return {"tensors": len(table.errors), "types": len(table.candidates),
                "probes": len(table.probes)}
