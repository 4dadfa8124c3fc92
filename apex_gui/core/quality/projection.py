"""What a sensitivity measurement will cost, said before it starts.

Time comes from the model's shapes and this machine's measured speeds: llama-quantize's
throughput (bytes of source per second at Q4_K, other types relative to it), the read-back
throughput, and llama-perplexity's (active parameters times tokens per second). The speeds
are kept in ``data_dir()/sensitivity-speed.json``: measured once by a few-second pilot on a
small synthetic model, then replaced by what every real measurement saw (its quantize runs,
read-backs and evaluations, each timed). Scratch disk is exact but for rounding.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.types import effective_type, tensor_bytes
from apex_gui.core.plan.precision import is_quantizable
from apex_gui.core.quality.calibration import high_type_for, probe_type_for
from apex_gui.core.quality.row_sample import plan_sample, sample_bytes
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
#: Fixed cost of starting a tool and loading what it needs, seconds.
TOOL_START_S = 0.5


@dataclass(frozen=True)
class MachineSpeed:
    """This machine's measured speeds (see the module docstring)."""

    quantize_bytes_per_s: float  # source bytes per second, Q4_K
    readback_bytes_per_s: float  # source bytes per second, Q4_K
    eval_param_tokens_per_s: float  # active parameters x tokens per second
    io_bytes_per_s: float  # copying a file (page cache to disk)
    measured: float = 0.0  # time.time() of the measurement
    source: str = "pilot"  # "pilot", or "run" (a real measurement's own steps)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


#: What a projection assumes when no speed was ever measured here (this project's
#: development machine, 2 busy cores): replaced by the pilot before a real run.
FALLBACK_SPEED = MachineSpeed(quantize_bytes_per_s=12e6, readback_bytes_per_s=60e6,
                              eval_param_tokens_per_s=4e10, io_bytes_per_s=400e6)


def speed_path() -> Path:
    return data_dir() / "sensitivity-speed.json"


def load_speed() -> MachineSpeed | None:
    """The recorded speeds, or None (never measured, or an unreadable record)."""
    try:
        data = json.loads(speed_path().read_text(encoding="utf-8"))
        speed = MachineSpeed(**{k: (str(v) if k == "source" else float(v))
                                for k, v in data.items()
                                if k in MachineSpeed.__dataclass_fields__})
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    values = [speed.quantize_bytes_per_s, speed.readback_bytes_per_s,
              speed.eval_param_tokens_per_s, speed.io_bytes_per_s]
    if not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return speed


def save_speed(speed: MachineSpeed) -> None:
    target = speed_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(speed.to_json()), encoding="utf-8")
    os.replace(tmp, target)


