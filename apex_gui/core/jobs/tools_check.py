"""A few-second smoke test of the llama.cpp tools on this CPU: working, or broken and the fix.

Quantizes a tiny synthetic MoE to a K-quant, runs perplexity on a few tokens of it with and
without repacking, and starts every other tool once. Runs are judged by the same job engine
as real work, but with no crash retry, so a crash shows here instead of in the middle of a
run. The report is kept per tools build and CPU (``tools-check.json`` in the data folder):
the window runs the check once per build, and :meth:`LlamaTools.for_settings` turns a
"repacking crashes here" finding into ``--no-repack`` for every run.
"""

from __future__ import annotations

import subprocess
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from apex_gui.core.fixtures.synthetic import TINY_QWEN2MOE, write_synthetic_model
from apex_gui.core.jobs.calibration import quick_eval_text
from apex_gui.core.jobs.child_process import SIGKILL, own_group_options, signal_group
from apex_gui.core.jobs.crashes import signal_name
from apex_gui.core.jobs.device_placement import DevicePlacement
from apex_gui.core.jobs.devices import gpu_backends_in, list_devices
from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.monitor import CancelFlag, RunLimits
from apex_gui.core.jobs.parsers import parse_loaded_cpu_variant
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.runner import run_job
from apex_gui.core.jobs.tools import (TOOL_NAMES, LlamaTools, child_environment, cpu_variants,
                                      expected_cpu_variant, missing_tool_message)
from apex_gui.core.jobs.tools_findings import (
    ToolCheck, ToolsCheckReport, build_identity, store_check,
)

#: Seconds one tool start (``--help``) may take before it counts as hung.
START_TIMEOUT_S = 20.0
#: Seconds the quantize and perplexity runs of the check may take (each takes about one on
#: its tiny model): a hung tool hung the check, and the window with it, for good.
RUN_TIME_LIMIT_S = 120.0
REBUILD_FIX = ("rebuild the tools for this machine (`rm -rf .venv/llama.cpp .venv/.llama-tools "
               "&& make test` in the APEX Studio folder) or point APEX Studio at another "
               "llama.cpp build (Settings > llama.cpp tools folder)")


