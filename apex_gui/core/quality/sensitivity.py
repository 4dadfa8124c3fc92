"""Measured quantization sensitivity: what each candidate type does to each tensor.

For every candidate type, one ``llama-quantize`` run pins every quantizable tensor to that
type (the row-length fallback applies as it always does). The quantized file and its source
are read back tensor by tensor with the ``gguf`` package's dequantizers, and the error is
weighted by the importance matrix where one is given (per expert for ``*_exps``): for a row
``w`` and its quantized ``q`` the output error is about ``sum_j imatrix_j * (w_j - q_j)^2``.
Only one tensor (one expert of a merged expert tensor) is in memory at a time.

That proxy is then calibrated to KL divergence per tensor kind with real probes: the model
with only that kind lowered to a probe type, measured with ``llama-perplexity
--kl-divergence`` against the source's logits. A routed expert, a shared expert and an
attention projection reach the output differently; one scale per kind captures that.

Results are cached by the content fingerprint of the model and imatrix (and the text,
context and candidates); the cache entry is written only when everything is measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.gguf.roles import split_name
from apex_gui.core.gguf.types import FTYPE_DEFAULT_TYPE, IMATRIX_REQUIRED, effective_type
from apex_gui.core.jobs import parsers
from apex_gui.core.jobs.calibration import file_digest, quick_eval_text
from apex_gui.core.jobs.evaluations import KLDivergenceJob, ReferenceLogitsJob
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.runner import run_job
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.plan.precision import PrecisionPlan, is_quantizable
from apex_gui.core.settings import cache_dir

#: Bump when the measurement changes: old cache entries are then ignored.
SENSITIVITY_VERSION = 1
#: Types measured by default, and the extra ones that need an importance matrix.
DEFAULT_CANDIDATES: tuple[str, ...] = ("Q2_K", "Q3_K", "IQ3_S", "IQ4_XS", "Q4_K", "Q5_K",
                                       "Q6_K", "Q8_0")
IMATRIX_CANDIDATES: tuple[str, ...] = ("IQ2_XXS", "IQ2_S", "IQ3_XXS")
#: The type each kind is lowered to in its calibration probe: low enough to be measured well
#: above noise, high enough that KL divergence is still close to additive across kinds.
PROBE_TYPE = "Q3_K"
#: Bytes hashed from the start of each tensor for the content fingerprint (a full hash of a
#: 400 GB model would take longer than the measurement).
_FINGERPRINT_SAMPLE = 1 << 16

ProgressCallback = Callable[[str, float, float | None], None]  # stage, fraction, ETA seconds


class SensitivityError(ValueError):
    """A measurement step failed; the message names the tool run and what to do."""


class SensitivityCancelled(Exception):
    """The measurement was cancelled; nothing was cached."""


def tensor_kind(name: str) -> str:
    """The calibration class of a tensor: its name without layer index and suffix."""
    return split_name(name)[1]


@dataclass
class SensitivityTable:
    """Weighted squared error per (tensor, effective type) and KL divergence per unit error."""

    model: str
    fingerprint: str
    imatrix: str | None
    candidates: tuple[str, ...]
    source_types: dict[str, str]
    errors: dict[str, dict[str, float]]  # tensor -> effective type -> weighted squared error
    kind_scale: dict[str, float] = field(default_factory=dict)  # kind -> KLD per unit error
    probes: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def damage(self, tensor: str, effective: str) -> float:
        """Predicted mean KL divergence this tensor adds at this (effective) type."""
        if effective == self.source_types.get(tensor):
            return 0.0
        try:
            error = self.errors[tensor][effective]
        except KeyError:
            raise KeyError(f"no measured sensitivity for {tensor} at {effective}; measure "
                           f"with that type among the candidates") from None
        return self.kind_scale.get(tensor_kind(tensor), 0.0) * error

    def known(self, tensor: str, effective: str) -> bool:
        return effective == self.source_types.get(tensor) or effective in self.errors.get(tensor, {})

    def predict_kld(self, plan: PrecisionPlan) -> float:
        """Predicted mean KL divergence of a plan: the per-tensor damages added up."""
        return sum(self.damage(name, plan.effective_type(name)) for name in self.errors)

    def to_json(self) -> dict[str, Any]:
        return {"version": SENSITIVITY_VERSION, "model": self.model,
                "fingerprint": self.fingerprint, "imatrix": self.imatrix,
                "candidates": list(self.candidates), "source_types": self.source_types,
                "errors": self.errors, "kind_scale": self.kind_scale, "probes": self.probes,
                "timings": self.timings}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "sensitivity file") -> SensitivityTable:
        if data.get("version") != SENSITIVITY_VERSION:
            raise ValueError(f"{source}: sensitivity format {data.get('version')!r}, this "
                             f"version reads {SENSITIVITY_VERSION}; measure again "
                             "(apex-studio sensitivity MODEL -o FILE)")
        return cls(model=data["model"], fingerprint=data["fingerprint"],
                   imatrix=data.get("imatrix"), candidates=tuple(data["candidates"]),
                   source_types=dict(data["source_types"]),
                   errors={k: dict(v) for k, v in data["errors"].items()},
                   kind_scale=dict(data.get("kind_scale", {})),
                   probes=list(data.get("probes", [])), timings=dict(data.get("timings", {})))

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SensitivityTable:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a sensitivity file ({error}); write one with "
                             "apex-studio sensitivity MODEL -o FILE") from None
        return cls.from_json(data, str(path))


# --- fingerprints and cache ----------------------------------------------------------------


def model_fingerprint(model: ModelInfo) -> str:
    """Content fingerprint: each shard's size, its first MiB (the header) and 64 evenly
    spaced 64 KiB samples of its data. Reads a few MiB even of a 400 GB model."""
    digest = hashlib.sha256()
    for path in model.paths:
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            for index in range(64):
                handle.seek(size * index // 64)
                digest.update(handle.read(_FINGERPRINT_SAMPLE))
    return digest.hexdigest()


def cache_path(fingerprint: str, imatrix: Path | None, candidates: Iterable[str], text: Path,
               context: int, chunks: int | None) -> Path:
    key = "|".join([str(SENSITIVITY_VERSION), fingerprint,
                    file_digest(imatrix) if imatrix else "-", ",".join(candidates),
                    file_digest(text), str(context), str(chunks)])
    return cache_dir() / "sensitivity" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


# --- importance matrix -----------------------------------------------------------------------


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Tensor name -> mean squared activation per input column, shape (n_mat, n_per_row).

    Reads the GGUF format (``NAME.in_sum2`` / ``NAME.counts``, normalised per expert as
    llama-quantize does) and the legacy ``.dat`` format.
    """
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, OSError):
        return _read_legacy_imatrix(path)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        if tensor.name.endswith(".in_sum2"):
            sums[tensor.name[: -len(".in_sum2")]] = np.asarray(tensor.data, dtype=np.float32)
        elif tensor.name.endswith(".counts"):
            counts[tensor.name[: -len(".counts")]] = np.asarray(tensor.data, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    for name, values in sums.items():
        n_mat = counts[name].size if name in counts else 1
        per = values.reshape(n_mat, -1)
        count = counts.get(name, np.ones(n_mat, np.float32)).reshape(n_mat, 1)
        # An expert that saw no token gets weight 1, as llama-quantize gives it.
        out[name] = np.where(count > 0, per / np.maximum(count, 1e-30), 1.0).astype(np.float32)
    return out


def _read_legacy_imatrix(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as handle:
            (entries,) = struct.unpack("<i", handle.read(4))
            for _ in range(entries):
                (name_len,) = struct.unpack("<i", handle.read(4))
                name = handle.read(name_len).decode()
                ncall, n_values = struct.unpack("<ii", handle.read(8))
                values = np.frombuffer(handle.read(4 * n_values), dtype=np.float32)
                out[name] = (values / ncall if ncall > 0 else values).reshape(1, -1)
    except (struct.error, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not an importance matrix (GGUF or legacy .dat): {error}; "
                         "compute one with apex-studio imatrix MODEL -o FILE") from None
    return out


# --- read-back -------------------------------------------------------------------------------


def _dequantized_slices(tensor: Any) -> Iterable[np.ndarray]:
    """The tensor as float32, one 2-D slice (one expert) at a time."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    data = tensor.data
    qtype = GGMLQuantizationType(int(tensor.tensor_type))
    # Merged expert tensors come one expert at a time: memory stays at one expert's floats.
    slices: Iterable[np.ndarray]
    if data.ndim == 3:
        slices = (data[i] for i in range(data.shape[0]))
    elif data.ndim > 3:
        slices = (part for part in data.reshape(-1, *data.shape[-2:]))
    else:
        slices = [data]
    for part in slices:
        if qtype.name == "F32":
            yield np.asarray(part, dtype=np.float32)
        elif qtype.name == "F16":
            yield np.asarray(part).astype(np.float32)
        else:
            yield dequantize(np.asarray(part), qtype).astype(np.float32, copy=False)


def weighted_errors(source: Path, quantized: Path, names: Iterable[str],
                    imatrix: dict[str, np.ndarray] | None,
                    cancel: threading.Event | None = None) -> dict[str, float]:
    """Sum over rows of ``sum_j imatrix_j (w_j - q_j)^2`` for each named tensor."""
    import gguf

    src = {t.name: t for t in gguf.GGUFReader(source, "r").tensors}
    qnt = {t.name: t for t in gguf.GGUFReader(quantized, "r").tensors}
    out: dict[str, float] = {}
    for name in names:
        if cancel is not None and cancel.is_set():
            raise SensitivityCancelled()
        weights = imatrix.get(name) if imatrix else None
        total = 0.0
        for index, (w, q) in enumerate(zip(_dequantized_slices(src[name]),
                                           _dequantized_slices(qnt[name]), strict=True)):
            diff2 = np.square(w - q, dtype=np.float32)
            if weights is not None and weights.shape[-1] == diff2.shape[-1]:
                column = weights[min(index, weights.shape[0] - 1)]
                total += float(diff2.reshape(-1, diff2.shape[-1]).sum(0) @ column)
            else:
                total += float(diff2.sum())
        out[name] = total
    return out


# --- measurement -----------------------------------------------------------------------------


@dataclass
class _Clock:
    """Progress over weighted steps with an ETA from the work done so far."""

    total: float
    callback: ProgressCallback | None
    done: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def advance(self, stage: str, amount: float = 0.0) -> None:
        self.done += amount
        if self.callback is None:
            return
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        elapsed = time.monotonic() - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        self.callback(stage, fraction, eta)


def _uniform_plan(model: ModelInfo, type_name: str, keep: Iterable[str] = ()) -> PrecisionPlan:
    """Every quantizable tensor at ``type_name`` except ``keep`` (left as stored)."""
    kept = set(keep)
    types = {t.name: (t.type_name if t.name in kept else type_name) for t in model.tensors
             if is_quantizable(t.name, t.shape)}
    base = type_name if type_name in FTYPE_DEFAULT_TYPE else "Q8_0"
    return PrecisionPlan(model, types, base, origin=f"sensitivity {type_name}")


_KLD_ROW = re.compile(r"^\s*(\d+)\s+[-\d.naif]+\s+±\s+[-\d.naif]+\s+[-\d.naif]+\s+±\s+"
                      r"[-\d.naif]+\s+([-\d.naif]+)\s+±")


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


#: KL runs tried per measurement when the tool's closing lines keep getting lost.
KLD_TRIES = 3
#: Share of chunks whose rows must have arrived for a run without statistics to count.
PARTIAL_ROWS_SHARE = 0.5


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


def _run(job: Any, tools: LlamaTools, cancel: threading.Event | None, what: str) -> dict[str, Any]:
    outcome = run_job(job, tools, cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise SensitivityCancelled()
    if not outcome.succeeded:
        raise SensitivityError(f"{what} failed: {outcome.message}")
    return outcome.results


def measure_sensitivity(
    model_path: str | os.PathLike[str], imatrix: str | os.PathLike[str] | None = None, *,
    text: str | os.PathLike[str] | None = None, context: int = 512, chunks: int | None = None,
    candidates: Iterable[str] | None = None, tools: LlamaTools | None = None, threads: int = 0,
    on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
    use_cache: bool = True, work_dir: str | os.PathLike[str] | None = None,
) -> SensitivityTable:
    """Measure (or load from the cache) the sensitivity table of a model."""
    model = open_model(model_path)
    imatrix_path = Path(imatrix) if imatrix else None
    text_path = Path(text) if text else quick_eval_text()
    chosen = tuple(candidates) if candidates else (
        DEFAULT_CANDIDATES + (IMATRIX_CANDIDATES if imatrix_path else ()))
    if not imatrix_path and (needing := [c for c in chosen if c.upper() in IMATRIX_REQUIRED]):
        raise ValueError(f"candidate types {', '.join(needing)} need an importance matrix; "
                         "give one with --imatrix FILE or leave them out")
    fingerprint = model_fingerprint(model)
    cached = cache_path(fingerprint, imatrix_path, chosen, text_path, context, chunks)
    if use_cache and cached.is_file():
        try:
            table = SensitivityTable.load(cached)
            if on_progress is not None:
                on_progress("loaded from cache", 1.0, 0.0)
            return table
        except (ValueError, KeyError):
            cached.unlink(missing_ok=True)  # unreadable entry: measure again
    tools = tools or LlamaTools()
    names = [t.name for t in model.tensors if is_quantizable(t.name, t.shape)]
    weights = read_imatrix(imatrix_path) if imatrix_path else None
    kinds = sorted({tensor_kind(n) for n in names})
    # Weights: a quantize run and its read-back count 1 each; a KL probe counts 2.
    clock = _Clock(total=2 * len(chosen) + 1 + 3 * len(kinds), callback=on_progress)
    scratch = Path(tempfile.mkdtemp(prefix="apex-sensitivity-", dir=work_dir))
    timings: dict[str, float] = {}
    try:
        errors: dict[str, dict[str, float]] = {n: {} for n in names}
        started = time.monotonic()
        for type_name in chosen:
            clock.advance(f"quantizing every tensor to {type_name}")
            # llama-quantize aborts on an imatrix-only type for a tensor the imatrix has no
            # data for (token_embd always, output often): those stay as stored in this run
            # and the type is not offered for them.
            unmeasured = ([n for n in names if weights is None or n not in weights]
                          if type_name.upper() in IMATRIX_REQUIRED else [])
            plan = _uniform_plan(model, type_name, keep=unmeasured)
            quant = scratch / f"all-{type_name}.gguf"
            job = QuantizeJob.from_plan(plan, quant, scratch / f"all-{type_name}.txt",
                                        imatrix=imatrix_path, options=RunOptions(threads=threads))
            _run(job, tools, cancel, f"llama-quantize to {type_name}")
            clock.advance(f"reading back {type_name}", 1)
            measured = weighted_errors(Path(model.path), quant,
                                       [n for n in names if n not in unmeasured], weights, cancel)
            for name, value in measured.items():
                errors[name][plan.effective_type(name)] = value
            quant.unlink(missing_ok=True)
            clock.advance(f"measured {type_name}", 1)
        timings["error_seconds"] = time.monotonic() - started
        started = time.monotonic()
        clock.advance("reference logits of the source model")
        reference = ReferenceLogitsJob(model=Path(model.path), text=text_path, context=context,
                                       chunks=chunks, options=RunOptions(threads=threads),
                                       output_path=scratch / "reference.kld")
        _run(reference, tools, cancel, "llama-perplexity --kl-divergence-base")
        clock.advance("reference logits", 1)
        scales, probes = _calibrate(model, names, kinds, chosen, errors, reference.output_path,
                                    scratch, tools, imatrix_path, context, chunks, threads,
                                    cancel, clock)
        timings["calibration_seconds"] = time.monotonic() - started
        table = SensitivityTable(model=str(model.path), fingerprint=fingerprint,
                                 imatrix=str(imatrix_path) if imatrix_path else None,
                                 candidates=chosen,
                                 source_types={n: model.tensor(n).type_name for n in names},
                                 errors=errors, kind_scale=scales, probes=probes,
                                 timings=timings)
        if use_cache:
            table.save(cached)  # atomic: a cancel before this line leaves no entry behind
        clock.advance("done")
        return table
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def probe_type_for(candidates: Iterable[str]) -> str:
    """PROBE_TYPE when measured, else the measured type with the fewest bits that needs no
    imatrix (the probe's proxy error must come from the same table)."""
    from apex_gui.core.gguf.types import TYPES

    measured = [c for c in candidates if c in TYPES and c not in IMATRIX_REQUIRED]
    if PROBE_TYPE in measured or not measured:
        return PROBE_TYPE
    return min(measured, key=lambda c: (TYPES[c].bits_per_weight, c))


def _calibrate(model: ModelInfo, names: list[str], kinds: list[str], candidates: tuple[str, ...],
               errors: dict[str, dict[str, float]], reference: Path, scratch: Path,
               tools: LlamaTools, imatrix: Path | None, context: int, chunks: int | None,
               threads: int, cancel: threading.Event | None,
               clock: _Clock) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One KL probe per tensor kind: that kind at the probe type, the rest as stored."""
    probe_type = probe_type_for(candidates)
    scales: dict[str, float] = {}
    probes: list[dict[str, Any]] = []
    for kind in kinds:
        members = [n for n in names if tensor_kind(n) == kind]
        clock.advance(f"probe: {kind} at {probe_type}")
        plan = _uniform_plan(model, probe_type, keep=[n for n in names if n not in members])
        quant = scratch / f"probe-{kind}.gguf"
        job = QuantizeJob.from_plan(plan, quant, scratch / f"probe-{kind}.txt",
                                    imatrix=imatrix, options=RunOptions(threads=threads))
        _run(job, tools, cancel, f"llama-quantize for the {kind} probe")
        clock.advance(f"probe: {kind} KL divergence", 1)
        # --no-repack: repacked kernels crash on some AMX CPUs with quantized weights.
        kld_job = KLDivergenceJob(model=quant, reference_logits=reference, context=context,
                                  chunks=chunks,
                                  options=RunOptions(threads=threads, no_repack=True))
        measured, exact = measure_kld(kld_job, tools, cancel,
                               f"llama-perplexity --kl-divergence ({kind} probe)")
        quant.unlink(missing_ok=True)
        proxy = sum(errors[n].get(plan.effective_type(n), 0.0) for n in members)
        probes.append({"kind": kind, "type": probe_type, "kld_mean": measured,
                       "from_statistics": exact, "proxy_error": proxy, "tensors": len(members)})
        if proxy > 0 and measured > 0:
            scales[kind] = measured / proxy
        clock.advance(f"probe: {kind} done", 2)
    # A kind whose probe measured nothing (below the tool's resolution) gets the smallest
    # scale seen: not free, so the optimizer never spends bytes on it for no reason.
    floor = min(scales.values()) if scales else 1.0
    for kind in kinds:
        scales.setdefault(kind, floor)
    return scales, probes
