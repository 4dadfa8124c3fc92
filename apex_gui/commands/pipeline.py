"""``apex-studio imatrix | quantize | eval | pipeline``: run jobs headless with a progress bar.

Each command builds core jobs, runs them as one pipeline (so a failed step stops what
depends on it), shows progress on stderr and a result table on stdout (``--json`` for
machines), and records every run in the history database. Exit code: 0 when every step
succeeded, 1 when one failed, 2 for a usage error, 130 when interrupted (Ctrl-C, SIGTERM,
SIGHUP: the running tool is stopped and its partial output deleted).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from apex_gui.commands.arguments import (MAX_CONTEXT, add_force, check_base_type, check_inputs, check_model_file,
                        check_model_header, check_tensor_type_file, check_threads,
                        check_writable_output, int_in_range, tool_path)
from apex_gui.commands.rpc import add_rpc_option, checked_workers
from apex_gui.commands.source_pipeline import (add_source_pipeline_args,
                                               run_source_pipeline_command, stop_signals_cancel)
from apex_gui.core.files.inputs import TASK_CAP_BYTES, TEXT_CAP_BYTES
from apex_gui.core.files.task_files import check_task_file
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.jobs.assembly import RunRequest, output_name, pipeline_for, uses_imatrix
from apex_gui.core.jobs.calibration import combine_calibration, imatrix_cache_path, quick_eval_text
from apex_gui.core.jobs.evaluations import ReferenceLogitsJob
from apex_gui.core.jobs.pipeline import (
    EvaluationOptions, Pipeline, evaluation_jobs,
)
from apex_gui.core.jobs.progress import Progress
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore, RunStoreError
from apex_gui.core.jobs.runner import JobOutcome, run_pipeline
from apex_gui.core.jobs.specs import ToolJob
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.plan.precision import PrecisionPlan, plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from apex_gui.core.settings import data_dir, load_settings
from apex_gui.core.units import format_size

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def register(sub: argparse._SubParsersAction) -> None:
    imatrix = sub.add_parser("imatrix", help="compute an importance matrix from calibration text")
    imatrix.add_argument("model", help="the F16/BF16 model (.gguf)")
    _calibration_args(imatrix)
    imatrix.add_argument("-o", "--output", required=True, help="output imatrix (.gguf)")
    add_force(imatrix)
    _common_args(imatrix)
    add_rpc_option(imatrix)
    imatrix.set_defaults(func=run_imatrix)

    quantize = sub.add_parser("quantize", help="quantize a model with an APEX profile")
    quantize.add_argument("model", help="the F16/BF16 source model (.gguf); never written")
    how = quantize.add_mutually_exclusive_group(required=True)
    how.add_argument("--profile", help="profile key or label, e.g. i-quality")
    how.add_argument("--tensor-type-file", type=Path,
                     help="an explicit llama-quantize tensor-type file (with --type)")
    quantize.add_argument("--type", dest="base_type", default="Q6_K",
                          help="base type with --tensor-type-file (default Q6_K)")
    quantize.add_argument("--imatrix", help="importance matrix file, or `auto` to compute one "
                                            "from the calibration set when the profile needs it")
    _calibration_args(quantize)
    quantize.add_argument("-o", "--output", required=True, help="output quant (.gguf)")
    add_force(quantize)
    _common_args(quantize)
    quantize.set_defaults(func=run_quantize)

    evaluate = sub.add_parser("eval", help="perplexity, KL divergence, benchmarks and speed")
    evaluate.add_argument("model", help="the quant to evaluate (.gguf)")
    _eval_args(evaluate)
    _common_args(evaluate)
    add_rpc_option(evaluate)
    evaluate.set_defaults(func=run_eval)

    pipeline = sub.add_parser("pipeline", help="imatrix -> quantize profiles -> evaluate each "
                                               "(from a GGUF, a checkpoint folder or hf://)")
    pipeline.add_argument("model", help="the F16/BF16 source model (.gguf), a Hugging Face "
                                        "checkpoint folder, or hf://OWNER/NAME (downloaded and "
                                        "converted first; resumable)")
    pipeline.add_argument("--profiles", required=True,
                          help="comma-separated profile keys, e.g. quality,i-quality,compact")
    pipeline.add_argument("--output-dir", type=Path, help="where the quants go "
                                                          "(default: next to the model)")
    pipeline.add_argument("--imatrix", default="auto",
                          help="importance matrix file, or `auto` (default): computed once from "
                               "the calibration set when a profile needs it")
    _calibration_args(pipeline)
    pipeline.add_argument("--eval", action="store_true",
                          help="evaluate each quant (KL divergence against the model itself "
                               "unless --reference is given)")
    add_force(pipeline)
    _eval_args(pipeline)
    _common_args(pipeline)
    add_rpc_option(pipeline)
    add_source_pipeline_args(pipeline)
    pipeline.set_defaults(func=run_pipeline_command)


def _calibration_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calibration", action="append", type=Path, metavar="FILE",
                        help="calibration text (repeat to combine several; default: the bundled "
                             "chat, code, reasoning and tool-calling set)")
    parser.add_argument("--imatrix-ctx", type=int, default=512,
                        help="context for the importance matrix (default 512)")
    parser.add_argument("--imatrix-chunks", type=int, default=None,
                        help="at most this many chunks of calibration text (default: all)")


def _eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", type=Path,
                        help="the F16/BF16 model for KL divergence (its logits are cached)")
    parser.add_argument("--ppl", type=Path, metavar="TEXT",
                        help="evaluation text (default: the bundled quick-evaluation text)")
    parser.add_argument("--kld", action="store_true", help="KL divergence against --reference")
    parser.add_argument("--hellaswag", type=Path, metavar="FILE", help="HellaSwag task file")
    parser.add_argument("--winogrande", type=Path, metavar="FILE", help="Winogrande CSV")
    parser.add_argument("--mc", type=Path, action="append", default=[], metavar="FILE",
                        help="multiple-choice binary file (MMLU, ARC, TruthfulQA); repeatable")
    parser.add_argument("--tasks", type=int, help="tasks per benchmark (default: 400 for "
                                                  "HellaSwag and Winogrande, all for --mc)")
    parser.add_argument("--bench", action="store_true", help="speed with llama-bench")
    parser.add_argument("--bench-prompt", type=int, default=512, help="pp tokens (default 512)")
    parser.add_argument("--bench-gen", type=int, default=128, help="tg tokens (default 128)")
    parser.add_argument("--bench-reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--ctx", type=int, default=512,
                        help="context for perplexity and KL divergence (default 512)")
    parser.add_argument("--chunks", type=int, help="at most this many chunks of the text")


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--threads", type=int, default=None,
                        help="CPU threads (default: the setting, else physical cores)")
    parser.add_argument("--llama-cpp-dir", help="a llama.cpp build folder to look in first")
    parser.add_argument("--no-repack", action="store_true",
                        help="keep weights as stored (llama.cpp --no-repack) in every run; a "
                             "tool that crashes is retried this way anyway")
    parser.add_argument("--cpu-only", action="store_true",
                        help="run on the CPU even where GPU backends and devices are present "
                             "(default: the setting; else each run is placed on the GPUs by "
                             "the memory model that makes the recommendation)")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


# --- shared plumbing --------------------------------------------------------------------------


def _tools(args: argparse.Namespace) -> LlamaTools:
    """The tools and the options every run starts with: ``-t`` and ``--no-repack`` over the
    settings (the stored tools-check finding is added as each job starts)."""
    # start-up: job placement loads only when a job runs
    from apex_gui.core.fit.job_placement import JobPlacer

    tools = LlamaTools.for_settings(load_settings(), args.llama_cpp_dir,
                                    threads=getattr(args, "threads", None),
                                    no_repack=getattr(args, "no_repack", False),
                                    cpu_only=getattr(args, "cpu_only", False))
    tools.placer = JobPlacer(tools)
    return tools


def _calibration_text(args: argparse.Namespace) -> Path:
    return combine_calibration([tool_path(p) for p in args.calibration] if args.calibration
                               else None)


def _eval_text(args: argparse.Namespace) -> Path:
    return tool_path(args.ppl) if args.ppl is not None else quick_eval_text()


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"ETA {seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"ETA {seconds // 60}m{seconds % 60:02d}s"


class TerminalProgress:
    """One redrawn status line on stderr when it is a terminal; plain step lines otherwise."""

    WIDTH = 24

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr  # looked up now: tests and callers swap sys.stderr
        self.quiet = quiet
        self.live = self.stream.isatty() and not quiet
        self._last_draw = 0.0
        self._drawn = False
        self._announced: set[str] = set()

    def step(self, key: str, job: ToolJob) -> None:
        self._announced.add(key)
        if not self.quiet:
            self._clear()
            print(f"> {key}: {job.title()}", file=self.stream, flush=True)

    def update(self, key: str, progress: Progress, eta: float | None) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and progress.fraction != 1.0:
            return
        self._last_draw = now
        fraction = progress.fraction
        if fraction is None:
            bar, percent = "." * self.WIDTH, "   "
        else:
            filled = int(fraction * self.WIDTH)
            bar, percent = "#" * filled + "-" * (self.WIDTH - filled), f"{fraction * 100:3.0f}%"
        line = f"  [{bar}] {percent} {progress.detail}  {_format_eta(eta)}"
        width = 120
        self.stream.write("\r" + line[:width].ljust(width))
        self.stream.flush()
        self._drawn = True

    def done(self, key: str, outcome: JobOutcome) -> None:
        if self.quiet:
            return
        if key not in self._announced:  # refused or skipped before it started: name it
            self.step(key, outcome.job)
        self._clear()
        mark = {"succeeded": "ok", "failed": "FAILED", "cancelled": "cancelled",
                "skipped": "skipped"}[outcome.status.value]
        print(f"  {mark} ({outcome.duration:.1f} s): {outcome.message}", file=self.stream,
              flush=True)

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 120 + "\r")
            self.stream.flush()
            self._drawn = False


#: Result keys worth a column in the table, in order, with their headings.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("output_bytes", "size"), ("quant_bpw", "BPW"), ("ppl", "PPL"), ("kld_mean", "KLD mean"),
    ("kld_max", "KLD max"), ("kld_p999", "KLD 99.9%"), ("kld_median", "KLD median"),
    ("same_top_p", "same top p %"), ("hellaswag", "HellaSwag %"), ("winogrande", "Winogrande %"),
    ("multiple_choice", "MC %"), ("calibration_ppl", "calib PPL"),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "output_bytes":
        return format_size(value)
    if isinstance(value, float):
        return f"{value:.6f}" if key.startswith("kld") else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def result_table(outcomes: dict[str, JobOutcome]) -> str:
    """A plain-text table: one row per step with its status and the results it has."""
    rows = []
    for key, outcome in outcomes.items():
        results = dict(outcome.results)
        for name, value in list(results.items()):  # speed: pp512, tg128 and the like
            if name[:2] in ("pp", "tg") and name[2:3].isdigit() and "_" not in name:
                results.setdefault(f"speed:{name}", value)
        rows.append((key, outcome.status.value, results))
    speed = sorted({k for _, _, r in rows for k in r if k.startswith("speed:")})
    columns = [(k, h) for k, h in TABLE_COLUMNS if any(k in r for _, _, r in rows)]
    columns += [(k, k.split(":", 1)[1] + " t/s") for k in speed]
    header = ["step", "status", *[h for _, h in columns]]
    body = [[key, status, *[_cell(k, r.get(k)) for k, _ in columns]] for key, status, r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _outcome_json(key: str, outcome: JobOutcome) -> dict[str, Any]:
    output = outcome.job.output()
    return {"step": key, "kind": outcome.job.kind, "status": outcome.status.value,
            "message": outcome.message, "exit_code": outcome.exit_code,
            "output": str(output) if output and outcome.succeeded else None,
            "results": outcome.results, "seconds": round(outcome.duration, 3),
            "run_id": outcome.run_id, "job": outcome.job.to_dict()}


def execute(pipeline: Pipeline, args: argparse.Namespace,
            notes: list[str] | None = None) -> int:
    """Run ``pipeline`` with terminal progress, print the table (or JSON), return the exit code."""
    try:
        store = RunStore()
        # Runs a killed CLI left 'running' are marked interrupted and their partial files
        # removed (unless a live run holds that output now).
        store.mark_interrupted()
    except RunStoreError as error:
        raise ValueError(str(error)) from None  # one line, exit code 2
    # --rpc: workers checked first (an unreachable one is named now, not after the load).
    tools = _tools(args)
    workers, probes = checked_workers(getattr(args, "rpc", None), tools)
    if tools.placer is not None:
        tools.placer.probes = tuple(probes)  # the workers' devices join the placement
    if workers:
        pipeline = pipeline.with_options(RunOptions(rpc_workers=tuple(workers)))
        notes = [*(notes or []), *(p.summary() for p in probes)]
    terminal = TerminalProgress(quiet=False)
    for note in notes or []:
        print(note, file=sys.stderr)
    stop = threading.Event()
    with stop_signals_cancel(stop):
        outcomes = run_pipeline(pipeline, tools, store, on_step=terminal.step,
                                on_progress=terminal.update, on_done=terminal.done, cancel=stop)
    if args.json:
        print(json.dumps([_outcome_json(k, o) for k, o in outcomes.items()], indent=2,
                         default=str))
    else:
        print(result_table(outcomes))
    if stop.is_set():
        print(f"apex-studio {getattr(args, 'command', '')}: stopped by a signal; no partial "
              "output was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if all(o.succeeded for o in outcomes.values()) else EXIT_FAILED


# --- imatrix ----------------------------------------------------------------------------------


def _imatrix_job(model: Path, args: argparse.Namespace, output: Path | None) -> ImatrixJob:
    calibration = _calibration_text(args)
    target = output or imatrix_cache_path(model, calibration, args.imatrix_ctx,
                                          args.imatrix_chunks)
    return ImatrixJob(model=model, calibration=calibration, output_path=target,
                      context=args.imatrix_ctx, chunks=args.imatrix_chunks)


def _check_calibration_args(args: argparse.Namespace) -> None:
    check_threads(args)
    int_in_range(args.imatrix_ctx, "--imatrix-ctx", 1, MAX_CONTEXT, "a context in tokens")
    int_in_range(args.imatrix_chunks, "--imatrix-chunks", 1, None, "a number of chunks")
    check_inputs((path, "--calibration", TEXT_CAP_BYTES) for path in args.calibration or ())


def _checked_model(path: str, what: str = "model") -> Path:
    """The model argument as a regular file whose header a tool will not abort on."""
    model = check_model_file(path, what)
    check_model_header(open_model(model))
    return model


def _sources(args: argparse.Namespace, model: Path) -> list[tuple[Path | str | None, str]]:
    """Every file a job reads: none of them may be its output."""
    found: list[tuple[Path | str | None, str]] = [(model, "source model")]
    found += [(path, "calibration text") for path in args.calibration or ()]
    imatrix = getattr(args, "imatrix", None)
    if imatrix and imatrix != "auto":
        found.append((imatrix, "importance matrix"))
    found.append((getattr(args, "tensor_type_file", None), "tensor-type file"))
    return found


def run_imatrix(args: argparse.Namespace) -> int:
    _check_calibration_args(args)
    model = _checked_model(args.model)
    output = check_writable_output(args.output, args.force, _sources(args, model))
    job = _imatrix_job(model, args, output)
    return execute(Pipeline.from_jobs([("imatrix", job)]), args)


# --- quantize ---------------------------------------------------------------------------------


def _auto_imatrix(model: Path, args: argparse.Namespace,
                  notes: list[str]) -> ImatrixJob | Path:
    """The cached importance matrix for this model and calibration, or the job making it."""
    job = _imatrix_job(model, args, None)
    if job.output_path.is_file():
        notes.append(f"using the cached importance matrix {job.output_path}")
        return job.output_path
    return job


def _profile_plan(model: ModelInfo | Path, profile_name: str) -> PrecisionPlan:
    """The plan of a profile for a model (opened here when given as a path)."""
    source = open_model(model) if isinstance(model, Path) else model
    return plan_from_profile(source, get_profile(profile_name))


def _quantize_job(plan: PrecisionPlan, output: Path, imatrix: Path | None) -> QuantizeJob:
    """The quantize job of a plan; ``imatrix`` is used when the plan wants one."""
    try:
        job = QuantizeJob.from_plan(plan, output,
                                    imatrix=imatrix if uses_imatrix(plan) else None)
    except OSError as error:  # the plan's tensor-type file goes to the data folder
        raise ValueError(f"cannot write the plan's tensor-type file in {data_dir() / 'plans'} "
                         f"({error.strerror or error}): free some space there or set "
                         "APEX_STUDIO_DATA_DIR to a writable folder") from None
    return job


def run_quantize(args: argparse.Namespace) -> int:
    _check_calibration_args(args)
    model = _checked_model(args.model, "source model")
    auto = args.imatrix == "auto"
    if args.imatrix and not auto:
        # Checked even when the profile needs none: a typo should not pass unnoticed.
        check_inputs([(args.imatrix, "--imatrix", None)])
    if args.tensor_type_file is not None:
        args.tensor_type_file = check_tensor_type_file(args.tensor_type_file,
                                                       "--tensor-type-file")
        check_base_type(args.base_type)
    output = check_writable_output(args.output, args.force, _sources(args, model))
    notes: list[str] = []
    given = tool_path(args.imatrix) if args.imatrix and not auto else None
    imatrix_step: ImatrixJob | None = None
    if args.profile:
        plan = _profile_plan(model, args.profile)
        wants = uses_imatrix(plan)
        imatrix_path = given
        if wants and not args.imatrix:
            # An I-profile without its importance matrix would be the plain profile under
            # the I- name (on a shallow model, with no IQ type the tool could refuse).
            raise ValueError(f"profile {args.profile} uses an importance matrix: give one with "
                             "--imatrix FILE, or --imatrix auto to compute it from the "
                             "calibration set (cached for later runs)")
        if auto and wants:
            found = _auto_imatrix(model, args, notes)
            imatrix_path = found.output_path if isinstance(found, ImatrixJob) else found
            imatrix_step = found if isinstance(found, ImatrixJob) else None
        elif auto:
            notes.append(f"profile {args.profile} needs no importance matrix; quantizing without")
        job = _quantize_job(plan, output, imatrix_path)
    else:
        imatrix_path = given
        if auto:
            found = _auto_imatrix(model, args, notes)
            imatrix_path = found.output_path if isinstance(found, ImatrixJob) else found
            imatrix_step = found if isinstance(found, ImatrixJob) else None
        job = QuantizeJob(source=model, output_path=output, base_type=args.base_type.upper(),
                          tensor_type_file=args.tensor_type_file, imatrix=imatrix_path)
    steps: list[tuple[str, ToolJob]] = [("imatrix", imatrix_step)] if imatrix_step else []
    steps.append(("quantize", job))
    return execute(Pipeline.from_jobs(steps), args, notes)


# --- eval -------------------------------------------------------------------------------------


def _evaluation_options(args: argparse.Namespace, default_reference: Path | None,
                        default_kld: bool) -> EvaluationOptions:
    reference = args.reference or default_reference
    kld = args.kld or (default_kld and reference is not None)
    wants_text = kld or args.ppl is not None or not (
        args.hellaswag or args.winogrande or args.mc or args.bench)
    if args.kld and reference is None:
        raise ValueError("--kld needs the full-precision model: give it with --reference F16.gguf")
    text = _eval_text(args) if wants_text else None
    return EvaluationOptions(
        reference=reference, text=text, context=args.ctx, chunks=args.chunks,
        kl_divergence=kld, perplexity=wants_text and not kld, hellaswag=args.hellaswag,
        winogrande=args.winogrande, multiple_choice=tuple(args.mc), tasks=args.tasks,
        bench=args.bench, bench_prompt=args.bench_prompt, bench_gen=args.bench_gen,
        bench_repetitions=args.bench_reps)


def _reference_step(options: EvaluationOptions) -> list[tuple[str, ToolJob]]:
    if not (options.kl_divergence and options.reference and options.text):
        return []
    job = ReferenceLogitsJob.cached(options.reference, options.text, options.context,
                                    options.chunks)
    return [] if job.output_path.is_file() else [("reference", job)]


def _check_eval_args(args: argparse.Namespace) -> None:
    check_threads(args)
    int_in_range(args.ctx, "--ctx", 1, MAX_CONTEXT, "a context in tokens")
    int_in_range(args.chunks, "--chunks", 1, None, "a number of chunks")
    int_in_range(args.tasks, "--tasks", 1, None, "a number of tasks")
    int_in_range(args.bench_reps, "--bench-reps", 1, 1000, "a number of repetitions")
    int_in_range(args.bench_prompt, "--bench-prompt", 0, MAX_CONTEXT, "a number of tokens")
    int_in_range(args.bench_gen, "--bench-gen", 0, MAX_CONTEXT, "a number of tokens")
    if args.bench and not args.bench_prompt and not args.bench_gen:
        raise ValueError("--bench-prompt 0 and --bench-gen 0 measure nothing; give either "
                         "a number of tokens")
    check_inputs([(args.ppl, "--ppl", TEXT_CAP_BYTES),
                  (args.hellaswag, "--hellaswag", TASK_CAP_BYTES),
                  (args.winogrande, "--winogrande", TASK_CAP_BYTES),
                  *[(path, "--mc", TASK_CAP_BYTES) for path in args.mc]])
    for kind, flag, path in (("hellaswag", "--hellaswag", args.hellaswag),
                             ("winogrande", "--winogrande", args.winogrande),
                             *[("multiple-choice", "--mc", path) for path in args.mc]):
        if path is not None:
            check_task_file(kind, path, flag)
    if args.reference is not None:  # opened: a split one with a shard missing is named now
        args.reference = _checked_model(args.reference, "--reference model")
    for name in ("hellaswag", "winogrande"):
        if getattr(args, name) is not None:
            setattr(args, name, tool_path(getattr(args, name)))
    args.mc = [tool_path(path) for path in args.mc]


def run_eval(args: argparse.Namespace) -> int:
    _check_eval_args(args)
    model = _checked_model(args.model)
    options = _evaluation_options(args, None, default_kld=True)
    steps = _reference_step(options)
    steps += evaluation_jobs(model, options, prefix=model.stem)
    return execute(Pipeline.from_jobs(steps), args)


# --- pipeline ---------------------------------------------------------------------------------


def _is_checkpoint_source(source: str) -> bool:
    """``hf://OWNER/NAME`` or a Hugging Face checkpoint folder (not a GGUF)."""
    return source.startswith("hf://") or Path(source).is_dir()