def _start_check(tools: LlamaTools, short: str,
                 cancel: CancelFlag | None = None) -> ToolCheck | None:
    """Start a tool with ``--help``: missing libraries or a SIGILL at start show here."""
    location = tools.locate(short)
    if location.path is None or (cancel is not None and cancel.is_set()):
        return None
    try:
        proc = subprocess.Popen([str(location.path), "--help"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=child_environment(),
                                stdin=subprocess.DEVNULL, **own_group_options())
    except OSError as error:
        return ToolCheck(location.executable, False, f"could not be started: {error}",
                         REBUILD_FIX)
    deadline = time.monotonic() + START_TIMEOUT_S
    out = b""
    while True:
        try:
            out, _ = proc.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
                continue
            signal_group(proc.pid, SIGKILL)
            proc.communicate()
            if cancel is not None and cancel.is_set():
                return None
            return ToolCheck(location.executable, False, f"did not answer --help within "
                             f"{START_TIMEOUT_S:.0f} s", REBUILD_FIX)
    output = out.decode("utf-8", errors="replace")
    if proc.returncode < 0:
        return ToolCheck(location.executable, False,
                         f"died at start by {signal_name(-proc.returncode)}", REBUILD_FIX)
    if "error while loading shared libraries" in output:
        line = next(ln for ln in output.splitlines() if "error while loading" in ln)
        return ToolCheck(location.executable, False, line.strip(), REBUILD_FIX)
    return ToolCheck(location.executable, True, "starts")


def run_tools_check(tools: LlamaTools, cancel: CancelFlag | None = None,
                    keep: bool = True,
                    time_limit_s: float = RUN_TIME_LIMIT_S) -> ToolsCheckReport:
    """Run the smoke test now (a few seconds); store the report unless ``keep`` is off.

    Every wait is bounded: a tool run by ``time_limit_s``, a start by START_TIMEOUT_S, and
    ``cancel`` (a window closing) stops whatever runs; a cancelled check is not stored.
    """
    started = time.monotonic()
    identity = build_identity(tools)
    if identity is None:
        missing = [loc.executable for loc in tools.report()
                   if not loc.found and loc.name in ("quantize", "perplexity")]

        checks = tuple(ToolCheck(name, False, "not found",
                                 missing_tool_message(name, tools.configured_dir))
                       for name in missing)
        return ToolsCheckReport("missing", checks, seconds=time.monotonic() - started)
    checks: list[ToolCheck] = []
    repack_broken = False
    variant = None
    plain = tools.plain()  # judge the build itself, not the user's setting
    with tempfile.TemporaryDirectory(prefix="apex-tools-check-") as folder:
        source = write_synthetic_model(Path(folder) / "check-f16.gguf", TINY_QWEN2MOE)
        quant_tool_folder = plain.path("perplexity").parent
        quant = Path(folder) / "check-q4_k_m.gguf"
        # On the CPU even where GPU backends are beside the tools: the devices get their
        # own runs below.
        two_threads = RunOptions(threads=2,
                                 cpu_only=bool(gpu_backends_in(quant_tool_folder)))
        limits = RunLimits(time_s=time_limit_s)
        outcome = run_job(QuantizeJob(source=source, output_path=quant, base_type="Q4_K_M",
                                      options=two_threads), plain, cancel=cancel,
                          crash_retry=False, limits=limits)
        if outcome.succeeded:
            checks.append(ToolCheck(TOOL_NAMES["quantize"], True, "quantized a tiny model to "
                                    "Q4_K_M"))
        else:
            checks.append(ToolCheck(TOOL_NAMES["quantize"], False, outcome.message,
                                    REBUILD_FIX))
        if outcome.succeeded:
            text = quick_eval_text()
            job = PerplexityJob(model=quant, text=text, context=128, chunks=2,
                                options=two_threads)
            with_repack = run_job(job, plain, cancel=cancel, crash_retry=False, limits=limits)
            without = run_job(job.without_repack(), plain, cancel=cancel, crash_retry=False,
                              limits=limits)
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
            cpu_run = with_repack if with_repack.succeeded else without
            if cpu_run.succeeded:
                checks += _device_checks(plain, job.without_repack() if repack_broken else job,
                                         float(cpu_run.results["ppl"]), cancel, limits)
    for short in TOOL_NAMES:
        if short in ("quantize", "perplexity"):
            continue
        check = _start_check(plain, short, cancel)
        if check is not None:
            checks.append(check)
    report = ToolsCheckReport(identity, tuple(checks), repack_broken, variant,
                              round(time.monotonic() - started, 2))
    if keep and not (cancel is not None and cancel.is_set()):
        store_check(report)
    return report


def _failure(outcome: Any) -> str:
    if outcome.signal_number:
        return f"crashed ({signal_name(outcome.signal_number)})"
    return f"failed: {outcome.message}"


#: Relative perplexity difference between a device and the CPU that counts as broken: the
#: GPU backends compute in other orders and precisions (on the demo, Vulkan's F16 path
#: differs from the CPU's by 0.1%), a broken device by orders of magnitude.
DEVICE_PPL_TOLERANCE = 0.01
DEVICE_FIX = ("update the GPU driver; until then run on the CPU (Settings > CPU only, or "
              "--cpu-only)")


def _device_checks(tools: LlamaTools, job: Any, cpu_ppl: float,
                   cancel: CancelFlag | None, limits: RunLimits) -> list[ToolCheck]:
    """Each GPU device the tools use by default: the same perplexity with every layer on it."""
    if not gpu_backends_in(tools.path("perplexity").parent):
        return []  # a CPU build: the CPU was checked above
    listing = list_devices(tools)
    if listing.error:
        return [ToolCheck("devices", False, listing.error, REBUILD_FIX)]
    checks = [ToolCheck(d.name, True, f"{d.description}: software Vulkan device, not used "
                        "(llama.cpp skips it)") for d in listing.hidden_software]
    for device in listing.gpus:
        env = (("GGML_VK_VISIBLE_DEVICES", _visible_vulkan()),) if device.software else ()
        on_device = DevicePlacement(devices=(device.name,), gpu_layers=999,
                                    verdict="full GPU offload",
                                    summary=f"full GPU offload on {device.name}", env=env)
        placed = job.with_options(replace(job.options, cpu_only=False, placement=on_device))
        outcome = run_job(placed, tools, cancel=cancel, crash_retry=False, limits=limits)
        if not outcome.succeeded:
            checks.append(ToolCheck(device.name, False, f"{device.description}: perplexity "
                                    f"with every layer on it {_failure(outcome)}", DEVICE_FIX))
            continue
        ppl = float(outcome.results["ppl"])
        close = abs(ppl - cpu_ppl) <= DEVICE_PPL_TOLERANCE * cpu_ppl
        checks.append(ToolCheck(device.name, close, (
            f"{device.description}: perplexity with every layer on it {ppl:.4f}, on the CPU "
            f"{cpu_ppl:.4f}" + ("" if close else " (wrong results)")),
            "" if close else DEVICE_FIX))
    return checks


def _visible_vulkan() -> str:
    return os.environ.get("GGML_VK_VISIBLE_DEVICES", "0")
