"""A pipeline of jobs (imatrix -> quantize -> evaluate) and its assembly from options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from apex_gui.core.jobs.evaluations import (
    BenchJob, HellaSwagJob, KLDivergenceJob, MultipleChoiceJob, PerplexityJob, ReferenceLogitsJob,
    WinograndeJob, reference_logits_path,
)
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions, option_names
from apex_gui.core.jobs.specs import JobError, ToolJob, same_file


JOB_TYPES: dict[str, type[ToolJob]] = {cls.kind: cls for cls in (
    ImatrixJob, QuantizeJob, ReferenceLogitsJob, PerplexityJob, KLDivergenceJob,
    HellaSwagJob, WinograndeJob, MultipleChoiceJob, BenchJob)}


def job_from_dict(spec: dict[str, Any]) -> ToolJob:
    """Rebuild a job from :meth:`ToolJob.to_dict` (e.g. to rerun one from the history)."""
    cls = JOB_TYPES.get(spec.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown job kind {spec.get('kind')!r}; known: {', '.join(JOB_TYPES)}")
    values: dict[str, Any] = {"options": RunOptions.from_fields(spec)}
    for f in fields(cls):
        if f.name not in spec or f.name in option_names():
            continue
        value = spec[f.name]
        if value is not None and "Path" in str(f.type):
            value = Path(value)
        elif isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


# --- pipelines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineStep:
    """One job in a pipeline and the keys of the steps it waits for."""

    key: str
    job: ToolJob
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    """Jobs with dependencies, in a runnable order: a failed step stops its dependants."""

    steps: tuple[PipelineStep, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for step in self.steps:
            if step.key in seen:
                raise ValueError(f"pipeline step key {step.key!r} is used twice")
            missing = [k for k in step.after if k not in seen]
            if missing:
                raise ValueError(f"pipeline step {step.key!r} waits for {missing}, which must "
                                 "come before it")
            seen.add(step.key)

    @classmethod
    def from_jobs(cls, jobs: Sequence[tuple[str, ToolJob]]) -> Pipeline:
        """Steps in the given order; a step waits for every earlier step whose output it reads."""
        steps: list[PipelineStep] = []
        for key, job in jobs:
            after = tuple(s.key for s in steps if s.job.output() is not None
                          and any(same_file(s.job.output(), p) for p in job.inputs()))
            steps.append(PipelineStep(key, job, after))
        return cls(tuple(steps))

    def step(self, key: str) -> PipelineStep:
        for step in self.steps:
            if step.key == key:
                return step
        raise KeyError(key)

    def with_options(self, options: RunOptions) -> Pipeline:
        """The same steps, each run with ``options`` as far as its tool takes them (RPC
        workers only where the tool takes ``--rpc``); a step's own choices stay."""
        return Pipeline(tuple(
            replace(step, job=step.job.with_options(
                step.job.options.over(options.for_tool(step.job.tool))))
            for step in self.steps))

    def produced_before(self, key: str) -> list[Path]:
        """Outputs of the steps before ``key``: files that will exist by the time it runs."""
        out: list[Path] = []
        for step in self.steps:
            if step.key == key:
                break
            if step.job.output() is not None:
                out.append(step.job.output())  # type: ignore[arg-type]
        return out

    def check(self) -> list[tuple[str, str]]:
        """Every step's problems known before anything runs, as (key, message)."""
        problems = []
        for step in self.steps:
            try:
                step.job.check(self.produced_before(step.key))
            except JobError as error:
                problems.append((step.key, str(error)))
        return problems


@dataclass(frozen=True)
class EvaluationOptions:
    """Which evaluations a pipeline runs on each quant."""

    reference: Path | None = None  # the F16/BF16 model for KL divergence
    text: Path | None = None  # evaluation text for perplexity and KL divergence
    context: int = 512
    chunks: int | None = None
    kl_divergence: bool = True
    perplexity: bool = False  # KL divergence already reports the quant's PPL on the text
    hellaswag: Path | None = None
    winogrande: Path | None = None
    multiple_choice: tuple[Path, ...] = ()
    tasks: int | None = None
    bench: bool = False
    bench_prompt: int = 512
    bench_gen: int = 128
    bench_repetitions: int = 5


def evaluation_jobs(model: Path, options: EvaluationOptions,
                    prefix: str = "") -> list[tuple[str, ToolJob]]:
    """The evaluation steps for one model (the reference logits job is added separately)."""
    jobs: list[tuple[str, ToolJob]] = []
    name = prefix or model.stem
    if options.kl_divergence and options.reference is not None and options.text is not None:
        ref = reference_logits_path(options.reference, options.text, options.context,
                                    options.chunks)
        jobs.append((f"{name}:kld", KLDivergenceJob(
            model=model, reference_logits=ref, context=options.context, chunks=options.chunks)))
    if options.perplexity and options.text is not None:
        jobs.append((f"{name}:ppl", PerplexityJob(model=model, text=options.text,
                                                  context=options.context,
                                                  chunks=options.chunks)))
    task_args = {"tasks": options.tasks} if options.tasks is not None else {}
    if options.hellaswag is not None:
        jobs.append((f"{name}:hellaswag", HellaSwagJob(model=model, data=options.hellaswag,
                                                       **task_args)))
    if options.winogrande is not None:
        jobs.append((f"{name}:winogrande", WinograndeJob(model=model, data=options.winogrande,
                                                         **task_args)))
    for data in options.multiple_choice:
        jobs.append((f"{name}:mc:{data.stem}", MultipleChoiceJob(model=model, data=data,
                                                                 **task_args)))
    if options.bench:
        jobs.append((f"{name}:bench", BenchJob(model=model, n_prompt=options.bench_prompt,
                                               n_gen=options.bench_gen,
                                               repetitions=options.bench_repetitions)))
    return jobs


def build_pipeline(quantize_jobs: Sequence[QuantizeJob], imatrix_job: ImatrixJob | None = None,
                   evaluation: EvaluationOptions | None = None) -> Pipeline:
    """imatrix -> quantize each plan -> evaluate each quant, as one dependency graph.

    The reference logits are computed once (and skipped when the cache already has them);
    every KL divergence step waits for them.
    """
    jobs: list[tuple[str, ToolJob]] = []
    if imatrix_job is not None:
        jobs.append(("imatrix", imatrix_job))
    options = evaluation or EvaluationOptions(kl_divergence=False)
    if options.kl_divergence and options.reference is not None and options.text is not None:
        reference = ReferenceLogitsJob.cached(options.reference, options.text, options.context,
                                              options.chunks)
        if not reference.output_path.is_file():
            jobs.append(("reference", reference))
    # Each quant is evaluated right after it is written: its numbers arrive early, and a
    # failed quantize stops only its own evaluations.
    for job in quantize_jobs:
        key = job.profile or job.output_path.stem
        jobs.append((f"{key}:quantize", job))
        jobs += evaluation_jobs(job.output_path, options, prefix=key)
    return Pipeline.from_jobs(jobs)
