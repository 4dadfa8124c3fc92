"""Running the measurement's tools: a job that must succeed, and a KL probe that survives
llama-perplexity losing its closing lines."""

from __future__ import annotations

import re
import threading
from typing import Any

from dataclasses import dataclass

from apex_gui.core.jobs import parsers
from apex_gui.core.jobs.evaluations import KLDivergenceJob, ReferenceLogitsJob
from apex_gui.core.jobs.runner import run_job
from apex_gui.core.jobs.specs import JobVerdict
from apex_gui.core.jobs.tools import LlamaTools

#: KL runs tried per measurement when the tool's closing lines keep getting lost.
KLD_TRIES = 3
#: Share of chunks whose rows must have arrived for a run without statistics to count.
PARTIAL_ROWS_SHARE = 0.5

_KLD_ROW = re.compile(r"^\s*(\d+)\s+[-\d.naif]+\s+±\s+[-\d.naif]+\s+[-\d.naif]+\s+±\s+"
                      r"[-\d.naif]+\s+([-\d.naif]+)\s+±")


class SensitivityError(ValueError):
    """A measurement step failed; the message names the tool run and what to do."""


class SensitivityCancelled(Exception):
    """The measurement was cancelled; nothing was cached."""


@dataclass(frozen=True, kw_only=True)
class ProbeReferenceJob(ReferenceLogitsJob):
    """The probes' reference logits, judged by the file the tool wrote: when llama.cpp's
    logger lost the closing lines of a run that exited normally, the file (checked against
    the size its own header promises before it is kept) says what was computed."""

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        verdict = super().verdict(exit_code, log)
        if verdict.output_lost and exit_code == 0:
            return JobVerdict(True, f"reference logits saved to {self.output_path}")
        return verdict


def kld_from_rows(log: str, min_share: float = 1.0) -> float | None:
    """The running mean KLD after the last per-chunk row printed, when at least ``min_share``
    of the announced chunks were printed (else None).

    llama-perplexity's closing statistics are sometimes lost at exit (llama.cpp issue
    22142); the per-chunk rows carry the running mean over the chunks so far.
    """
    total = None
    last: tuple[int, float] | None = None
    for line in log.splitlines():
        count = parsers.parse_chunk_count(line)
        if count is not None:
            total = count
        match = _KLD_ROW.match(line)
        if match:
            last = (int(match.group(1)), float(match.group(2)))
    if total is None or last is None or last[0] < total * min_share:
        return None
    return last[1]


def measure_kld(job: KLDivergenceJob, tools: LlamaTools, cancel: threading.Event | None,
                what: str) -> tuple[float, bool]:
    """Mean KLD of a quant and whether it came from the closing statistics.

    When every try lost them, the running mean of the most complete per-chunk table stands
    in (5 decimals; over at least half of the chunks).
    """
    best: tuple[int, float] | None = None
    message = ""
    for _ in range(KLD_TRIES):
        outcome = run_job(job, tools, cancel=cancel)
        if cancel is not None and cancel.is_set():
            raise SensitivityCancelled()
        if outcome.succeeded:
            return float(outcome.results["kld_mean"]), True
        message = outcome.message
        if not outcome.output_lost:
            break
        rows = [n for n in (parsers.parse_kld_chunk_row(line) for line in outcome.log.splitlines())
                if n is not None]
        value = kld_from_rows(outcome.log, PARTIAL_ROWS_SHARE)
        if value is not None and (best is None or max(rows) > best[0]):
            best = (max(rows), value)
    if best is None:
        raise SensitivityError(f"{what} failed: {message}")
    return best[1], False


def run_step(job: Any, tools: LlamaTools, cancel: threading.Event | None,
             what: str) -> dict[str, Any]:
    """Run a job that must succeed; its results, or SensitivityError naming the step."""
    outcome = run_job(job, tools, cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise SensitivityCancelled()
    if not outcome.succeeded:
        raise SensitivityError(f"{what} failed: {outcome.message}")
    return outcome.results
