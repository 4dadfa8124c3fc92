"""``apex-studio pipeline hf://OWNER/NAME | CHECKPOINT_DIR``: download, convert, quantize,
evaluate, card, upload, resumable (see :mod:`apex_gui.core.workflow.source_pipeline`).

Run it again after a kill or a failure and it continues from the first unfinished step.
Exit codes as for every pipeline: 0 all done, 1 a step failed, 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from apex_gui.commands.arguments import tool_path
from apex_gui.core.jobs.run_store import RunStore, RunStoreError
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.settings import load_settings
from apex_gui.core.workflow.source_pipeline import (SourcePipelineRequest, StepEvents,
                                                    StepReport, model_name,
                                                    run_source_pipeline, succeeded)

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@contextlib.contextmanager
def stop_signals_cancel(stop: threading.Event) -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGINT (``kill``, a closed terminal, Ctrl-C) cancel the run: the
    runner stops the tool politely and deletes its partial output, where Python's default
    would exit at once and leave the tool running on, orphaned, with a ``.partial`` file
    behind. The handler only sets ``stop``: an exception raised at an arbitrary point could
    land inside Popen, or inside the output queue's lock (a KeyboardInterrupt there hung the
    command with a tool printing without end). A SIGINT ignored at start stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; callers there handle their own
        return
    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
              if s is not None]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        wanted.append(signal.SIGINT)
    previous = {s: signal.signal(s, lambda number, frame: stop.set()) for s in wanted}
    try:
        yield
    finally:
        for number, handler in previous.items():
            # None: the previous handler was not set from Python; the default is what it was.
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def add_source_pipeline_args(parser: argparse.ArgumentParser) -> None:
    """Options that only a checkpoint source (hf:// or a folder) uses."""
    parser.add_argument("--outtype", choices=("bf16", "f16"),
                        help="the converted model's type (default: BF16 for a BF16 "
                             "checkpoint, else F16)")
    parser.add_argument("--pre-tokenizer", default="", metavar="NAME",
                        help="for a tokenizer this llama.cpp's converter does not know yet: "
                             "the llama.cpp pre-tokenizer it uses (e.g. qwen2)")
    parser.add_argument("--publish", metavar="OWNER/REPO",
                        help="upload the quants and the model card to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create --publish as private")


class PrintedEvents(StepEvents):
    """Step lines on stderr (a redrawn progress line on a terminal)."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self._last = 0.0

    def started(self, key: str, title: str) -> None:
        print(f"> {key}: {title}", file=sys.stderr, flush=True)

    def progress(self, key: str, fraction: float | None, detail: str) -> None:
        now = time.monotonic()
        if not self.live or now - self._last < 0.2:
            return
        self._last = now
        percent = f"{fraction * 100:3.0f}% " if fraction is not None else ""
        sys.stderr.write(f"\r  {percent}{detail}"[:120].ljust(120))
        sys.stderr.flush()

    def finished(self, report: StepReport) -> None:
        if self.live:
            sys.stderr.write("\r" + " " * 120 + "\r")
        mark = {"done": "ok", "reused": "already done", "failed": "FAILED"}.get(
            report.status, report.status)
        print(f"  {mark}: {report.message}", file=sys.stderr, flush=True)


def _token() -> str | None:
    # start-up: huggingface_hub loads only when a token is looked up
    from huggingface_hub import get_token

    return get_token()


def source_request(args: argparse.Namespace) -> SourcePipelineRequest:
    """The request from parsed ``pipeline`` arguments (validated by the core)."""
    keys = tuple(k.strip() for k in args.profiles.split(",") if k.strip())
    source = args.model if args.model.startswith("hf://") else str(Path(args.model).resolve())
    work_dir = args.output_dir or (Path.cwd() / f"{model_name(source)}-APEX")
    evaluate = args.eval or args.kld or args.ppl is not None
    return SourcePipelineRequest(
        source=source, work_dir=Path(work_dir).resolve(), profiles=keys,
        output_type=args.outtype, pre_tokenizer=args.pre_tokenizer,
        kl_divergence=evaluate and args.ppl is None or args.kld,
        perplexity=args.ppl is not None and not args.kld,
        eval_text=tool_path(args.ppl) if args.ppl is not None else None,
        eval_context=args.ctx, eval_chunks=args.chunks,
        calibration_files=tuple(tool_path(p) for p in args.calibration or ()),
        imatrix_context=args.imatrix_ctx, imatrix_chunks=args.imatrix_chunks,
        publish_repo=args.publish, private=args.private,
        token=_token() if args.source_needs_token else None)


def run_source_pipeline_command(args: argparse.Namespace) -> int:
    unsupported = [flag for flag, value in (("--hellaswag", args.hellaswag),
                                            ("--winogrande", args.winogrande),
                                            ("--mc", args.mc), ("--bench", args.bench),
                                            ("--rpc", getattr(args, "rpc", None)),
                                            ("--reference", args.reference)) if value]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not available when the source is a "
                         "checkpoint; run `apex-studio pipeline` on the converted GGUF for them")
    args.source_needs_token = args.model.startswith("hf://") or bool(args.publish)
    request = source_request(args)
    try:
        store = RunStore()
        store.mark_interrupted()
    except RunStoreError as error:
        raise ValueError(str(error)) from None
    tools = LlamaTools.for_settings(load_settings(), args.llama_cpp_dir, threads=args.threads,
                                    no_repack=args.no_repack)
    stop = threading.Event()
    with stop_signals_cancel(stop):
        reports = run_source_pipeline(request, tools, store, PrintedEvents(), stop)
    if args.json:
        print(json.dumps([{"step": r.key, "status": r.status, "message": r.message,
                           "results": r.results, "output": str(r.output) if r.output else None}
                          for r in reports.values()], indent=2, default=str))
    else:
        for report in reports.values():
            print(f"{report.key:28} {report.status:9} {report.message}")
        print(f"work folder: {request.work_dir}")
    if stop.is_set():
        print("apex-studio pipeline: stopped by a signal; run the same command again to "
              "continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if succeeded(reports) else EXIT_FAILED
