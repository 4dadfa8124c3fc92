"""Tools that crash: what the message says, and which crashes are worth another run.

On AMX / AVX-512 Xeons the repacked kernels of this llama.cpp build crash on quantized
models; a portable build's best CPU variant can crash where a lower one works. Such a run is
repeated without the code path that crashed.
"""

from __future__ import annotations

import re
import signal
from dataclasses import replace
from typing import TYPE_CHECKING

from apex_gui.core.jobs.device_placement import CPU_ONLY, gpu_out_of_memory
from apex_gui.core.jobs.parsers import parse_loaded_cpu_variant, rpc_failure_message
from apex_gui.core.jobs.specs import ToolJob
from apex_gui.core.jobs.tools import (
    TOOL_NAMES, LlamaTools, ToolNotFoundError, cpu_variants, expected_cpu_variant,
)

if TYPE_CHECKING:
    from apex_gui.core.jobs.runner import JobOutcome

#: Signals of a tool that crashed (as opposed to one stopped from outside).
CRASH_SIGNALS = frozenset(int(getattr(signal, name)) for name in
                          ("SIGSEGV", "SIGILL", "SIGBUS", "SIGABRT", "SIGFPE")
                          if hasattr(signal, name))
#: Crashes the CPU code path can explain, worth one run without repacking: the AMX kernels
#: die with SIGSEGV or SIGILL (SIGBUS: a misaligned access of the same kind). An abort
#: (SIGABRT: a failed check) or a division by zero is the input's doing on every CPU.
CPU_CRASH_SIGNALS = frozenset(int(getattr(signal, name)) for name in
                              ("SIGSEGV", "SIGILL", "SIGBUS") if hasattr(signal, name))
#: The one crash a lower CPU variant can avoid: an instruction this CPU does not have.
VARIANT_CRASH_SIGNAL = int(getattr(signal, "SIGILL", 4))

_ABORT = re.compile(r"(?P<where>[^\s:]*[\w.-]+\.(?:c|cc|cpp|h|hpp|cu|m):\d+): "
                    r"(?P<what>GGML_ASSERT\(.*\) failed|GGML_ABORT.*|.*fatal error.*)")
_TERMINATE = re.compile(r"terminate called after throwing an instance of '(?P<type>[^']+)'")
_WHAT = re.compile(r"^\s*what\(\):\s*(?P<what>.+)$")


def parse_abort_line(log: str) -> str | None:
    """The line where llama.cpp stopped on a failed check of its own (``GGML_ASSERT(...)
    failed``, ``GGML_ABORT``, an uncaught C++ exception), without the build's folder; None
    when the log has none. Such an abort is the input's doing: it repeats on every CPU."""
    for line in log.splitlines():
        if match := _ABORT.search(line):
            where = match.group("where").rsplit("/", 1)[-1]
            return f"{where}: {match.group('what').strip()}"
        if match := _TERMINATE.search(line):
            lines = log[log.index(line):].splitlines()[1:3]
            what = next((m.group("what") for m in map(_WHAT.match, lines) if m), "")
            return f"uncaught {match.group('type')}" + (f": {what}" if what else "")
    return None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def killed_message(tool: str, signal_number: int | None, log: str = "") -> str:
    name = f"{signal_name(signal_number)} ({signal_number})" if signal_number else "a signal"
    if signal_number in CRASH_SIGNALS and (line := parse_abort_line(log)):
        return (f"{tool} stopped on a failed check inside llama.cpp ({name}): {line}. It "
                "fails this way on every CPU: the input is one this llama.cpp build cannot "
                "run (check the model with `apex-studio inspect`; a newer llama.cpp may "
                "accept it); no output was kept")
    if signal_number in (getattr(signal, "SIGSEGV", None), getattr(signal, "SIGABRT", None),
                         getattr(signal, "SIGBUS", None), getattr(signal, "SIGILL", None)):
        # Not "re-download it": the model is often a quant this app just made.
        return (f"{tool} crashed ({name}); the log above shows how far it got. Check that its "
                "input model is complete (a download may be cut short; a quant made here can "
                "be made again) and that this llama.cpp build supports its architecture "
                "(`apex-studio tools`); no output was kept")
    return (f"{tool} was stopped from outside by {name} before it finished. If you did not "
            "stop it, the system probably ran out of memory (the out-of-memory killer sends "
            "SIGKILL): close other programs, use fewer threads, or run on a machine with more "
            "RAM; no output was kept")


def crash_retry_for(outcome: JobOutcome, tools: LlamaTools) -> tuple[ToolJob, str] | None:
    """The job to run after ``outcome`` crashed, without the path that crashed, and a note.

    On AMX / AVX-512 Xeons the repacked kernels of this llama.cpp build crash on quantized
    models; without repacking (then, after an illegal instruction, on a lower CPU variant of
    a portable build) the same run works. None when the crash is not one a CPU code path
    explains (an abort on a failed check: a 1,000-layer model was run on all 14 variants,
    15 failed rows) or nothing is left to avoid.
    """
    placement = outcome.job.options.placement
    if not outcome.succeeded and placement is not None and placement.uses_gpu \
            and gpu_out_of_memory(outcome.log):
        # The memory model left a margin, but another program can take VRAM meanwhile:
        # a run never fails for want of it.
        cpu = replace(CPU_ONLY, summary=f"CPU only: out of GPU memory with {placement.describe()}")
        return (outcome.job.with_options(replace(outcome.job.options, placement=cpu)),
                f"the GPU ran out of memory ({placement.describe()}); APEX Studio ran it again "
                "on the CPU")
    if outcome.signal_number not in CPU_CRASH_SIGNALS or parse_abort_line(outcome.log):
        return None  # a failed check of llama.cpp's own fails the same on every variant
    if rpc_failure_message(outcome.log, outcome.job.options.rpc_workers, outcome.signal_number):
        return None  # a worker was lost: running again here would not bring it back
    if outcome.job.tool not in TOOL_NAMES:
        return None  # not a llama.cpp tool (the Python converter): no CPU variant to avoid
    variant = parse_loaded_cpu_variant(outcome.log) or _loaded_variant(outcome.job, tools)
    # Only an illegal instruction is a variant's doing; another crash stops after --no-repack.
    fallback = outcome.job.crash_fallback(
        variant if outcome.signal_number == VARIANT_CRASH_SIGNAL else None)
    if fallback is None:
        return None
    job, how = fallback
    tool = TOOL_NAMES.get(outcome.job.tool, outcome.job.tool)
    where = f" in its {variant} CPU variant" if variant else ""
    note = (f"{tool} crashed ({signal_name(outcome.signal_number)}){where}; APEX Studio ran "
            f"it again {how}")
    return job, note


def _loaded_variant(job: ToolJob, tools: LlamaTools) -> str | None:
    """The CPU variant a portable build loads for ``job`` on this CPU (release builds do not
    log it), or None for a single-variant build."""
    try:
        folder = tools.path(job.tool).parent
    except ToolNotFoundError:
        return None
    remaining = [v for v in cpu_variants(folder) if v not in job.options.skip_cpu_variants]
    return expected_cpu_variant(remaining)
