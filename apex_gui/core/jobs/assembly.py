"""Pipeline assembly from a run request: one place for the window and the command line."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apex_gui.core.jobs.calibration import combine_calibration, imatrix_cache_path, quick_eval_text
from apex_gui.core.jobs.pipeline import EvaluationOptions, Pipeline, build_pipeline
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.plan.profiles import quant_file_name
from apex_gui.core.units import format_size


def output_name(model: Any, label: str) -> str:
    """``<source stem>-APEX-<Label>.gguf``, the name the memory check also uses."""
    return quant_file_name(Path(model.path), label)


@dataclass(frozen=True)
class RunRequest:
    """Everything the Run tab asks for, as plain data."""

    model: Any  # ModelInfo of the full-precision source
    plans: tuple[Any, ...]  # PrecisionPlan per quant to make
    output_dir: Path
    calibration_files: tuple[Path, ...] = ()  # empty: the bundled calibration set
    imatrix_context: int = 512
    imatrix_chunks: int | None = None
    eval_text: Path | None = None  # None: the bundled quick evaluation text
    kl_divergence: bool = True
    perplexity: bool = False
    eval_context: int = 512
    eval_chunks: int | None = None
    hellaswag: Path | None = None
    winogrande: Path | None = None
    multiple_choice: tuple[Path, ...] = ()
    tasks: int | None = None
    bench: bool = False
    labels: tuple[str, ...] = field(default=())  # file label per plan ("Quality", "custom")
    #: How this run's tools are started (RPC workers for imatrix and evaluations); what it
    #: leaves unchosen comes from the queue's tools (settings, tools-check finding).
    options: RunOptions = RunOptions()
    imatrix_file: Path | None = None  # a given importance matrix (None: computed and cached)
    reference: Path | None = None  # the model for KL divergence (None: the source itself)
    bench_prompt: int = 512
    bench_gen: int = 128
    bench_repetitions: int = 2

    def needs_imatrix(self) -> bool:
        return any(uses_imatrix(plan) for plan in self.plans)


def uses_imatrix(plan: Any) -> bool:
    """Its types need an importance matrix, or its profile asks for one (the I- variants)."""
    return plan.needs_imatrix() or (plan.profile is not None and plan.profile.uses_imatrix)


def pipeline_for(request: RunRequest) -> Pipeline:
    """imatrix (when a plan needs one and none is given or cached) -> quantize -> evaluate.

    The one assembly of the Run tab, ``apex-studio pipeline`` and the resumable pipeline
    from a Hugging Face model (:mod:`apex_gui.core.workflow`).
    """
    model = request.model
    imatrix_job: ImatrixJob | None = None
    imatrix_path: Path | None = None
    if request.needs_imatrix() and request.imatrix_file is not None:
        imatrix_path = request.imatrix_file
    elif request.needs_imatrix():
        calibration = combine_calibration(list(request.calibration_files) or None)
        imatrix_path = imatrix_cache_path(model.path, calibration, request.imatrix_context,
                                          request.imatrix_chunks)
        if not imatrix_path.is_file():
            imatrix_path.parent.mkdir(parents=True, exist_ok=True)
            imatrix_job = ImatrixJob(model=Path(model.path), calibration=calibration,
                                     output_path=imatrix_path, context=request.imatrix_context,
                                     chunks=request.imatrix_chunks)
    request.output_dir.mkdir(parents=True, exist_ok=True)
    quantize_jobs = []
    labels = request.labels or tuple(
        plan.profile.label if plan.profile else "custom" for plan in request.plans)
    for plan, label in zip(request.plans, labels):
        quantize_jobs.append(QuantizeJob.from_plan(
            plan, request.output_dir / output_name(model, label),
            imatrix=imatrix_path if uses_imatrix(plan) else None))
    text = None
    if request.kl_divergence or request.perplexity:
        text = request.eval_text or quick_eval_text()
    evaluation = EvaluationOptions(
        reference=request.reference or Path(model.path), text=text, context=request.eval_context,
        chunks=request.eval_chunks, kl_divergence=request.kl_divergence,
        perplexity=request.perplexity, hellaswag=request.hellaswag,
        winogrande=request.winogrande, multiple_choice=request.multiple_choice,
        tasks=request.tasks, bench=request.bench, bench_prompt=request.bench_prompt,
        bench_gen=request.bench_gen, bench_repetitions=request.bench_repetitions)
    return build_pipeline(quantize_jobs, imatrix_job, evaluation).with_options(request.options)


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse a run whose quants cannot fit on the output disk (ValueError naming the folder).

    Checked before anything starts: a 400B model's quants fill a disk in the middle of
    the night otherwise (and a sparse shape twin would try to write hundreds of GB).
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return  # an unreadable folder is reported by the job that writes into it
    if needed > free:
        raise ValueError(f"the quants need {format_size(needed)} but {folder} has only "
                         f"{format_size(free)} free: choose another output folder or fewer "
                         "profiles")
