"""What a sensitivity measurement will cost, said before it starts.

Each kind of step costs a fixed part (starting the tool, loading) plus work at a rate:
llama-quantize's work is bytes of source (Q4_K-equivalent: other types relative to it), the
read-back's too, llama-perplexity's is active parameters times tokens (plus reading the
model). This machine's timings of such steps are kept in ``data_dir()/sensitivity-speed.json``
as (work, seconds) points: a few-second pilot on a small synthetic model gives the first
ones (two sizes of each step, so both parts are known), and every real measurement adds its
own quantize runs, read-backs and evaluations. Each kind is fitted as seconds = fixed +
work / rate, the newest points weighing most, so a projection for a bigger model
extrapolates from the largest steps seen. Scratch disk is exact but for rounding.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.types import effective_type, tensor_bytes
from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.runner import run_job
from apex_gui.core.plan.precision import is_quantizable
from apex_gui.core.quality.calibration import high_type_for, probe_type_for
from apex_gui.core.quality.probe_runs import SensitivityCancelled
from apex_gui.core.quality.readback import weighted_errors
from apex_gui.core.quality.row_sample import plan_sample, sample_bytes, write_row_sample
from apex_gui.core.quality.scratch import scratch_folder
from apex_gui.core.settings import data_dir
from apex_gui.core.units import format_size

#: llama-quantize's time per source byte relative to Q4_K (measured on this project's
#: 2-core machine, CPU build, no imatrix; the IQ types search a grid and are slow).
QUANTIZE_COST: dict[str, float] = {
    "Q2_K": 1.9, "Q3_K": 1.3, "Q4_K": 1.0, "Q5_K": 1.2, "Q6_K": 0.8, "Q8_0": 0.45,
    "Q4_0": 0.5, "Q4_1": 0.5, "Q5_0": 0.55, "Q5_1": 0.55, "IQ4_XS": 2.4, "IQ4_NL": 2.3,
    "IQ3_S": 6.5, "IQ3_XXS": 6.5, "IQ2_S": 9.0, "IQ2_XS": 9.0, "IQ2_XXS": 9.0, "IQ1_S": 9.0,
    "IQ1_M": 9.0, "MXFP4": 0.6,
}
#: Read-back (numpy dequantize and compare) time per source byte relative to Q4_K.
READBACK_COST: dict[str, float] = {"IQ3_S": 2.0, "IQ3_XXS": 2.0, "IQ2_S": 2.0,
                                   "IQ2_XS": 2.0, "IQ2_XXS": 2.0, "IQ4_XS": 1.3}
KINDS = ("quantize", "readback", "eval")
#: Points kept per kind (the oldest go first).
MAX_POINTS = 60
#: What a projection assumes with nothing recorded (this project's development machine, 2
#: busy cores): (fixed seconds, work per second) per kind.
FALLBACK: dict[str, tuple[float, float]] = {"quantize": (0.5, 12e6), "readback": (0.0, 60e6),
                                            "eval": (0.5, 4e10)}
FALLBACK_IO = 400e6


@dataclass
class MachineSpeed:
    """This machine's timings of each kind of step: (work, seconds) points."""

    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    io_bytes_per_s: float = FALLBACK_IO
    source: str = "pilot"  # "pilot", or "run" once a real measurement added its steps

    def fit(self, kind: str) -> tuple[float, float]:
        """(fixed seconds, work per second) for ``kind``: least squares over the points, the
        newest weighing most; the fixed part is never negative."""
        points = self.points.get(kind, [])
        if not points:
            return FALLBACK[kind]
        weights = [0.9 ** (len(points) - 1 - i) for i in range(len(points))]
        total = sum(weights)
        mean_x = sum(w * x for w, (x, _) in zip(weights, points)) / total
        mean_y = sum(w * y for w, (_, y) in zip(weights, points)) / total
        var_x = sum(w * (x - mean_x) ** 2 for w, (x, _) in zip(weights, points))
        if var_x > 0:
            slope = sum(w * (x - mean_x) * (y - mean_y)
                        for w, (x, y) in zip(weights, points)) / var_x
            fixed = mean_y - slope * mean_x
            if slope > 0 and fixed >= 0:
                return fixed, 1 / slope
        # One size seen (or a fit gone wrong): the fallback's fixed part, the rate from them.
        fixed = min(FALLBACK[kind][0], 0.5 * min(y for _, y in points))
        rates = sorted(x / max(y - fixed, 1e-6) for x, y in points)
        return fixed, rates[len(rates) // 2]

    def seconds(self, kind: str, work: float) -> float:
        fixed, rate = self.fit(kind)
        return fixed + work / rate

    def add(self, kind: str, work: float, seconds: float) -> None:
        if work > 0 and seconds > 0 and math.isfinite(work) and math.isfinite(seconds):
            self.points.setdefault(kind, []).append((work, seconds))
            del self.points[kind][:-MAX_POINTS]

    def to_json(self) -> dict[str, object]:
        return {"version": 2, "io_bytes_per_s": self.io_bytes_per_s, "source": self.source,
                "points": {k: [list(p) for p in v] for k, v in self.points.items()}}


def speed_path() -> Path:
    return data_dir() / "sensitivity-speed.json"


def load_speed() -> MachineSpeed | None:
    """The recorded timings, or None (never measured, or an unreadable record)."""
    try:
        data = json.loads(speed_path().read_text(encoding="utf-8"))
        points = {kind: [(float(x), float(y)) for x, y in data["points"].get(kind, [])]
                  for kind in KINDS}
        speed = MachineSpeed({k: [p for p in v if p[0] > 0 and p[1] > 0
                                  and math.isfinite(p[0]) and math.isfinite(p[1])]
                              for k, v in points.items()},
                             float(data["io_bytes_per_s"]), str(data.get("source", "pilot")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if not math.isfinite(speed.io_bytes_per_s) or speed.io_bytes_per_s <= 0:
        return None
    return speed


def save_speed(speed: MachineSpeed) -> None:
    target = speed_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(speed.to_json()), encoding="utf-8")
    os.replace(tmp, target)


def record_steps(observed: Mapping[str, list[tuple[float, float]]]) -> None:
    """Add a real measurement's timed steps to this machine's record."""
    if not any(observed.values()):
        return
    speed = load_speed() or MachineSpeed()
    for kind, points in observed.items():
        for work, seconds in points:
            speed.add(kind, work, seconds)
    speed.source = "run"
    save_speed(speed)


@dataclass(frozen=True)
class Projection:
    """Projected seconds (per step and in all) and peak scratch disk of a measurement."""

    seconds: float
    scratch_bytes: int
    steps: dict[str, float]
    sample_bytes: int
    probes: int
    tokens_per_probe: int
    measured_speed: bool

    @property
    def errors_seconds(self) -> float:
        return self.steps["errors"]

    @property
    def calibration_seconds(self) -> float:
        return self.seconds - self.steps["errors"]

    def short(self, where: str) -> str:
        """Time and scratch disk only (a job's title)."""
        guess = "" if self.measured_speed else ", a rough guess"
        return (f"about {format_duration(self.seconds)}{guess}, scratch disk up to "
                f"{format_size(self.scratch_bytes)} in {where}")

    def summary(self, where: str) -> str:
        """One line: time, what it is made of, scratch disk and where."""
        basis = "" if self.measured_speed else " (no speed measured here yet: a rough guess)"
        return (f"projected: about {format_duration(self.seconds)}{basis} - "
                f"{format_duration(self.errors_seconds)} for the errors on a "
                f"{format_size(self.sample_bytes)} row sample, "
                f"{format_duration(self.calibration_seconds)} for {self.probes} KL probes of "
                f"{self.tokens_per_probe:,} tokens; scratch disk up to "
                f"{format_size(self.scratch_bytes)} in {where}")


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _file_bytes(model: ModelInfo, type_name: str) -> int:
    """Bytes of the model with every quantizable tensor at ``type_name``."""
    total = model.header_bytes
    for tensor in model.tensors:
        if is_quantizable(tensor.name, tensor.shape):
            total += tensor_bytes(effective_type(type_name, tensor.row_length), tensor.shape)
        else:
            total += tensor.nbytes
    return total


def eval_params(model: ModelInfo) -> int:
    """Parameters multiplied per token (the embedding is looked up, not multiplied)."""
    return max(1, model.active_params - sum(
        t.n_elements for t in model.tensors if t.role is TensorRole.EMBEDDING))


def quantize_work(source_bytes: int, type_name: str) -> float:
    return source_bytes * QUANTIZE_COST.get(type_name, 1.5)


def readback_work(sample: int, type_name: str) -> float:
    return sample * READBACK_COST.get(type_name, 1.0)


def eval_work(model: ModelInfo, tokens: int) -> float:
    return eval_params(model) * tokens


#: Reading a model that does not stay in memory between two evaluations (bytes per second).
DISK_READ_BYTES_PER_S = 1e9


def _available_memory() -> int:
    """Memory the page cache can keep a model in (free plus reclaimable)."""
    return int(psutil.virtual_memory().available)


def evaluation_seconds(model: ModelInfo, tokens: int, speed: MachineSpeed) -> float:
    """One llama-perplexity run over ``tokens`` tokens of ``model``. The model is read from
    the page cache after the first run; one larger than the free memory is read from disk by
    every run."""
    load = (model.file_size / DISK_READ_BYTES_PER_S
            if model.file_size > _available_memory() else 0.0)
    return load + speed.seconds("eval", eval_work(model, tokens))


def reference_logits_bytes(model: ModelInfo, context: int, chunks: int) -> int:
    """Size of llama-perplexity's ``--kl-divergence-base`` file for these settings."""
    vocab = max(model.vocab_size, 1)
    return 20 + chunks * context * 4 + chunks * (context - 1 - context // 2) * (
        2 * ((vocab + 1) // 2) + 4) * 2


def project(model: ModelInfo, candidates: Iterable[str], probes: int, context: int,
            chunks: int, speed: MachineSpeed | None = None) -> Projection:
    """The cost of measuring ``model``: time per step and peak scratch disk."""
    recorded = speed or load_speed()
    rates = recorded or MachineSpeed()
    chosen = list(candidates)
    sample = sample_bytes(model, plan_sample(model))
    steps: dict[str, float] = {"sample": sample / rates.io_bytes_per_s
                               + rates.seconds("readback", sample)}
    for type_name in chosen:
        steps[f"type:{type_name}"] = (
            rates.seconds("quantize", quantize_work(sample, type_name))
            + rates.seconds("readback", readback_work(sample, type_name)))
    steps["errors"] = steps["sample"] + sum(steps[f"type:{t}"] for t in chosen)
    tokens = context * chunks
    run = evaluation_seconds(model, tokens, rates)
    low, high = probe_type_for(chosen), high_type_for(chosen)
    source = model.file_size
    steps["reference"] = run
    steps["probe"] = run
    steps["low_quantize"] = (rates.seconds("quantize", quantize_work(source, low))
                             + (source + _file_bytes(model, low)) / rates.io_bytes_per_s)
    steps["high_quantize"] = rates.seconds("quantize", quantize_work(source, high))
    total = steps["errors"] + steps["reference"] + probes * run + steps["low_quantize"] + (
        steps["high_quantize"] if high != low else 0.0)
    logits = reference_logits_bytes(model, context, chunks)
    low_bytes, high_bytes = _file_bytes(model, low), _file_bytes(model, high)
    scratch = max(2 * sample,
                  logits + max(source + 2 * low_bytes, source + low_bytes + high_bytes))
    return Projection(total, scratch, steps, sample, probes, tokens, recorded is not None)


def measure_speed(tools: object, folder: Path,
                  cancel: threading.Event | None = None) -> MachineSpeed:
    """A few-second pilot on a small synthetic model: each kind of step at two sizes.
    Raises :class:`SensitivityCancelled` when ``cancel`` is set (nothing is recorded)."""

    def stopped() -> None:
        if cancel is not None and cancel.is_set():
            raise SensitivityCancelled("stopped during the speed pilot")

    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=4, n_embd=256, n_head=4, n_head_kv=1,
                              n_expert=8, n_ff_exp=256, n_ff_shexp=256, context_length=512,
                              seed=11, name="APEX speed pilot")
    speed = MachineSpeed()
    started = time.monotonic()
    source = write_synthetic_model(folder / "pilot-f16.gguf", spec)
    speed.io_bytes_per_s = max(source.stat().st_size / max(time.monotonic() - started, 1e-3),
                               50e6)
    model = open_model(source)
    small = folder / "pilot-sample.gguf"
    write_row_sample(model, small)
    names = [t.name for t in model.tensors if is_quantizable(t.name, t.shape)]
    for path in (small, source):
        quant = folder / f"{path.stem}-q4_k.gguf"
        started = time.monotonic()
        done = run_job(QuantizeJob(source=path, base_type="Q4_K_M", output_path=quant), tools,
                       cancel=cancel)
        stopped()
        if not done.succeeded:
            continue
        speed.add("quantize", quantize_work(path.stat().st_size, "Q4_K"),
                  time.monotonic() - started)
        started = time.monotonic()
        weighted_errors(path, quant, names, None)
        speed.add("readback", readback_work(path.stat().st_size, "Q4_K"),
                  time.monotonic() - started)
    text = folder / "pilot.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    for chunks in (1, 6):
        started = time.monotonic()
        done = run_job(PerplexityJob(model=source, text=text, context=256, chunks=chunks),
                       tools, cancel=cancel)
        stopped()
        if done.succeeded:
            speed.add("eval", eval_work(model, 256 * chunks), time.monotonic() - started)
    return speed


def ensure_speed(tools: object, work_dir: str | os.PathLike[str] | None = None,
                 cancel: threading.Event | None = None,
                 output: str | os.PathLike[str] | None = None) -> MachineSpeed:
    """The recorded timings, measured by the pilot first when there are none. ``output``:
    the file the measurement will write (a killed pilot's lock on it is cleaned up with its
    scratch folder)."""
    speed = load_speed()
    if speed is None:
        with scratch_folder(work_dir, output) as folder:
            speed = measure_speed(tools, folder, cancel)
        save_speed(speed)
    return speed
