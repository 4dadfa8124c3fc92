"""Run jobs headless: subprocess, merged output read as it comes, temp output and rename.

The pieces that do not depend on how the process is started (:func:`prepare_run`,
:class:`JobMonitor`, :func:`conclude_run`) are shared with the Qt queue in
:mod:`apex_gui.qt.job_queue`, so a job is checked, parsed, judged, cleaned up and recorded the same
way in the window and on the command line.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from apex_gui.core.files.outputs import (OutputError, OutputLock, check_complete,
                            claim_output, gguf_extent_problem, move_into_place, temporary_name)
from apex_gui.core.jobs.device_placement import parse_device_use
from apex_gui.core.jobs.parsers import rpc_failure_message
from apex_gui.core.jobs.crashes import crash_retry_for, killed_message
from apex_gui.core.jobs.child_process import (
    SIGKILL, SIGTERM, cpu_seconds, own_group_options, signal_group,
)
from apex_gui.core.jobs.monitor import CancelFlag, JobMonitor, RunLimits, RunWatch
from apex_gui.core.jobs.pipeline import Pipeline
from apex_gui.core.jobs.progress import Progress
from apex_gui.core.jobs.run_store import RunStore, RunStoreError
from apex_gui.core.jobs.specs import JobError, ToolJob
from apex_gui.core.jobs.tools import LlamaTools, ToolNotFoundError
from apex_gui.core.units import format_size

#: Seconds between terminate() and kill() when a job is cancelled.
TERMINATE_TIMEOUT_S = 5.0
#: Seconds the output may stay open after the tool exited before what holds it is killed.
ORPHAN_OUTPUT_GRACE_S = 2.0
#: Progress callbacks at most this often (the output can be thousands of lines a second).
PROGRESS_INTERVAL_S = 0.1
#: Runs of a job whose result lines llama.cpp's logger dropped at exit (about one run in five
#: on tiny models, rarer on big ones): four attempts leave well under 1% unlucky.
MAX_ATTEMPTS = 4
#: Free space below this in an output's folder, right after a failed or incomplete write,
#: means the disk filled up (the tools write in blocks of a few MiB at most).
DISK_FULL_MARGIN_BYTES = 16 * 2**20


class JobStatus(str, Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a pipeline step whose dependency failed


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, with everything worth showing or storing."""

    job: ToolJob
    status: JobStatus
    message: str
    exit_code: int | None = None
    results: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    started: float = 0.0
    ended: float = 0.0
    run_id: int | None = None
    output_lost: bool = False  # worth running again (see Verdict.output_lost)
    attempts: int = 1
    signal_number: int | None = None  # the tool died from this signal

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass(frozen=True)
class PreparedRun:
    """A checked job, ready to start."""

    job: ToolJob
    argv: list[str]
    env: dict[str, str]
    run_id: int | None
    started: float
    #: The unique temporary name the tool writes (None: the job writes no file).
    partial: Path | None = None
    #: The lock on the output's final name, held from prepare_run to conclude_run.
    lock: OutputLock | None = field(default=None, compare=False, repr=False)


