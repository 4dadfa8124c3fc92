"""Measured quantization sensitivity: what each candidate type does to each tensor.

1. **Errors, on a row sample** (:mod:`~apex_gui.core.quality.row_sample`): every quantizable
   matrix cut to a few evenly spaced rows, written once; per candidate type one
   ``llama-quantize`` of that sample and a read-back
   (:mod:`~apex_gui.core.quality.readback`). Quantization is row by row, so the sample's
   error times rows / sampled rows estimates the tensor's. The eight default types cost
   about one pass over a model of ordinary size, and less as models grow.
2. **Calibration, a few short probes** (:mod:`~apex_gui.core.quality.calibration`): one
   reference run of the source model on the probe text, then KL divergence of one probe
   model per tensor kind, of "all low" and of "all high". The probe models are assembled
   from shared shards (:mod:`~apex_gui.core.quality.probe_models`), so a probe costs its
   evaluation only.

Before any work every setting is checked and the cost projected
(:mod:`~apex_gui.core.quality.projection`). Each finished type and probe is saved, so an
interrupted run resumes where it stopped; the scratch folder is removed on every stop
(:mod:`~apex_gui.core.quality.scratch`). The finished table is cached by the content of the
model, imatrix and text and by the settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.gguf.types import FTYPE_DEFAULT_TYPE, IMATRIX_REQUIRED, UnknownTypeError, ggml_type
from apex_gui.core.jobs.calibration import file_digest
from apex_gui.core.jobs.evaluations import KLDivergenceJob, ReferenceLogitsJob
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.specs import JobError
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.plan.precision import PrecisionPlan, is_quantizable
from apex_gui.core.quality.calibration import Probe, fit_calibration, plan_probes, probe_type_for
from apex_gui.core.quality.probe_models import write_probe_shards
from apex_gui.core.quality.probe_runs import (ProbeReferenceJob, SensitivityCancelled, SensitivityError,
                                              kld_from_rows, measure_kld, run_step)
from apex_gui.core.quality.probe_text import probe_text
from apex_gui.core.quality.projection import (Projection, eval_work, project,
                                             quantize_work, readback_work, record_steps)
from apex_gui.core.quality.readback import read_imatrix, weight_energy, weighted_errors
from apex_gui.core.quality.row_sample import SAMPLE_SHARE, plan_sample, write_row_sample
from apex_gui.core.quality.scratch import WorkCancelled, scratch_folder
from apex_gui.core.quality.table import (SENSITIVITY_VERSION, SensitivityFileError, SensitivityTable,
                                         model_fingerprint, tensor_kind)
from apex_gui.core.settings import cache_dir

__all__ = [
    "DEFAULT_CANDIDATES", "DEFAULT_PROBE_CHUNKS", "IMATRIX_CANDIDATES", "MeasurementSettings",
    "SensitivityCancelled", "SensitivityError", "SensitivityTable", "cache_path",
    "kld_from_rows", "measure_sensitivity", "model_fingerprint", "prepare_measurement",
    "probe_type_for", "tensor_kind",
]

#: Types measured by default, and the extra ones that need an importance matrix.
DEFAULT_CANDIDATES: tuple[str, ...] = ("Q2_K", "Q3_K", "IQ3_S", "IQ4_XS", "Q4_K", "Q5_K",
                                       "Q6_K", "Q8_0")
IMATRIX_CANDIDATES: tuple[str, ...] = ("IQ2_XXS", "IQ2_S", "IQ3_XXS")
#: Chunks of each probe's evaluation by default (at the default context of 512 tokens).
DEFAULT_PROBE_CHUNKS = 4
#: Probe contexts accepted: a chunk scores its second half, and below 32 tokens that is
#: too little text to mean anything.
MIN_PROBE_CONTEXT = 32
MAX_PROBE_CONTEXT = 1 << 17
MAX_PROBE_CHUNKS = 100_000
#: llama-perplexity prints no KL statistics over fewer scored tokens than this.
MIN_SCORED_TOKENS = 100

ProgressCallback = Callable[[str, float, float | None], None]  # stage, fraction, ETA seconds


@dataclass(frozen=True)
class MeasurementSettings:
    """A measurement checked before any work: what is measured, how, and at what cost."""

    model: ModelInfo
    imatrix: Path | None
    text: Path
    context: int
    chunks: int
    candidates: tuple[str, ...]
    threads: int = 0
    rpc_workers: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.model.tensors if is_quantizable(t.name, t.shape)]

    @property
    def kinds(self) -> list[str]:
        return sorted({tensor_kind(n) for n in self.names})

    def probes(self) -> list[Probe]:
        return plan_probes(self.kinds, self.candidates)

    def options(self, evaluation: bool = False) -> RunOptions:
        """What the measurement asks of a tool run (the tools' standing options fill in the
        rest); the evaluations run across the RPC workers, llama-quantize locally."""
        return RunOptions(threads=self.threads,
                          rpc_workers=self.rpc_workers if evaluation else ())

    def key(self, fingerprint: str) -> str:
        """What the cache entry and the resume state are keyed by."""
        return "|".join([str(SENSITIVITY_VERSION), fingerprint,
                         file_digest(self.imatrix) if self.imatrix else "-",
                         ",".join(self.candidates), file_digest(self.text), str(self.context),
                         str(self.chunks), str(SAMPLE_SHARE)])

    def projection(self) -> Projection:
        return project(self.model, self.candidates, len(self.probes()), self.context,
                       self.chunks)


def _check_candidates(candidates: Iterable[str], imatrix: Path | None) -> tuple[str, ...]:
    chosen: list[str] = []
    for name in candidates:
        try:
            kind = ggml_type(name)
        except UnknownTypeError as error:
            raise ValueError(f"candidate type {name!r}: {error}") from None
        if not kind.quantized:
            raise ValueError(f"candidate type {kind.name} is not a quantized type; give "
                             "quantized types (--types Q4_K,Q6_K)")
        if kind.name not in chosen:
            chosen.append(kind.name)
    if not chosen:
        raise ValueError("no candidate types given; leave --types out for the defaults")
    if not imatrix and (needing := [c for c in chosen if c in IMATRIX_REQUIRED]):
        raise ValueError(f"candidate types {', '.join(needing)} need an importance matrix; "
                         "give one with --imatrix FILE or leave them out")
    return tuple(chosen)


def prepare_measurement(
    model_path: str | os.PathLike[str], imatrix: str | os.PathLike[str] | None = None, *,
    text: str | os.PathLike[str] | None = None, context: int = 512, chunks: int | None = None,
    candidates: Iterable[str] | None = None, threads: int = 0,
    rpc_workers: Iterable[str] = (),
) -> MeasurementSettings:
    """Every setting checked before any work: ValueError (one line) for what cannot run."""
    model = open_model(model_path)
    imatrix_path = Path(imatrix) if imatrix else None
    text_path = Path(text) if text else probe_text()
    if isinstance(context, bool) or not MIN_PROBE_CONTEXT <= context <= MAX_PROBE_CONTEXT:
        raise ValueError(f"--probe-ctx {context} is out of range: give {MIN_PROBE_CONTEXT} to "
                         f"{MAX_PROBE_CONTEXT} tokens (512 is the default)")
    trained = model.context_length
    if trained and context > max(trained, 512):
        raise ValueError(f"--probe-ctx {context} is longer than {model.path.name} was trained "
                         f"for ({trained} tokens); give at most {trained}")
    chunk_count = DEFAULT_PROBE_CHUNKS if chunks is None else chunks
    if isinstance(chunk_count, bool) or not 1 <= chunk_count <= MAX_PROBE_CHUNKS:
        raise ValueError(f"--chunks {chunk_count} is out of range: give 1 to "
                         f"{MAX_PROBE_CHUNKS} (default {DEFAULT_PROBE_CHUNKS})")
    scored = chunk_count * (context - 1 - context // 2)
    if scored < MIN_SCORED_TOKENS:
        raise ValueError(f"--chunks {chunk_count} at --probe-ctx {context} scores only {scored} "
                         f"tokens, and KL divergence needs {MIN_SCORED_TOKENS}: give more chunks "
                         f"(at least {-(-MIN_SCORED_TOKENS // (context - 1 - context // 2))}) "
                         "or a larger context")
    chosen = _check_candidates(candidates if candidates else (
        DEFAULT_CANDIDATES + (IMATRIX_CANDIDATES if imatrix_path else ())), imatrix_path)
    if not [t for t in model.tensors if is_quantizable(t.name, t.shape)]:
        raise ValueError(f"{model.path.name} has no tensor llama-quantize would quantize")
    if imatrix_path is not None:
        read_imatrix(imatrix_path)  # a broken importance matrix is named now, not in an hour
    try:
        ReferenceLogitsJob(model=Path(model.path), text=text_path, context=context,
                           chunks=chunk_count, output_path=Path(os.devnull)).check()
    except JobError as error:
        raise ValueError(str(error)) from None
    return MeasurementSettings(model, imatrix_path, text_path, context, chunk_count, chosen,
                               threads, tuple(rpc_workers))


def cache_path(key: str) -> Path:
    return cache_dir() / "sensitivity" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def state_path(key: str) -> Path:
    """Where an unfinished measurement keeps what it finished (for a resume)."""
    return cache_dir() / "sensitivity" / f"partial-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


@dataclass
class _State:
    """What a measurement has finished: errors per type, energy, probes. Saved after each
    step, so a run that was stopped resumes from the last finished type and probe."""

    path: Path
    key: str
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # type -> tensor -> error
    effective: dict[str, dict[str, str]] = field(default_factory=dict)  # type -> tensor -> written
    energy: dict[str, float] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, key: str) -> _State:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") == key:
                return cls(path, key, data["errors"], data["effective"], data["energy"],
                           data["probes"], data.get("timings", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # none, or unreadable: start over
        return cls(path, key)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": self.key, "errors": self.errors,
                                   "effective": self.effective, "energy": self.energy,
                                   "probes": self.probes, "timings": self.timings},
                                  allow_nan=False), encoding="utf-8")
        os.replace(tmp, self.path)

    def add_time(self, step: str, seconds: float) -> None:
        self.timings[step] = self.timings.get(step, 0.0) + seconds


@dataclass
class _Clock:
    """Progress over the projected seconds of each step, the ETA scaled by how the real
    steps compare with their projection."""

    total: float
    callback: ProgressCallback | None
    done: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def advance(self, stage: str, projected: float = 0.0) -> None:
        self.done += projected
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


def measure_sensitivity(
    model_path: str | os.PathLike[str], imatrix: str | os.PathLike[str] | None = None, *,
    text: str | os.PathLike[str] | None = None, context: int = 512, chunks: int | None = None,
    candidates: Iterable[str] | None = None, tools: LlamaTools | None = None, threads: int = 0,
    rpc_workers: Iterable[str] = (), on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None, use_cache: bool = True, resume: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
    settings: MeasurementSettings | None = None,
    output: str | os.PathLike[str] | None = None,
) -> SensitivityTable:
    """Measure (or load from the cache, or finish a stopped run of) a model's table.

    ``output``: the file the caller will write the table to (its lock is cleaned up by the
    next run if this one is killed)."""
    settings = settings or prepare_measurement(
        model_path, imatrix, text=text, context=context, chunks=chunks, candidates=candidates,
        threads=threads, rpc_workers=rpc_workers)
    model = settings.model
    fingerprint = model_fingerprint(model)
    key = settings.key(fingerprint)
    cached = cache_path(key)
    if use_cache and cached.is_file():
        try:
            table = SensitivityTable.load(cached, model)
            if on_progress is not None:
                on_progress("loaded from cache", 1.0, 0.0)
            return table
        except (SensitivityFileError, OSError):
            cached.unlink(missing_ok=True)  # unreadable entry: measure again
    state = _State.load(state_path(key), key) if resume and use_cache else _State(state_path(key), key)
    tools = tools or LlamaTools()
    projection = settings.projection()
    clock = _Clock(total=projection.seconds, callback=on_progress)
    run = _Run(settings, tools, state, clock, projection, cancel)
    try:
        with scratch_folder(work_dir, output) as scratch:
            run.errors(scratch)
            calibration = run.calibrate(scratch)
    except WorkCancelled:
        raise SensitivityCancelled() from None
    names = settings.names
    errors = _table_errors(state, names)
    table = SensitivityTable(
        model=model.path.name, fingerprint=fingerprint,
        imatrix=settings.imatrix.name if settings.imatrix else None,
        candidates=settings.candidates, source_types={n: model.tensor(n).type_name for n in names},
        errors=errors, kind_scale=calibration.kind_scale, energy=state.energy,
        floor=calibration.floor, response=calibration.response,
        probes=[{"key": k, **v} for k, v in state.probes.items()], timings=dict(state.timings),
        settings={"text": settings.text.name, "text_sha256": file_digest(settings.text),
                  "context": settings.context, "chunks": settings.chunks,
                  "sample_share": SAMPLE_SHARE, "tensors": len(names),
                  "model_bytes": model.file_size,
                  "projected_seconds": round(projection.seconds, 1)})
    if use_cache:
        table.save(cached)  # atomic: a cancel before this line leaves no entry behind
    state.path.unlink(missing_ok=True)
    record_steps(run.observed)  # what this machine did: the next projection starts from it
    clock.advance("done")
    return table


def _table_errors(state: _State, names: list[str]) -> dict[str, dict[str, float]]:
    """Tensor -> effective type written -> error, from the per-type results."""
    errors: dict[str, dict[str, float]] = {n: {} for n in names}
    for type_name, by_tensor in state.errors.items():
        for name, value in by_tensor.items():
            errors[name][state.effective[type_name][name]] = value
    return errors


class _Run:
    """The steps of one measurement, each skipped when the resume state already has it."""

    def __init__(self, settings: MeasurementSettings, tools: LlamaTools, state: _State,
                 clock: _Clock, projection: Projection, cancel: threading.Event | None) -> None:
        self.settings = settings
        self.tools = tools
        self.state = state
        self.clock = clock
        self.projection = projection
        self.cancel = cancel
        self.names = settings.names
        #: this run's own steps, (work, seconds) by kind (see projection.record_steps)
        self.observed: dict[str, list[tuple[float, float]]] = {}

    def _saw(self, kind: str, work: float, seconds: float) -> None:
        self.observed.setdefault(kind, []).append((work, seconds))

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise SensitivityCancelled()

    def errors(self, scratch: Path) -> None:
        """Step 1: each candidate type on the row sample, read back and scaled up."""
        settings, state = self.settings, self.state
        missing = [t for t in settings.candidates if t not in state.errors]
        if not missing and state.energy:
            self.clock.advance("errors already measured", self.projection.steps["errors"])
            return
        started = time.monotonic()
        self.clock.advance("writing the row sample")
        sample_path = scratch / "sample.gguf"
        sampling = write_row_sample(settings.model, sample_path, plan_sample(settings.model),
                                    self.cancel)
        sample = open_model(sample_path)
        weights = read_imatrix(settings.imatrix) if settings.imatrix else None
        if not state.energy:
            energy = weight_energy(sample_path, self.names, weights, self.cancel)
            state.energy = {n: v * sampling[n].scale for n, v in energy.items()}
        state.add_time("sample_seconds", time.monotonic() - started)
        self.clock.advance("row sample written", self.projection.steps["sample"])
        for type_name in missing:
            self._check_cancel()
            started = time.monotonic()
            self.clock.advance(f"quantizing the row sample to {type_name}")
            # llama-quantize aborts on an imatrix-only type for a tensor the imatrix has no
            # data for (token_embd always, output often): those stay as stored in this run
            # and the type is not offered for them.
            unmeasured = ([n for n in self.names if weights is None or n not in weights]
                          if type_name in IMATRIX_REQUIRED else [])
            plan = _uniform_plan(sample, type_name, keep=unmeasured)
            quant = scratch / f"sample-{type_name}.gguf"
            job = QuantizeJob.from_plan(plan, quant, scratch / f"sample-{type_name}.txt",
                                        imatrix=settings.imatrix, options=settings.options())
            quantized = time.monotonic()
            run_step(job, self.tools, self.cancel, f"llama-quantize of the row sample to {type_name}")
            sample_size = sample_path.stat().st_size
            self._saw("quantize", quantize_work(sample_size, type_name),
                      time.monotonic() - quantized)
            self.clock.advance(f"reading back {type_name}")
            read = time.monotonic()
            measured = weighted_errors(sample_path, quant,
                                       [n for n in self.names if n not in unmeasured], weights,
                                       self.cancel)
            self._saw("readback", readback_work(sample_size, type_name), time.monotonic() - read)
            quant.unlink(missing_ok=True)
            state.errors[type_name] = {n: v * sampling[n].scale for n, v in measured.items()}
            state.effective[type_name] = {n: plan.effective_type(n) for n in measured}
            state.add_time("error_seconds", time.monotonic() - started)
            state.save()
            self.clock.advance(f"measured {type_name}", self.projection.steps[f"type:{type_name}"])
        sample_path.unlink(missing_ok=True)

    def calibrate(self, scratch: Path) -> Any:
        """Step 2: the probes (missing ones only), then the fit."""
        settings, state = self.settings, self.state
        probes = settings.probes()
        effective = {p.type_name: {n: _uniform_plan(settings.model, p.type_name).effective_type(n)
                                   for n in self.names} for p in probes}
        missing = [p for p in probes if p.key not in state.probes]
        if missing:
            started = time.monotonic()
            self.clock.advance("reference logits of the source model")
            reference = ProbeReferenceJob(
                model=Path(settings.model.path), text=settings.text, context=settings.context,
                chunks=settings.chunks, options=settings.options(evaluation=True),
                output_path=scratch / "reference.kld")
            run_step(reference, self.tools, self.cancel, "llama-perplexity --kl-divergence-base")
            self._saw_evaluation(time.monotonic() - started)
            state.add_time("calibration_seconds", time.monotonic() - started)
            self.clock.advance("reference logits", self.projection.steps["reference"])
            low = [p for p in missing if p.type_name == probes[0].type_name and p.key != "all-high"]
            if low:
                self._low_probes(scratch, low, reference.output_path)
            for probe in [p for p in missing if p not in low]:
                self._whole_probe(scratch, probe, reference.output_path)
        measured = {key: float(v["kld_mean"]) for key, v in state.probes.items()}
        return fit_calibration(_table_errors(state, self.names), state.energy, effective,
                               probes, measured)

    def _kld(self, model_file: Path, reference: Path, probe: Probe, started: float) -> None:
        settings = self.settings
        # --no-repack: repacked kernels crash on some AMX CPUs with quantized weights.
        job = KLDivergenceJob(model=model_file, reference_logits=reference,
                              context=settings.context, chunks=settings.chunks,
                              options=replace(settings.options(evaluation=True), no_repack=True))
        evaluated = time.monotonic()
        value, exact = measure_kld(job, self.tools, self.cancel,
                                   f"llama-perplexity --kl-divergence ({probe.key} probe)")
        self._saw_evaluation(time.monotonic() - evaluated)
        self.state.probes[probe.key] = {"type": probe.type_name, "kinds": list(probe.kinds),
                                        "kld_mean": value, "from_statistics": exact}
        self.state.add_time("calibration_seconds", time.monotonic() - started)
        self.state.save()

    def _saw_evaluation(self, seconds: float) -> None:
        settings = self.settings
        self._saw("eval", eval_work(settings.model, settings.context * settings.chunks),
                  seconds)

    def _quantize_whole(self, scratch: Path, type_name: str) -> Path:
        settings = self.settings
        started = time.monotonic()
        plan = _uniform_plan(settings.model, type_name)
        quant = scratch / f"all-{type_name}.gguf"
        job = QuantizeJob.from_plan(plan, quant, scratch / f"all-{type_name}.txt",
                                    imatrix=settings.imatrix, options=settings.options())
        run_step(job, self.tools, self.cancel, f"llama-quantize of the model to {type_name}")
        self._saw("quantize", quantize_work(settings.model.file_size, type_name),
                  time.monotonic() - started)
        return quant

    def _low_probes(self, scratch: Path, probes: list[Probe], reference: Path) -> None:
        started = time.monotonic()
        type_name = probes[0].type_name
        self.clock.advance(f"quantizing the model to {type_name} for the probes")
        quant = self._quantize_whole(scratch, type_name)
        groups: dict[str, list[str]] = {}
        for name in self.names:
            groups.setdefault(tensor_kind(name), []).append(name)
        self.clock.advance("writing the probe shards")
        shards = write_probe_shards(self.settings.model.paths, quant, groups, scratch / "shards",
                                    self.cancel)
        quant.unlink(missing_ok=True)
        self.state.add_time("calibration_seconds", time.monotonic() - started)
        self.clock.advance("probe shards written", self.projection.steps["low_quantize"])
        for probe in probes:
            self._check_cancel()
            started = time.monotonic()
            self.clock.advance(f"probe: {probe.key} at {type_name}")
            model_file = shards.assemble(probe.key.replace(":", "-"), probe.kinds)
            self._kld(model_file, reference, probe, started)
            self.clock.advance(f"probe: {probe.key} done", self.projection.steps["probe"])

    def _whole_probe(self, scratch: Path, probe: Probe, reference: Path) -> None:
        started = time.monotonic()
        self.clock.advance(f"probe: every tensor at {probe.type_name}")
        quant = self._quantize_whole(scratch, probe.type_name)
        self.clock.advance(f"probe: {probe.key} KL divergence",
                           self.projection.steps["high_quantize"])
        self._kld(quant, reference, probe, started)
        quant.unlink(missing_ok=True)
        self.clock.advance(f"probe: {probe.key} done", self.projection.steps["probe"])
