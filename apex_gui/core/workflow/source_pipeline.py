"""One resumable pipeline from a model id or a local checkpoint to published APEX quants.

download (``hf://OWNER/NAME``) -> convert (and the projector, for a multimodal model) ->
imatrix -> quantize each profile -> evaluate -> model card -> upload. The quantize and
evaluation steps are :func:`apex_gui.core.jobs.assembly.pipeline_for`'s, the assembly the
Run tab and ``apex-studio pipeline MODEL.gguf`` use. Each finished step is recorded in the
work folder (:mod:`apex_gui.core.workflow.state`); run again after a kill, a crash or a
cancel, the pipeline checks every recorded output and continues from the first step that is
not done. Tool outputs are written under temporary names and renamed only when complete,
the download keeps its partial files for a range request, so nothing half-made is reused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apex_gui.core.convert.checkpoint import (CheckpointError, Checkpoint, OUTPUT_TYPES,
                                              open_checkpoint, safetensors_problem)
from apex_gui.core.convert.converter import ConverterMissing, converter_problem, find_converter
from apex_gui.core.convert.job import ConvertJob
from apex_gui.core.files.outputs import gguf_extent_problem
from apex_gui.core.gguf.model import open_model
from apex_gui.core.hub import checkpoint_download
from apex_gui.core.hub.download import (DownloadCancelled, HubError, transport_errors,
                                        unanswered)
from apex_gui.core.hub.publish import PublishError, UploadCancelled, upload, upload_plan
from apex_gui.core.jobs.assembly import RunRequest, pipeline_for
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobOutcome, JobStatus, run_job
from apex_gui.core.jobs.specs import ToolJob, gguf_output_problem
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import all_profiles, get_profile
from apex_gui.core.report.card_facts import model_facts, quant_recipes
from apex_gui.core.report.model_card import build_card_inputs, render_model_card
from apex_gui.core.report.results import collect_results
from apex_gui.core.workflow.state import PipelineState

#: Steps that are not tool runs, in the order they come.
DOWNLOAD, CONVERT, MMPROJ, CARD, UPLOAD = "download", "convert", "convert:mmproj", "card", "upload"


@dataclass(frozen=True)
class SourcePipelineRequest:
    """A pipeline from a Hugging Face model (``hf://OWNER/NAME``) or checkpoint folder."""

    source: str
    work_dir: Path
    profiles: tuple[str, ...]
    output_type: str | None = None  # bf16/f16; None: BF16 for a BF16 checkpoint, else F16
    pre_tokenizer: str = ""
    kl_divergence: bool = True
    perplexity: bool = False
    eval_text: Path | None = None
    eval_context: int = 512
    eval_chunks: int | None = None
    calibration_files: tuple[Path, ...] = ()
    imatrix_context: int = 512
    imatrix_chunks: int | None = None
    threads: int = 0  # 0: the tools' standing options (the settings, -t) decide
    publish_repo: str | None = None
    private: bool = False
    token: str | None = field(default=None, repr=False)  # never stored, never printed


@dataclass
class StepReport:
    """How one step went in this run: ``done``, ``reused``, ``failed``, ``cancelled``."""

    key: str
    status: str
    message: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None


class StepEvents:
    """What a pipeline tells its caller; the CLI prints it, the window shows it."""

    def started(self, key: str, title: str) -> None: ...
    def progress(self, key: str, fraction: float | None, detail: str) -> None: ...
    def finished(self, report: StepReport) -> None: ...


def model_name(source: str) -> str:
    kind, value = checkpoint_download.parse_source(source)
    return value.split("/")[-1] if kind == "hub" else Path(value).resolve().name


def checkpoint_folder(request: SourcePipelineRequest) -> Path:
    kind, value = checkpoint_download.parse_source(request.source)
    if kind == "hub":
        return request.work_dir / "checkpoint"
    return Path(value)


def check_request(request: SourcePipelineRequest) -> None:
    """ValueError naming the problem, before anything starts."""
    if not request.profiles:
        raise ValueError("--profiles needs at least one profile key, e.g. quality,i-quality")
    for key in request.profiles:
        get_profile(key)  # names the unknown one
    if request.output_type is not None and request.output_type not in OUTPUT_TYPES:
        raise ValueError(f"--outtype {request.output_type}: choose {' or '.join(OUTPUT_TYPES)}")
    kind, value = checkpoint_download.parse_source(request.source)
    if kind == "folder":
        try:
            open_checkpoint(Path(value))
        except CheckpointError as error:
            raise ValueError(str(error)) from None
    if request.work_dir.exists() and not request.work_dir.is_dir():
        raise ValueError(f"--output-dir {request.work_dir} is a file; give a folder")


def _gguf_problem(path: Path) -> str | None:
    if not path.is_file():
        return "missing"
    return gguf_output_problem(path) or gguf_extent_problem(path)


class SourcePipeline:
    """Runs (or resumes) one :class:`SourcePipelineRequest`."""

    def __init__(self, request: SourcePipelineRequest, tools: LlamaTools, store: RunStore,
                 events: StepEvents | None = None, cancel: threading.Event | None = None,
                 converter_python: str | None = None) -> None:
        self.request = request
        self.tools = tools
        self.store = store
        self.events = events or StepEvents()
        self.cancel = cancel or threading.Event()
        self.converter_python = converter_python
        self.state = PipelineState.load(request.work_dir, request.source)
        self.reports: dict[str, StepReport] = {}

    # --- the whole run ----------------------------------------------------------------------
    def run(self) -> dict[str, StepReport]:
        request = self.request
        request.work_dir.mkdir(parents=True, exist_ok=True)
        kind, repo = checkpoint_download.parse_source(request.source)
        folder = checkpoint_folder(request)
        if kind == "hub" and not self._download(repo, folder):
            return self.reports
        try:
            checkpoint = open_checkpoint(folder)
        except CheckpointError as error:
            return self._stop(CONVERT, "failed", str(error))
        converted = self._convert(checkpoint)
        if converted is None:
            return self.reports
        quants = self._quantize_and_evaluate(converted)
        if quants is None:
            return self.reports
        card = self._card(converted, quants)
        if card is not None and request.publish_repo:
            self._upload(quants, card)
        return self.reports

    # --- bookkeeping ------------------------------------------------------------------------
    def _stop(self, key: str, status: str, message: str) -> dict[str, StepReport]:
        self._report(StepReport(key, status, message))
        return self.reports

    def _report(self, report: StepReport) -> StepReport:
        self.reports[report.key] = report
        self.events.finished(report)
        return report

    def _reuse(self, key: str, title: str, output: Path | None = None) -> None:
        self.events.started(key, title)
        self.state.note(key, "reused")
        self._report(StepReport(key, "reused", "done in an earlier run; its output checks out",
                                self.state.results(key), output))

    def _run_tool(self, key: str, job: ToolJob, produced: list[Path]) -> JobOutcome:
        self.events.started(key, job.title())
        self.state.note(key, "started")
        outcome = run_job(job, self.tools, self.store, cancel=self.cancel, produced=produced,
                          on_progress=lambda p, eta: self.events.progress(key, p.fraction,
                                                                          p.detail))
        status = {JobStatus.SUCCEEDED: "done", JobStatus.CANCELLED: "cancelled"}.get(
            outcome.status, "failed")
        if outcome.succeeded:
            output = job.output()
            self.state.record(key, [output] if output else [], list(job.inputs()),
                              outcome.results)
        self._report(StepReport(key, status, outcome.message, outcome.results, job.output()))
        return outcome

    # --- download ---------------------------------------------------------------------------
    def _download(self, repo: str, folder: Path) -> bool:
        title = f"download {repo}"
        listed = self.state.results(DOWNLOAD).get("files", [])

        def problem(path: Path) -> str | None:
            return safetensors_problem(path) if path.suffix == ".safetensors" else None

        if listed and self.state.done(DOWNLOAD, problem):
            self._reuse(DOWNLOAD, title, folder)
            return True
        self.events.started(DOWNLOAD, title)
        self.state.note(DOWNLOAD, "started")
        try:
            listing = checkpoint_download.list_checkpoint(repo, token=self.request.token)
            checkpoint_download.download_checkpoint(
                listing, folder, token=self.request.token, cancelled=self.cancel.is_set,
                progress=lambda done, total: self.events.progress(
                    DOWNLOAD, done / total if total else None, f"{done:,} of {total:,} bytes"))
        except DownloadCancelled:
            self._stop(DOWNLOAD, "cancelled", "cancelled; run again to resume the download")
            return False
        except HubError as error:
            self._stop(DOWNLOAD, "failed", str(error))
            return False
        files = [folder / f.name for f in listing.files]
        self.state.record(DOWNLOAD, files, [], {"commit": listing.commit,
                                                "files": [f.name for f in listing.files]})
        self._report(StepReport(DOWNLOAD, "done", f"{len(files)} files at commit "
                                f"{listing.commit[:12]}", output=folder))
        return True

    # --- convert ----------------------------------------------------------------------------
    def _convert(self, checkpoint: Checkpoint) -> Path | None:
        request = self.request
        output_type = request.output_type or checkpoint.default_output_type()
        name = model_name(request.source)
        target = request.work_dir / f"{name}-{output_type.upper()}.gguf"
        jobs = [(CONVERT, target, False)]
        if checkpoint.has_projector:
            jobs.append((MMPROJ, request.work_dir / f"mmproj-{name}-{output_type.upper()}.gguf",
                         True))
        converter = None
        for key, output, mmproj in jobs:
            if self.state.done(key, _gguf_problem):
                self._reuse(key, f"convert {checkpoint.folder.name}", output)
                continue
            if converter is None:
                try:
                    converter = find_converter(self.tools.configured_dir)
                except ConverterMissing as error:
                    self._stop(key, "failed", str(error))
                    return None
                problem = converter_problem(converter, self.converter_python)
                if problem or converter is None:
                    self._stop(key, "failed", problem or "no converter")
                    return None
            job = ConvertJob(checkpoint=checkpoint.folder, output_path=output,
                             converter=converter.folder, output_type=output_type,
                             mmproj=mmproj, pre_tokenizer=request.pre_tokenizer,
                             python=self.converter_python or "")
            if not self._run_tool(key, job, []).succeeded:
                return None
        return target

    # --- imatrix, quantize, evaluate --------------------------------------------------------
    def _quantize_and_evaluate(self, converted: Path) -> list[Path] | None:
        request = self.request
        model = open_model(converted)
        plans = tuple(plan_from_profile(model, get_profile(key)) for key in request.profiles)
        run = RunRequest(
            model=model, plans=plans, output_dir=request.work_dir,
            calibration_files=request.calibration_files,
            imatrix_context=request.imatrix_context, imatrix_chunks=request.imatrix_chunks,
            eval_text=request.eval_text, kl_divergence=request.kl_divergence,
            perplexity=request.perplexity, eval_context=request.eval_context,
            eval_chunks=request.eval_chunks,
            options=RunOptions(threads=request.threads) if request.threads else RunOptions())
        pipeline = pipeline_for(run)
        succeeded: set[str] = set()
        quants: list[Path] = []
        for step in pipeline.steps:
            blocked = [k for k in step.after if k not in succeeded]
            output = step.job.output()
            if output is not None and output.suffix == ".gguf" and step.job.kind == "quantize":
                quants.append(output)
            if blocked:
                self._report(StepReport(step.key, "skipped", f"not run: {blocked[0]} did not "
                                                             "finish"))
                continue
            if self.cancel.is_set():
                self._report(StepReport(step.key, "cancelled", "not run: cancelled"))
                continue

            def problem(path: Path, job: ToolJob = step.job) -> str | None:
                return job.output_problem(path) or (_gguf_problem(path)
                                                     if path.suffix == ".gguf" else None)

            if self.state.done(step.key, problem):
                self._reuse(step.key, step.job.title(), output)
                succeeded.add(step.key)
                continue
            outcome = self._run_tool(step.key, step.job,
                                     pipeline.produced_before(step.key))
            if outcome.succeeded:
                succeeded.add(step.key)
        if len(succeeded) != len(pipeline.steps):
            return None
        return quants

    # --- card and upload --------------------------------------------------------------------
    def _card(self, converted: Path, quants: list[Path]) -> Path | None:
        card = self.request.work_dir / "README.md"
        if self.state.done(CARD):
            self._reuse(CARD, "model card", card)
            return card
        self.events.started(CARD, "model card")
        self.state.note(CARD, "started")
        model = open_model(converted)
        rows = collect_results(self.store, reference=model.path, family_only=True)
        recipes = quant_recipes(self.store)
        kind, value = checkpoint_download.parse_source(self.request.source)
        repo = self.request.publish_repo or f"USER/{model_name(self.request.source)}-APEX-GGUF"
        inputs, _names = build_card_inputs(
            rows, recipes, repo_id=repo, model_name=model_name(self.request.source),
            profiles=all_profiles(), facts=model_facts(model),
            base_model=value if kind == "hub" else "", mmproj=None)
        text = render_model_card(inputs)
        partial = card.with_name(card.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(card)
        self.state.record(CARD, [card], [*quants])
        self._report(StepReport(CARD, "done", f"wrote {card.name}", output=card))
        return card

    def _upload(self, quants: list[Path], card: Path) -> None:
        repo = self.request.publish_repo or ""
        if self.state.done(UPLOAD):
            self._reuse(UPLOAD, f"upload to {repo}")
            return
        self.events.started(UPLOAD, f"upload to {repo}")
        self.state.note(UPLOAD, "started")
        mmproj = [p for p in self.request.work_dir.glob("mmproj-*.gguf")]
        files = [(p, p.name) for p in [*quants, *mmproj]]
        plan = upload_plan(repo, files, readme=card.read_text(encoding="utf-8"))
        try:
            url = upload(plan, token=self.request.token, private=self.request.private,
                         should_stop=self.cancel.is_set)
        except UploadCancelled:
            self._stop(UPLOAD, "cancelled", "cancelled; run again to send the rest")
            return
        except (PublishError, HubError) as error:
            self._stop(UPLOAD, "failed", str(error))
            return
        except transport_errors() as error:
            self._stop(UPLOAD, "failed", str(unanswered(f"the upload to {repo}", error)))
            return
        self.state.record(UPLOAD, [], [*quants, card], {"url": str(url)})
        self._report(StepReport(UPLOAD, "done", f"published to {url}"))


def run_source_pipeline(request: SourcePipelineRequest, tools: LlamaTools, store: RunStore,
                        events: StepEvents | None = None,
                        cancel: threading.Event | None = None) -> dict[str, StepReport]:
    """Run or resume the pipeline; every step's report, in order."""
    check_request(request)
    return SourcePipeline(request, tools, store, events, cancel).run()


def succeeded(reports: dict[str, StepReport]) -> bool:
    return bool(reports) and all(r.status in ("done", "reused") for r in reports.values())

