"""A few-second smoke test of the llama.cpp tools on this CPU: working, or broken and the fix.

Quantizes a tiny synthetic MoE to a K-quant, runs perplexity on a few tokens of it with and
without repacking, and starts every other tool once. Runs are judged by the same job engine
as real work, but with no crash retry, so a crash shows here instead of in the middle of a
run. The report is kept per tools build and CPU (``tools-check.json`` in the data folder):
the window runs the check once per build, and :meth:`LlamaTools.for_settings` turns a
"repacking crashes here" finding into ``--no-repack`` for every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apex_gui.core.jobs.tools import (
    TOOL_NAMES, LlamaTools, child_environment, cpu_variants, expected_cpu_variant,
)
from apex_gui.core.settings import data_dir

CHECK_FILE = "tools-check.json"
#: Seconds one tool start (``--help``) may take before it counts as hung.
START_TIMEOUT_S = 20.0
REBUILD_FIX = ("rebuild the tools for this machine (`rm -rf .venv/llama.cpp .venv/.llama-tools "
               "&& make test` in the APEX Studio folder) or point APEX Studio at another "
               "llama.cpp build (Settings > llama.cpp tools folder)")


@dataclass(frozen=True)
class ToolCheck:
    """One tool's verdict."""

    tool: str  # executable name
    working: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class ToolsCheckReport:
    """Everything one check found, for one tools build on one CPU."""

    identity: str
    checks: tuple[ToolCheck, ...]
    #: Perplexity of a quantized model crashes with repacking and works without it.
    repack_broken: bool = False
    cpu_variant: str | None = None
    seconds: float = 0.0
    checked_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return all(c.working for c in self.checks)

    @property
    def broken(self) -> list[ToolCheck]:
        return [c for c in self.checks if not c.working]

    def summary(self) -> str:
        """One line for a banner or a status bar."""
        if self.broken:
            first = self.broken[0]
            more = f" (and {len(self.broken) - 1} more)" if len(self.broken) > 1 else ""
            return f"{first.tool} is broken on this CPU{more}: {first.detail}. Fix: {first.fix}"
        if self.repack_broken:
            return ("llama.cpp's repacked CPU kernels crash on this CPU; APEX Studio runs every "
                    "evaluation with --no-repack (same results, somewhat slower)")
        return "all llama.cpp tools work on this CPU"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolsCheckReport:
        checks = tuple(ToolCheck(**c) for c in data.get("checks", []))
        return cls(identity=str(data["identity"]), checks=checks,
                   repack_broken=bool(data.get("repack_broken", False)),
                   cpu_variant=data.get("cpu_variant"), seconds=float(data.get("seconds", 0.0)),
                   checked_at=float(data.get("checked_at", 0.0)))


