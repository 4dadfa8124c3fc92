"""The Qt job queue: runs core jobs one at a time in a QProcess, with signals for the views.

The queue owns the process (merged channels, output decoded incrementally as UTF-8 with
replacement), reports per-job progress, ETA and output, and ends each job in one done-handler
shared by ``finished`` and ``errorOccurred``. Checking, judging, the temporary-output rename
and the run history are the core runner's (:mod:`apex_gui.core.jobs.runner`), so a job behaves the
same here as on the command line. Jobs run one at a time: each llama.cpp tool already uses
every core, and two at once would only split them.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PySide6.QtCore import (QCoreApplication, QEvent, QObject, QProcess, QProcessEnvironment,
                            QTimer, Signal)

from apex_gui.core.jobs.pipeline import Pipeline
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import (
    MAX_ATTEMPTS, PROGRESS_INTERVAL_S, TERMINATE_TIMEOUT_S, JobMonitor, JobOutcome, JobStatus,
    PreparedRun, conclude_run, crash_retry_for, failed_before_start, prepare_run,
)
from apex_gui.core.jobs.specs import JobError, ToolJob
from apex_gui.core.jobs.tools import LlamaTools, ToolNotFoundError


@dataclass
class _Entry:
    job_id: int
    job: ToolJob
    after: tuple[int, ...]
    pipeline: str | None = None
    state: str = "pending"  # pending, running, done
    outcome: JobOutcome | None = None
    cancel_requested: bool = False
    attempts: int = 0
    produced: list = field(default_factory=list)
    retry_note: str | None = None  # why this run repeats one that crashed


def dies_with_this_process(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Program and arguments that start ``argv`` so the tool dies when this process does.

    QProcess cannot set PR_SET_PDEATHSIG in the child from Python; util-linux's ``setpriv``
    (on every Debian/Ubuntu system) sets it and then executes the tool in the same process,
    so a window that is killed leaves no llama.cpp tool running on. Elsewhere: as given.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return argv[0], list(argv[1:])
    return setpriv, ["--pdeathsig", "KILL", "--", *argv]


class JobQueue(QObject):
    """Runs jobs in order, honouring dependencies; a failed job skips its dependants."""

    #: job id
    jobStarted = Signal(int)
    #: job id, :class:`Progress`, ETA in seconds or None
    jobProgress = Signal(int, object, object)
    #: job id, decoded output text (any length, not necessarily whole lines)
    jobOutput = Signal(int, str)
    #: job id, :class:`JobOutcome` (status, exit code, message, results)
    jobFinished = Signal(int, object)
    #: number of jobs that did not succeed since the queue was last idle
    allFinished = Signal(int)

    def __init__(self, tools: LlamaTools | None = None, store: RunStore | None = None,
                 parent: QObject | None = None,
                 terminate_timeout_s: float = TERMINATE_TIMEOUT_S) -> None:
        super().__init__(parent)
        self.tools = tools or LlamaTools()
        self.store = store
        self._entries: dict[int, _Entry] = {}
        self._next_id = 1
        self._current: _Entry | None = None
        self._process: QProcess | None = None
        self._prepared: PreparedRun | None = None
        self._monitor: JobMonitor | None = None
        self._last_progress = 0.0
        self._failures_since_idle = 0
        self._finished_since_idle = 0
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.setInterval(int(terminate_timeout_s * 1000))
        self._kill_timer.timeout.connect(self._kill_current)
        self._schedule = QTimer(self)
        self._schedule.setSingleShot(True)
        self._schedule.setInterval(0)
        self._schedule.timeout.connect(self._start_next)

    # --- adding and inspecting ---------------------------------------------------------------
    def add(self, job: ToolJob, after: Sequence[int] = (), pipeline: str | None = None) -> int:
        """Queue ``job`` to run after the jobs ``after`` succeeded; returns its id."""
        unknown = [a for a in after if a not in self._entries]
        if unknown:
            raise KeyError(f"job ids {unknown} are not in this queue")
        job_id = self._next_id
        self._next_id += 1
        self._entries[job_id] = _Entry(job_id, job, tuple(after), pipeline)
        self._schedule.start()
        return job_id

    def add_pipeline(self, pipeline: Pipeline) -> dict[str, int]:
        """Queue every step; returns step key -> job id."""
        ids: dict[str, int] = {}
        name = f"pipeline-{time.time_ns()}"
        for step in pipeline.steps:
            ids[step.key] = self.add(step.job, [ids[k] for k in step.after], name)
            self._entries[ids[step.key]].produced = pipeline.produced_before(step.key)
        return ids

    def outcome(self, job_id: int) -> JobOutcome | None:
        return self._entries[job_id].outcome

    def job(self, job_id: int) -> ToolJob:
        return self._entries[job_id].job

    def is_busy(self) -> bool:
        return self._current is not None or any(e.state == "pending"
                                                for e in self._entries.values())

    def running_job_id(self) -> int | None:
        return self._current.job_id if self._current else None

    # --- cancelling --------------------------------------------------------------------------
    def cancel(self, job_id: int) -> None:
        """Cancel a pending job at once; ask a running one to stop (terminate, later kill)."""
        entry = self._entries[job_id]
        if entry.state == "pending":
            entry.cancel_requested = True
            self._finish(entry, failed_before_start(entry.job, "cancelled before it started",
                                                    self.store, JobStatus.CANCELLED,
                                                    entry.pipeline))
            self._schedule.start()
        elif entry.state == "running" and not entry.cancel_requested:
            entry.cancel_requested = True
            if self._process is not None and \
                    self._process.state() != QProcess.ProcessState.NotRunning:
                self._process.terminate()
                self._kill_timer.start()

    def cancel_all(self) -> None:
        for job_id, entry in list(self._entries.items()):
            if entry.state == "pending":
                self.cancel(job_id)
        if self._current is not None:
            self.cancel(self._current.job_id)

    def shutdown(self, timeout_ms: int = 10_000) -> None:
        """Cancel everything and wait for the running process (call before quitting)."""
        self.cancel_all()
        process = self._process
        if process is not None and process.state() != QProcess.ProcessState.NotRunning:
            if not process.waitForFinished(timeout_ms):
                process.kill()
                process.waitForFinished(timeout_ms)
            # The done-handler ran inside waitForFinished and scheduled the process's
            # deletion; carry it out now, while this queue and the Python callables connected
            # to the process still exist. Left to a later event loop, it ran after they were
            # garbage-collected and crashed the interpreter (segfault).
            QCoreApplication.sendPostedEvents(process, QEvent.Type.DeferredDelete)
        self._schedule.stop()

    # --- running -----------------------------------------------------------------------------
    def _start_next(self) -> None:
        if self._current is not None:
            return
        for entry in self._entries.values():
            if entry.state != "pending":
                continue
            blocked = [a for a in entry.after if self._entries[a].state != "done"]
            if blocked:
                continue  # waits for a job still pending or running
            failed = [a for a in entry.after if not self._entries[a].outcome.succeeded]  # type: ignore[union-attr]
            if failed:
                first = self._entries[failed[0]]
                assert first.outcome is not None
                self._finish(entry, failed_before_start(
                    entry.job, f"not run: {first.job.title()!r} {first.outcome.status.value} "
                               f"({first.outcome.message})", self.store, JobStatus.SKIPPED,
                    entry.pipeline))
                continue
            self._launch(entry)
            return
        if not self.is_busy() and self._finished_since_idle:
            failures = self._failures_since_idle
            self._failures_since_idle = self._finished_since_idle = 0
            self.allFinished.emit(failures)

    def _launch(self, entry: _Entry) -> None:
        try:
            prepared = prepare_run(entry.job, self.tools, self.store, entry.produced,
                                   entry.pipeline)
        except (JobError, ToolNotFoundError) as error:
            self._finish(entry, failed_before_start(entry.job, str(error), self.store,
                                                    pipeline=entry.pipeline))
            self._schedule.start()
            return
        entry.job = prepared.job  # with the tools' standing options, as it runs
        entry.state = "running"
        entry.attempts += 1
        self._current, self._prepared = entry, prepared
        self._monitor = JobMonitor(entry.job)
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        environment = QProcessEnvironment()
        for key, value in prepared.env.items():
            environment.insert(key, value)
        process.setProcessEnvironment(environment)
        program, arguments = dies_with_this_process(prepared.argv)
        process.setProgram(program)
        process.setArguments(arguments)
        process.readyReadStandardOutput.connect(lambda p=process: self._read_output(p))
        # One done-handler for both: a crash emits errorOccurred then finished, a failed
        # start only errorOccurred; the handler acts once, when the process is not running.
        process.finished.connect(lambda *_, p=process: self._on_done(p))
        process.errorOccurred.connect(lambda *_, p=process: self._on_done(p))
        self._process = process
        self._last_progress = 0.0
        if entry.attempts == 1 and entry.retry_note is None:
            self.jobStarted.emit(entry.job_id)
        process.start()

    def _read_output(self, process: QProcess) -> None:
        if process is not self._process or self._monitor is None or self._current is None:
            return
        data = bytes(process.readAllStandardOutput().data())
        if not data:
            return
        text, changed = self._monitor.feed_bytes(data)
        if text:
            self.jobOutput.emit(self._current.job_id, text)
        now = time.monotonic()
        if changed and now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.jobProgress.emit(self._current.job_id, self._monitor.progress,
                                  self._monitor.eta_seconds())

    def _on_done(self, process: QProcess) -> None:
        if process is not self._process or process.state() != QProcess.ProcessState.NotRunning:
            return
        entry, prepared, monitor = self._current, self._prepared, self._monitor
        assert entry is not None and prepared is not None and monitor is not None
        self._read_output(process)
        self._kill_timer.stop()
        self._process = None
        start_error = None
        if process.error() == QProcess.ProcessError.FailedToStart:
            start_error = process.errorString()
        crashed = process.exitStatus() == QProcess.ExitStatus.CrashExit
        # On POSIX, Qt reports a crashed process's signal number as its exit code: keep it,
        # as the headless runner does (exit code -N), so the message can name the signal.
        signal_number = process.exitCode() if crashed and os.name == "posix" \
            and process.exitCode() > 0 else None
        if start_error:
            exit_code = None
        elif crashed:
            exit_code = -signal_number if signal_number else None
        else:
            exit_code = process.exitCode()
        killed = crashed and not entry.cancel_requested
        outcome = conclude_run(prepared, monitor, exit_code,
                               signal_number=signal_number if killed else None,
                               crashed=killed, cancelled=entry.cancel_requested,
                               store=self.store, start_error=start_error,
                               retry_note=entry.retry_note)
        process.deleteLater()
        self._current = self._prepared = self._monitor = None
        retry = (crash_retry_for(outcome, self.tools) if not entry.cancel_requested
                 else None)
        if retry is not None:
            # Run it again without the code path that crashed (see crash_retry_for).
            entry.job, entry.retry_note = retry
            entry.state, entry.attempts = "pending", 0
            self.jobOutput.emit(entry.job_id, f"\n[APEX Studio] {entry.retry_note}\n")
            self._launch(entry)
            return
        if outcome.output_lost and entry.attempts < MAX_ATTEMPTS:
            entry.state = "pending"  # run it again: the tool's logger dropped its result
            self.jobOutput.emit(entry.job_id, "\n[APEX Studio] the tool's result lines were "
                                              "lost at exit; running it again\n")
            self._launch(entry)
            return
        if outcome.succeeded:
            self.jobProgress.emit(entry.job_id, monitor.progress, 0.0)
        self._finish(entry, outcome)
        self._schedule.start()

    def _finish(self, entry: _Entry, outcome: JobOutcome) -> None:
        entry.state = "done"
        entry.outcome = outcome
        self._finished_since_idle += 1
        if not outcome.succeeded:
            self._failures_since_idle += 1
        self.jobFinished.emit(entry.job_id, outcome)

    def _kill_current(self) -> None:
        if self._process is not None and \
                self._process.state() != QProcess.ProcessState.NotRunning:
            self._process.kill()