def record_rates(observed: Mapping[str, list[float]]) -> None:
    """Keep the speeds a real measurement saw (the median of each kind of step) as this
    machine's; a kind it did not see keeps its recorded speed."""
    speed = load_speed() or FALLBACK_SPEED
    fields = {}
    for name in ("quantize_bytes_per_s", "readback_bytes_per_s", "eval_param_tokens_per_s"):
        values = sorted(v for v in observed.get(name, []) if math.isfinite(v) and v > 0)
        if values:
            fields[name] = values[len(values) // 2]
    if fields:
        save_speed(MachineSpeed(**{**speed.to_json(), **fields, "measured": time.time(),
                                   "source": "run"}))


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


def evaluation_seconds(model: ModelInfo, tokens: int, rates: MachineSpeed) -> float:
    """One llama-perplexity run over ``tokens`` tokens of ``model``: start, load, compute."""
    return (TOOL_START_S + model.file_size / rates.io_bytes_per_s
            + eval_params(model) * tokens / rates.eval_param_tokens_per_s)


def eval_rate(model: ModelInfo, tokens: int, seconds: float, io_bytes_per_s: float) -> float:
    """The evaluation speed a run of ``seconds`` shows (active parameters x tokens / s)."""
    compute = max(seconds - TOOL_START_S - model.file_size / io_bytes_per_s, seconds / 4)
    return eval_params(model) * tokens / compute


def quantize_rate(source_bytes: int, type_name: str, seconds: float) -> float:
    """The Q4_K-equivalent quantize speed a run of ``seconds`` at ``type_name`` shows."""
    return source_bytes * QUANTIZE_COST.get(type_name, 1.5) / max(seconds - TOOL_START_S,
                                                                   seconds / 4)


def eval_params(model: ModelInfo) -> int:
    """Parameters multiplied per token (the embedding is looked up, not multiplied)."""
    return max(1, model.active_params - sum(
        t.n_elements for t in model.tensors if t.role is TensorRole.EMBEDDING))


def reference_logits_bytes(model: ModelInfo, context: int, chunks: int) -> int:
    """Size of llama-perplexity's ``--kl-divergence-base`` file for these settings."""
    vocab = max(model.vocab_size, 1)
    return 20 + chunks * context * 4 + chunks * (context - 1 - context // 2) * (
        2 * ((vocab + 1) // 2) + 4) * 2


def project(model: ModelInfo, candidates: Iterable[str], probes: int, context: int,
            chunks: int, speed: MachineSpeed | None = None) -> Projection:
    """The cost of measuring ``model``: time per step and peak scratch disk."""
    recorded = speed or load_speed()
    rates = recorded or FALLBACK_SPEED
    chosen = list(candidates)
    sample = sample_bytes(model, plan_sample(model))
    steps: dict[str, float] = {"sample": sample / rates.io_bytes_per_s
                               + sample / rates.readback_bytes_per_s}
    for type_name in chosen:
        steps[f"type:{type_name}"] = (
            TOOL_START_S + sample * QUANTIZE_COST.get(type_name, 1.5) / rates.quantize_bytes_per_s
            + sample * READBACK_COST.get(type_name, 1.0) / rates.readback_bytes_per_s)
    steps["errors"] = steps["sample"] + sum(steps[f"type:{t}"] for t in chosen)
    tokens = context * chunks
    run = evaluation_seconds(model, tokens, rates)
    low, high = probe_type_for(chosen), high_type_for(chosen)
    source = model.file_size
    steps["reference"] = run
    steps["probe"] = run
    steps["low_quantize"] = (
        TOOL_START_S + source * QUANTIZE_COST.get(low, 1.5) / rates.quantize_bytes_per_s
        + (source + _file_bytes(model, low)) / rates.io_bytes_per_s)
    steps["high_quantize"] = (
        TOOL_START_S + source * QUANTIZE_COST.get(high, 1.5) / rates.quantize_bytes_per_s)
    total = steps["errors"] + steps["reference"] + probes * run + steps["low_quantize"] + (
        steps["high_quantize"] if high != low else 0.0)
    logits = reference_logits_bytes(model, context, chunks)
    low_bytes, high_bytes = _file_bytes(model, low), _file_bytes(model, high)
    scratch = max(2 * sample,
                  logits + max(source + 2 * low_bytes, source + low_bytes + high_bytes))
    return Projection(total, scratch, steps, sample, probes, tokens, recorded is not None)


def _less_start(seconds: float) -> float:
    """A pilot step's time without the tool's start (never below half of it)."""
    return max(seconds - TOOL_START_S, seconds / 2, 1e-3)


def measure_speed(tools: object, folder: Path) -> MachineSpeed:
    """A few-second pilot on a small synthetic model: quantize, read back, evaluate."""
    from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model
    from apex_gui.core.gguf.model import open_model
    from apex_gui.core.jobs.evaluations import PerplexityJob
    from apex_gui.core.jobs.quantize import QuantizeJob
    from apex_gui.core.jobs.runner import run_job
    from apex_gui.core.quality.readback import weighted_errors

    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=4, n_embd=256, n_head=4, n_head_kv=1,
                              n_expert=8, n_ff_exp=256, n_ff_shexp=256, context_length=512,
                              seed=11, name="APEX speed pilot")
    started = time.monotonic()
    source = write_synthetic_model(folder / "pilot-f16.gguf", spec)
    io_rate = source.stat().st_size / max(time.monotonic() - started, 1e-3)
    model = open_model(source)
    quant = folder / "pilot-q4_k.gguf"
    started = time.monotonic()
    outcome = run_job(QuantizeJob(source=source, base_type="Q4_K_M", output_path=quant), tools)
    quantize_s = _less_start(time.monotonic() - started)
    names = [t.name for t in model.tensors if is_quantizable(t.name, t.shape)]
    started = time.monotonic()
    if outcome.succeeded:
        weighted_errors(source, quant, names, None)
    readback_s = max(time.monotonic() - started, 1e-2)
    text = folder / "pilot.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    started = time.monotonic()
    evaluated = run_job(PerplexityJob(model=source, text=text, context=256, chunks=2), tools)
    eval_s = _less_start(time.monotonic() - started)
    size = source.stat().st_size
    fallback = FALLBACK_SPEED
    return MachineSpeed(
        quantize_bytes_per_s=size / quantize_s if outcome.succeeded else fallback.quantize_bytes_per_s,
        readback_bytes_per_s=size / readback_s if outcome.succeeded else fallback.readback_bytes_per_s,
        eval_param_tokens_per_s=(eval_params(model) * 512 / eval_s if evaluated.succeeded
                                 else fallback.eval_param_tokens_per_s),
        io_bytes_per_s=max(io_rate, 50e6), measured=time.time())


def ensure_speed(tools: object, work_dir: str | os.PathLike[str] | None = None) -> MachineSpeed:
    """The recorded speeds, measured by the pilot first when there are none."""
    from apex_gui.core.quality.scratch import scratch_folder

    speed = load_speed()
    if speed is None:
        with scratch_folder(work_dir) as folder:
            speed = measure_speed(tools, folder)
        save_speed(speed)
    return speed