def _cpu_identity() -> str:
    """The CPU model and its feature flags: a check holds for this CPU only."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    model = flags = ""
    for line in text.splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].strip()
    return model + "|" + hashlib.sha256(flags.encode()).hexdigest()[:12]


def build_identity(tools: LlamaTools) -> str | None:
    """Which tools build this is (paths, sizes, times) on which CPU; None if tools are missing."""
    parts = []
    for short in ("quantize", "perplexity"):
        location = tools.locate(short)
        if location.path is None:
            return None
        stat = location.path.stat()
        parts.append(f"{location.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    parts.append(_cpu_identity())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _check_path() -> Path:
    return data_dir() / CHECK_FILE


def _read_reports() -> dict[str, Any]:
    try:
        data = json.loads(_check_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def known_check(tools: LlamaTools) -> ToolsCheckReport | None:
    """The stored report for this tools build on this CPU, or None when it was never checked."""
    identity = build_identity(tools)
    if identity is None:
        return None
    raw = _read_reports().get(identity)
    try:
        return ToolsCheckReport.from_dict(raw) if isinstance(raw, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def store_check(report: ToolsCheckReport) -> None:
    """Keep the report (atomically; a few builds at most are remembered)."""
    reports = _read_reports()
    reports[report.identity] = report.to_dict()
    newest = sorted(reports.items(), key=lambda kv: kv[1].get("checked_at", 0))[-8:]
    path = _check_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(dict(newest), indent=2), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass  # the check still reports; it only runs again next time


def _start_check(tools: LlamaTools, short: str) -> ToolCheck | None:
    """Start a tool with ``--help``: missing libraries or a SIGILL at start show here."""
    location = tools.locate(short)
    if location.path is None:
        return None
    try:
        proc = subprocess.run([str(location.path), "--help"], capture_output=True,
                              timeout=START_TIMEOUT_S, env=child_environment(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ToolCheck(location.executable, False, f"did not answer --help within "
                         f"{START_TIMEOUT_S:.0f} s", REBUILD_FIX)
    except OSError as error:
        return ToolCheck(location.executable, False, f"could not be started: {error}",
                         REBUILD_FIX)
    output = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
    if proc.returncode < 0:
        from apex_gui.core.jobs.runner import signal_name

        return ToolCheck(location.executable, False,
                         f"died at start by {signal_name(-proc.returncode)}", REBUILD_FIX)
    if "error while loading shared libraries" in output:
        line = next(ln for ln in output.splitlines() if "error while loading" in ln)
        return ToolCheck(location.executable, False, line.strip(), REBUILD_FIX)
    return ToolCheck(location.executable, True, "starts")


def run_tools_check(tools: LlamaTools, cancel: threading.Event | None = None,
                    keep: bool = True) -> ToolsCheckReport:
    """Run the smoke test now (a few seconds); store the report unless ``keep`` is off."""
    from apex_gui.core.jobs.calibration import quick_eval_text
    from apex_gui.core.jobs.evaluations import PerplexityJob
    from apex_gui.core.jobs.quantize import QuantizeJob
    from apex_gui.core.jobs.parsers import parse_loaded_cpu_variant
    from apex_gui.core.jobs.runner import run_job
    from apex_gui.core.fixtures.synthetic import TINY_QWEN2MOE, write_synthetic_model

    started = time.monotonic()
    identity = build_identity(tools)
    if identity is None:
        missing = [loc.executable for loc in tools.report()
                   if not loc.found and loc.name in ("quantize", "perplexity")]
        from apex_gui.core.jobs.tools import missing_tool_message

        checks = tuple(ToolCheck(name, False, "not found",
                                 missing_tool_message(name, tools.configured_dir))
                       for name in missing)
        return ToolsCheckReport("missing", checks, seconds=time.monotonic() - started)
    checks: list[ToolCheck] = []
    repack_broken = False
    variant = None
    plain = tools.with_no_repack(False)  # judge the build itself, not the user's setting
    with tempfile.TemporaryDirectory(prefix="apex-tools-check-") as folder:
        source = write_synthetic_model(Path(folder) / "check-f16.gguf", TINY_QWEN2MOE)
        quant_tool_folder = plain.path("perplexity").parent
        quant = Path(folder) / "check-q4_k_m.gguf"
        outcome = run_job(QuantizeJob(source=source, output_path=quant, base_type="Q4_K_M",
                                      threads=2), plain, cancel=cancel, crash_retry=False)
        if outcome.succeeded:
            checks.append(ToolCheck(TOOL_NAMES["quantize"], True, "quantized a tiny model to "
                                    "Q4_K_M"))
        else:
            checks.append(ToolCheck(TOOL_NAMES["quantize"], False, outcome.message,
                                    REBUILD_FIX))
        if outcome.succeeded:
            text = quick_eval_text()
            job = PerplexityJob(model=quant, text=text, context=128, chunks=2, threads=2)
            with_repack = run_job(job, plain, cancel=cancel, crash_retry=False)
            without = run_job(job.without_repack(), plain, cancel=cancel, crash_retry=False)
            variant = (parse_loaded_cpu_variant(with_repack.log)
                       or parse_loaded_cpu_variant(without.log)
                       or expected_cpu_variant(cpu_variants(quant_tool_folder)))
            name = TOOL_NAMES["perplexity"]
            if with_repack.succeeded:
                checks.append(ToolCheck(name, True, "perplexity of a Q4_K_M model, with "
                                        "and without repacking" if without.succeeded else
                                        "perplexity of a Q4_K_M model"))
            elif without.succeeded:
                repack_broken = True
                where = f" (CPU variant {variant})" if variant else ""
                checks.append(ToolCheck(name, True, "works only with --no-repack: with "
                                        f"repacking it {_failure(with_repack)}{where}; APEX "
                                        "Studio passes --no-repack on this CPU"))
            else:
                checks.append(ToolCheck(name, False, f"{_failure(without)} even with "
                                        "--no-repack", REBUILD_FIX))
    for short in TOOL_NAMES:
        if short in ("quantize", "perplexity"):
            continue
        check = _start_check(plain, short)
        if check is not None:
            checks.append(check)
    report = ToolsCheckReport(identity, tuple(checks), repack_broken, variant,
                              round(time.monotonic() - started, 2))
    if keep and not (cancel is not None and cancel.is_set()):
        store_check(report)
    return report


def _failure(outcome: Any) -> str:
    if outcome.signal_number:
        from apex_gui.core.jobs.runner import signal_name

        return f"crashed ({signal_name(outcome.signal_number)})"
    return f"failed: {outcome.message}"