def prepare_run(job: ToolJob, tools: LlamaTools, store: RunStore | None = None,
                produced: Iterable[Path] = (), pipeline: str | None = None) -> PreparedRun:
    """Check the job, give it the tools' standing options, find its tool, lock its output,
    clear what dead runs left for it, record the run as started.

    The tool writes under a name unique to this run (the job's ``OUT.partial`` in its
    arguments is swapped for it), and the lock on the final name is held until
    :func:`conclude_run`: two runs writing one output cannot mix their files.
    Raises :class:`JobError` or :class:`ToolNotFoundError` with a message naming the fix.
    """
    job.check(produced, tools)
    # The one place a job meets the standing options (settings, flags, the stored tools
    # check): the window, the command line and the probes all start jobs through here.
    job = job.with_options(job.options.over(tools.run_options().for_tool(job.tool)))
    if tools.placer is not None and job.options.placement is None:
        job = tools.placer(job)  # on the devices, as the recommendation's memory model says
    argv = job.argv(tools)
    output, partial, lock = job.output(), job.partial_output(), None
    if output is not None and partial is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            lock = claim_output(output)  # also removes partial files of dead runs
        except (OSError, OutputError) as error:
            raise JobError(f"not started: {error}") from None
        unique = temporary_name(output)
        argv = [str(unique) if arg == str(partial) else arg for arg in argv]
        partial = unique
    run_id = None
    if store is not None:
        try:
            run_id = store.start(job.kind, job.title(), job.to_dict(), argv,
                                 str(output) if output else None, pipeline)
        except RunStoreError as error:
            if lock is not None:
                lock.release()
            # Not started: a run that cannot be recorded could not be compared later.
            raise JobError(f"not started: {error}") from None
    return PreparedRun(job, argv, job.env(), run_id, time.time(), partial, lock)


def _disk_full(folder: Path) -> str | None:
    """A message when ``folder``'s disk has (almost) no space left, else None."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= DISK_FULL_MARGIN_BYTES:
        return None
    return (f"the disk holding {folder} is full ({format_size(free)} free): free some space "
            "or choose another output folder, then run it again")


def conclude_run(prepared: PreparedRun, monitor: JobMonitor, exit_code: int | None, *,
                 signal_number: int | None = None, crashed: bool = False,
                 cancelled: bool = False, store: RunStore | None = None,
                 start_error: str | None = None, retry_note: str | None = None,
                 stopped: str | None = None, last_attempt: bool = False) -> JobOutcome:
    """Judge a finished process; keep its output (rename) or delete the partial file; record.

    ``signal_number``/``crashed``: the process died from a signal (number known or not).
    ``stopped``: why APEX Studio stopped it (a time limit, a stalled RPC worker).
    ``last_attempt``: no run follows when the result lines are lost: the verdict's fallback
    (figures printed before them) stands.
    ``retry_note``: why this run is a retry (a crash before it); the message and the stored
    results say so.
    """
    job = prepared.job
    monitor.finish()
    log = monitor.log
    tool = Path(prepared.argv[0]).name if prepared.argv else job.tool
    results: dict[str, Any] = {}
    output_lost = False
    if start_error is not None:
        status, message = JobStatus.FAILED, f"{tool} could not be started: {start_error}"
    elif cancelled:
        status, message = JobStatus.CANCELLED, "cancelled; no output was kept"
    elif stopped is not None:
        status, message = JobStatus.FAILED, stopped
    elif signal_number is not None or crashed:
        # A lost RPC worker aborts the tool: say which worker rather than "the tool crashed".
        status, message = JobStatus.FAILED, (
            rpc_failure_message(log, job.options.rpc_workers, signal_number)
            or killed_message(tool, signal_number, log))
    else:
        verdict = job.verdict(exit_code if exit_code is not None else -1, log)
        if verdict.output_lost and last_attempt and verdict.fallback is not None:
            verdict = verdict.fallback
        status = JobStatus.SUCCEEDED if verdict.succeeded else JobStatus.FAILED
        message, results = verdict.message, dict(verdict.results)
        output_lost = verdict.output_lost
    output, partial = job.output(), prepared.partial or job.partial_output()
    if status is JobStatus.SUCCEEDED and output is not None and partial is not None:
        problem, seen = check_complete(partial, lambda path: _output_problem(job, path))
        if problem is None and seen is not None:
            # Renamed only if it is still the file that was checked (no other writer).
            problem = move_into_place(partial, output, seen)
        if problem is None:
            # What the file records wins over what the log said (the log may lose lines).
            results.update(_file_results(job, output))
        else:
            # The tools do not check their last writes: on a full disk they exit 0 with a
            # truncated file, which must never be renamed into place.
            status, results = JobStatus.FAILED, {}
            message = _incomplete_output_message(tool, output, partial, problem)
    elif status is JobStatus.FAILED and exit_code == 0 and output is not None \
            and partial is not None and partial.is_file():
        # The log lost its result lines, but the file the tool wrote is the better witness:
        # a truncated one means the write failed (a full disk), which no rerun mends.
        problem = _output_problem(job, partial)
        if problem is not None:
            output_lost = False
            message = _incomplete_output_message(tool, output, partial, problem)
    elif status is JobStatus.FAILED and exit_code is not None and exit_code > 0 \
            and output is not None and partial is not None and partial.is_file():
        # llama-quantize says only "iostream error" when a write fails: name the cause.
        full = _disk_full(partial.parent)  # measured before the partial file is deleted
        if full:
            message = (f"{tool} could not finish writing {output.name}: {full}; no output "
                       f"was kept (the tool said: {message})")
    if status is not JobStatus.SUCCEEDED and partial is not None:
        partial.unlink(missing_ok=True)
    if retry_note is not None:
        message = f"{message} ({retry_note})"
        results["crash_retry"] = retry_note
    if job.options.placement is not None:
        # Where it ran, as the tool itself reports it (the plan is in the job's description).
        results.update(parse_device_use(log).to_results())
    ended = time.time()
    if store is not None and prepared.run_id is not None:
        try:
            store.finish(prepared.run_id, status.value, exit_code, message, log, results)
        except RunStoreError as error:
            message += f" (not recorded: {error})"
    if prepared.lock is not None:
        prepared.lock.release()
    return JobOutcome(job, status, message, exit_code, results, log, prepared.started, ended,
                      prepared.run_id, output_lost, signal_number=signal_number)


def _incomplete_output_message(tool: str, output: Path, partial: Path, problem: str) -> str:
    cause = _disk_full(partial.parent) or (
        "the write failed: check that the folder is writable and the disk healthy")
    return (f"{tool} exited normally but its output {output.name} is incomplete ({problem}); "
            f"{cause}; no output was kept")


def _file_results(job: ToolJob, output: Path) -> dict[str, Any]:
    """The output's size and the results the job reads from it (none if it is unreadable:
    it was checked a moment ago, so that is another process's doing)."""
    try:
        return {"output_bytes": output.stat().st_size, **job.output_results(output)}
    except (OSError, ValueError):  # GGUFError is a ValueError
        return {}