def run_pipeline_command(args: argparse.Namespace) -> int:
    if _is_checkpoint_source(args.model):
        return run_source_pipeline_command(args)

    _check_calibration_args(args)
    _check_eval_args(args)
    model = _checked_model(args.model, "source model")
    if args.imatrix and args.imatrix != "auto":
        check_inputs([(args.imatrix, "--imatrix", None)])
    keys = [k.strip() for k in args.profiles.split(",") if k.strip()]
    if not keys:
        raise ValueError("--profiles needs at least one profile key, e.g. quality,i-quality")
    folder = args.output_dir or model.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output-dir {folder} is a file; give a folder")
    source = open_model(model)  # read once for every profile
    plans = tuple(_profile_plan(source, key) for key in keys)
    for plan in plans:  # every output refused up front (exists without --force, is a source)
        check_writable_output(folder / output_name(source, plan.profile.label), args.force,
                              _sources(args, model), flag=f"{plan.profile.key}: the quant")
    evaluate = args.eval or args.kld or args.ppl or args.hellaswag or args.winogrande \
        or args.mc or args.bench
    options = _evaluation_options(args, model, default_kld=True) if evaluate else None
    given = tool_path(args.imatrix) if args.imatrix and args.imatrix != "auto" else None
    request = RunRequest(
        model=source, plans=plans, output_dir=folder,
        calibration_files=tuple(tool_path(p) for p in args.calibration or ()),
        imatrix_context=args.imatrix_ctx, imatrix_chunks=args.imatrix_chunks,
        imatrix_file=given,
        eval_text=options.text if options else None,
        kl_divergence=bool(options and options.kl_divergence),
        perplexity=bool(options and options.perplexity),
        reference=options.reference if options else None,
        eval_context=args.ctx, eval_chunks=args.chunks,
        hellaswag=options.hellaswag if options else None,
        winogrande=options.winogrande if options else None,
        multiple_choice=options.multiple_choice if options else (),
        tasks=args.tasks, bench=bool(options and options.bench),
        bench_prompt=args.bench_prompt, bench_gen=args.bench_gen,
        bench_repetitions=args.bench_reps)
    pipeline = pipeline_for(request)
    notes = []
    if request.needs_imatrix() and given is None and "imatrix" not in {s.key for s in pipeline.steps}:
        imatrix = next(s.job.imatrix for s in pipeline.steps if getattr(s.job, "imatrix", None))
        notes.append(f"using the cached importance matrix {imatrix}")
    return execute(pipeline, args, notes)
