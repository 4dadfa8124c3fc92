"""Uniform quants users compare against (Q8_0, Q4_K_M, ...), sized by llama.cpp itself.

Where llama.cpp's own mixture rules decide the types (Q4_K_M bumps some ``attn_v`` and
``ffn_down`` layers, IQ2_M others), guessing them is fragile; ``llama-quantize --dry-run``
answers in a fraction of a second on a header, so we ask it and turn its per-tensor types
into a :class:`PrecisionPlan`, which gives the exact size.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.types import UnknownTypeError, ggml_type
from apex_gui.core.jobs.child_process import own_group_options, signal_group
from apex_gui.core.jobs.parsers import parse_tensor_progress
from apex_gui.core.jobs.tools import LlamaTools, child_environment
from apex_gui.core.plan.precision import PrecisionPlan
from apex_gui.core.settings import cache_dir

BASELINE_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ2_M")

#: How often a running dry run looks at its cancel flag.
CANCEL_POLL_S = 0.2


class BaselineError(RuntimeError):
    """llama-quantize could not size a baseline; the message says why and what to do."""


class BaselineCancelled(Exception):
    """The sizing was cancelled (the window closed, another model was opened)."""


def _never() -> bool:
    return False


def parse_dry_run(text: str) -> dict[str, str]:
    """Tensor name -> target type (upper case) from ``llama-quantize --dry-run`` output."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        tensor = parse_tensor_progress(line)  # the dry run prints the quantize progress line
        if tensor is None:
            continue
        try:
            types[tensor.name] = ggml_type(tensor.target_type or tensor.source_type).name
        except UnknownTypeError:
            continue
    return types


@dataclass(frozen=True)
class Baseline:
    name: str  # "Q4_K_M"
    total_bytes: int
    bits_per_weight: float
    types: dict[str, str]


def _cache_key(model: ModelInfo, quant_type: str) -> str:
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in model.paths]
    return hashlib.sha256(json.dumps([stats, quant_type]).encode()).hexdigest()[:24]


def baseline_plan(model: ModelInfo, quant_type: str, tools: LlamaTools | None = None,
                  timeout: float = 120.0,
                  cancelled: Callable[[], bool] = _never) -> PrecisionPlan:
    """The plan llama-quantize would apply for a uniform ``quant_type`` (cached per file);
    :class:`BaselineCancelled` as soon as ``cancelled()`` turns true."""
    quant_type = quant_type.upper()
    cache_file = cache_dir() / "baselines" / f"{_cache_key(model, quant_type)}.json"
    types: dict[str, str] | None = None
    if cache_file.exists():
        try:
            types = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            types = None
    if types is None:
        types = _ask_llama_quantize(model, quant_type, tools or LlamaTools(), timeout, cancelled)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(types), encoding="utf-8")
    return PrecisionPlan(model, types, quant_type, origin=f"llama.cpp {quant_type}")


def _ask_llama_quantize(model: ModelInfo, quant_type: str, tools: LlamaTools,
                        timeout: float, cancelled: Callable[[], bool]) -> dict[str, str]:
    exe = tools.path("quantize")
    with tempfile.TemporaryDirectory(prefix="apex-dry-run-") as scratch:
        argv = [str(exe), "--dry-run", "--allow-requantize", str(model.path),
                str(Path(scratch) / "never-written.gguf"), quant_type, "1"]
        returncode, output = _run_dry(argv, model, timeout, cancelled)
    types = parse_dry_run(output)
    if returncode != 0 or len(types) != len(model.tensors):
        last = [line for line in output.splitlines() if line.strip()][-3:]
        raise BaselineError(
            f"llama-quantize --dry-run could not size {quant_type} for {model.path} "
            f"(exit {returncode}, {len(types)} of {len(model.tensors)} tensors): "
            + " | ".join(last) + ". This llama.cpp build may not support the architecture "
            f"{model.architecture!r}; point Settings at a newer build.")
    return types


def _run_dry(argv: list[str], model: ModelInfo, timeout: float,
             cancelled: Callable[[], bool]) -> tuple[int, str]:
    """(exit code, merged output) of one dry run, stopped (its whole process group) on a
    timeout or as soon as ``cancelled()``: a hung tool must not keep the window from quitting."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                            env=child_environment(), **own_group_options())
    deadline = time.monotonic() + timeout
    while True:
        try:
            output, _ = proc.communicate(timeout=CANCEL_POLL_S)
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            stop = cancelled()
            if not stop and time.monotonic() < deadline:
                continue
            signal_group(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()
            if stop:
                raise BaselineCancelled() from None
            raise BaselineError(f"llama-quantize --dry-run on {model.path} took over "
                                f"{timeout:.0f} s; is the file on a slow disk?") from None


def baselines(model: ModelInfo, quant_types: tuple[str, ...] = BASELINE_TYPES,
              tools: LlamaTools | None = None,
              cancelled: Callable[[], bool] = _never) -> tuple[list[Baseline], list[str]]:
    """Sized baselines and one message per baseline that could not be sized
    (:class:`BaselineCancelled` when ``cancelled()`` turns true)."""
    found: list[Baseline] = []
    problems: list[str] = []
    for quant_type in quant_types:
        try:
            plan = baseline_plan(model, quant_type, tools, cancelled=cancelled)
        except (BaselineError, OSError) as error:
            problems.append(str(error))
            continue
        found.append(Baseline(quant_type, plan.total_bytes(), plan.bits_per_weight(),
                              dict(plan.types)))
    return found, problems