def _output_problem(job: ToolJob, written: Path) -> str | None:
    """The job's own completeness check, then (for a GGUF) no bytes past what its header
    describes: a file another writer appended to must not pass as complete."""
    problem = job.output_problem(written)
    if problem is None:
        try:
            with open(written, "rb") as handle:
                is_gguf = handle.read(4) == b"GGUF"
        except OSError as error:
            return f"cannot be read back ({error.strerror or error})"
        if is_gguf:
            problem = gguf_extent_problem(written)
    return problem


def failed_before_start(job: ToolJob, message: str, store: RunStore | None = None,
                        status: JobStatus = JobStatus.FAILED,
                        pipeline: str | None = None) -> JobOutcome:
    """An outcome for a job that never started (check failed, tool missing, dependency failed)."""
    now = time.time()
    run_id = None
    if store is not None:
        output = job.output()
        try:
            run_id = store.start(job.kind, job.title(), job.to_dict(), [],
                                 str(output) if output else None, pipeline)
            store.finish(run_id, status.value, None, message, "", {})
        except RunStoreError as error:
            if str(error) not in message:  # prepare_run's own refusal already names it
                message += f" (not recorded: {error})"
    return JobOutcome(job, status, message, None, {}, "", now, now, run_id)


ProgressCallback = Callable[[Progress, float | None], None]
OutputCallback = Callable[[str], None]


def _pump(stream: Any, chunks: queue.Queue[bytes | None]) -> None:
    """Reader thread: raw chunks as they come (not lines: chunk values have no newline)."""
    try:
        fd = stream.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.put(data)
    finally:
        chunks.put(None)


def run_job(job: ToolJob, tools: LlamaTools | None = None, store: RunStore | None = None, *,
            on_progress: ProgressCallback | None = None, on_output: OutputCallback | None = None,
            cancel: CancelFlag | None = None, produced: Iterable[Path] = (),
            pipeline: str | None = None, terminate_timeout: float = TERMINATE_TIMEOUT_S,
            max_attempts: int = MAX_ATTEMPTS, crash_retry: bool = True,
            limits: RunLimits = RunLimits()) -> JobOutcome:
    """Run one job to the end and return its outcome; never raises for a failed job.

    ``cancel``: set it (from another thread) to stop the job politely: terminate, then kill
    after ``terminate_timeout``. A KeyboardInterrupt does the same and is re-raised. A run
    whose result lines were lost is repeated, up to ``max_attempts`` runs in all. A tool that
    crashes is run again without the crashing code path (:func:`crash_retry_for`) unless
    ``crash_retry`` is off; ``tools.run_options()`` are the options every run starts with.
    ``limits``: each run's time limit and RPC stall watch (a run past them is stopped and
    fails with the reason).
    """
    tools = tools or LlamaTools()
    produced = list(produced)
    attempt = 1
    note: str | None = None
    while True:
        outcome = _run_once(job, tools, store, on_progress, on_output, cancel, produced,
                            pipeline, terminate_timeout, limits, note,
                            last_attempt=attempt >= max_attempts)
        retry = crash_retry_for(outcome, tools) if crash_retry else None
        if retry is not None:
            job, note = retry
            if on_output is not None:
                on_output(f"\n[APEX Studio] {note}\n")
            continue
        if not outcome.output_lost or attempt >= max_attempts:
            return replace(outcome, attempts=attempt)
        attempt += 1
        if on_output is not None:
            on_output(f"\n[APEX Studio] the tool's result lines were lost at exit; running it "
                      f"again (attempt {attempt} of {max_attempts})\n")


def _run_once(job: ToolJob, tools: LlamaTools, store: RunStore | None,
              on_progress: ProgressCallback | None, on_output: OutputCallback | None,
              cancel: CancelFlag | None, produced: list[Path], pipeline: str | None,
              terminate_timeout: float, limits: RunLimits,
              retry_note: str | None = None, last_attempt: bool = False) -> JobOutcome:
    try:
        prepared = prepare_run(job, tools, store, produced, pipeline)
    except (JobError, ToolNotFoundError) as error:
        return failed_before_start(job, str(error), store, pipeline=pipeline)
    job = prepared.job
    monitor = JobMonitor(job)
    watch = RunWatch(job, limits)
    # Bounded: a tool printing faster than it is read waits on its pipe, not on our memory.
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
    cancelled = False
    stopped: str | None = None
    interrupted: BaseException | None = None
    last_report = 0.0
    exited_at: float | None = None
    try:
        # Its own process group (a wrapper script's children get the signals too); SIGKILL
        # if this process dies (a SIGKILLed CLI, an out-of-memory kill): an orphan would
        # write on to a partial file no one renames or deletes.
        process = subprocess.Popen(prepared.argv, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=prepared.env, bufsize=0, **own_group_options())
    except OSError as error:
        return conclude_run(prepared, monitor, None, store=store, start_error=str(error))
    # From here on an interruption (Ctrl-C) must stop the child and remove its partial
    # output, however early it comes.
    reader = threading.Thread(target=_pump, args=(process.stdout, chunks),
                              name=f"apex-job-output-{process.pid}")
    try:
        reader.start()
        while True:
            if cancel is not None and cancel.is_set() and not cancelled:
                cancelled = True
                _stop(process, terminate_timeout)
            if stopped is None and not cancelled:
                stopped = watch.reason_to_stop(lambda: cpu_seconds(process.pid))
                if stopped is not None:
                    _stop(process, terminate_timeout)
            try:
                data = chunks.get(timeout=0.1)
            except queue.Empty:
                # The tool is gone but its output is still open: something it started holds
                # it (a wrapper script's child). That group is ended, or the run never would.
                if process.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at >= ORPHAN_OUTPUT_GRACE_S:
                        signal_group(process.pid, SIGKILL)
                continue
            if data is None:
                break
            watch.output()
            text, changed = monitor.feed_bytes(data)
            if on_output is not None and text:
                on_output(text)
            now = time.monotonic()
            if changed and on_progress is not None and now - last_report >= PROGRESS_INTERVAL_S:
                last_report = now
                on_progress(monitor.progress, monitor.eta_seconds())
    except BaseException as error:  # KeyboardInterrupt: stop the child, clean up, re-raise
        interrupted, cancelled = error, True
        _stop(process, terminate_timeout)
        if reader.ident is not None:
            while chunks.get() is not None:  # drain so the reader thread ends
                pass
    finally:
        exit_code = process.wait()
        if reader.ident is not None:
            reader.join()
        process.stdout.close()  # type: ignore[union-attr]
    if on_progress is not None and not cancelled:
        on_progress(monitor.progress, monitor.eta_seconds())
    signal_number = -exit_code if exit_code < 0 and not cancelled and stopped is None else None
    outcome = conclude_run(prepared, monitor, exit_code, signal_number=signal_number,
                           cancelled=cancelled, store=store, retry_note=retry_note,
                           stopped=stopped, last_attempt=last_attempt)
    if interrupted is not None:
        raise interrupted
    return outcome


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate the tool's process group politely, kill it if the tool does not exit within
    ``timeout``."""
    if process.poll() is not None:
        signal_group(process.pid, SIGKILL)  # what it started and left behind
        return
    if not signal_group(process.pid, SIGTERM):
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if not signal_group(process.pid, SIGKILL):
            process.kill()
    else:
        signal_group(process.pid, SIGKILL)


StepCallback = Callable[[str, ToolJob], None]
StepDoneCallback = Callable[[str, JobOutcome], None]
StepProgressCallback = Callable[[str, Progress, float | None], None]


def run_pipeline(pipeline: Pipeline, tools: LlamaTools | None = None,
                 store: RunStore | None = None, *, on_step: StepCallback | None = None,
                 on_progress: StepProgressCallback | None = None,
                 on_done: StepDoneCallback | None = None,
                 cancel: CancelFlag | None = None,
                 limits: RunLimits = RunLimits()) -> dict[str, JobOutcome]:
    """Run every step in order; a step whose dependency did not succeed is skipped with the
    reason. Problems known before anything runs (a too-short text, a missing imatrix) fail
    their step at once, so an hour of quantizing is not spent before a doomed evaluation."""
    tools = tools or LlamaTools()
    pipeline_id = uuid.uuid4().hex[:12]
    early = dict(pipeline.check(tools))
    outcomes: dict[str, JobOutcome] = {}
    for step in pipeline.steps:
        blocked = [k for k in step.after if not outcomes[k].succeeded]
        if cancel is not None and cancel.is_set():
            outcome = failed_before_start(step.job, "not run: the pipeline was cancelled",
                                          store, JobStatus.CANCELLED, pipeline_id)
        elif blocked:
            first = outcomes[blocked[0]]
            outcome = failed_before_start(
                step.job, f"not run: step {blocked[0]!r} {first.status.value} ({first.message})",
                store, JobStatus.SKIPPED, pipeline_id)
        elif step.key in early:
            outcome = failed_before_start(step.job, early[step.key], store, pipeline=pipeline_id)
        else:
            if on_step is not None:
                on_step(step.key, step.job)
            report = (lambda p, eta, key=step.key: on_progress(key, p, eta)) if on_progress else None
            outcome = run_job(step.job, tools, store, on_progress=report, cancel=cancel,
                              produced=pipeline.produced_before(step.key), pipeline=pipeline_id,
                              limits=limits)
        outcomes[step.key] = outcome
        if on_done is not None:
            on_done(step.key, outcome)
    return outcomes
