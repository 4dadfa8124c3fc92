"""Short in-process work off the GUI thread: one abstraction for the whole window.

Opening a 400B-parameter GGUF, detecting its profile, probing NVML, asking the Hugging Face
Hub for a file list: each is a plain Python callable run by :class:`WorkerPool` on a thread
of its own ``QThreadPool``. The callable receives a :class:`CancelToken` so it can stop early
and report throttled progress; results and errors come back as signals on a :class:`Task`
that lives in the GUI thread, so slots never touch widgets from a worker thread.

Long external processes (llama-quantize, llama-perplexity) are not workers: the job engine
owns those (``apex_gui/qt/job_queue.py``).
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

# Progress is forwarded at most this often: a tight loop reporting every tensor would flood
# the GUI thread's event queue and make the window stutter exactly when it should not.
PROGRESS_INTERVAL_S = 0.05

# While a worker runs pure-Python code, every time the GUI thread needs the GIL back (Qt
# re-enters Python several times per event) it may wait a whole switch interval: 5 ms by
# default, which adds up to visible stutter. A shorter interval while workers run keeps the
# window smooth at a small cost in worker throughput.
BUSY_SWITCH_INTERVAL_S = 0.001


class Cancelled(Exception):
    """Raised inside a worker function when its task was cancelled."""


class CancelToken:
    """What a worker function sees of its task: cancellation and throttled progress."""

    def __init__(self, report: Callable[[float, str], None]) -> None:
        self._event = threading.Event()
        self._report = report
        self._last_report = 0.0

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        """As ``threading.Event``: the job runner stops its tool when this turns true."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def progress(self, fraction: float, text: str = "", force: bool = False) -> None:
        """Report progress (0..1); calls closer together than PROGRESS_INTERVAL_S are dropped."""
        now = time.monotonic()
        if force or fraction >= 1.0 or now - self._last_report >= PROGRESS_INTERVAL_S:
            self._last_report = now
            self._report(fraction, text)


class Task(QObject):
    """One unit of work; its public signals are always delivered in the GUI thread."""

    finished = Signal(object)  # the function's return value
    failed = Signal(object)  # the exception it raised (never for a cancelled task)
    progress = Signal(float, str)
    done = Signal()  # after finished/failed, or once a cancelled task has stopped

    # Emitted from the worker thread; connected to this object's slots, which Qt queues
    # into the thread the Task lives in (the GUI thread).
    _result_from_thread = Signal(object)
    _error_from_thread = Signal(object)
    _progress_from_thread = Signal(float, str)
    _stopped_from_thread = Signal()

    _serials = itertools.count()

    def __init__(self, description: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.description = description
        self.serial = next(Task._serials)  # submission order
        self.token = CancelToken(self._progress_from_thread.emit)
        self.running = True
        self._result_from_thread.connect(self._deliver_result)
        self._error_from_thread.connect(self._deliver_error)
        self._progress_from_thread.connect(self._deliver_progress)
        self._stopped_from_thread.connect(self._deliver_done)

    def cancel(self) -> None:
        """Ask the function to stop; whatever it returns afterwards is dropped."""
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    @Slot(object)
    def _deliver_result(self, result: object) -> None:
        if not self.token.cancelled:
            self.finished.emit(result)

    @Slot(object)
    def _deliver_error(self, error: object) -> None:
        if not self.token.cancelled:
            self.failed.emit(error)

    @Slot(float, str)
    def _deliver_progress(self, fraction: float, text: str) -> None:
        if not self.token.cancelled:
            self.progress.emit(fraction, text)

    @Slot()
    def _deliver_done(self) -> None:
        self.running = False
        self.done.emit()


class _TaskRunnable(QRunnable):
    def __init__(self, task: Task, function: Callable[[CancelToken], Any]) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._task = task
        self._function = function

    def run(self) -> None:  # worker thread: only emit signals here
        task = self._task
        try:
            result = self._function(task.token)
        except Cancelled:
            pass
        except BaseException as error:  # noqa: BLE001 - every failure must reach the GUI
            task._error_from_thread.emit(error)
        else:
            task._result_from_thread.emit(result)
        finally:
            task._stopped_from_thread.emit()


class WorkerPool(QObject):
    """Runs callables on a private thread pool; cancel and wait for all of them on quit."""

    busyChanged = Signal(bool)
    #: descriptions of the tasks not yet done, whenever one starts or ends (for a status bar)
    tasksChanged = Signal(list)

    def __init__(self, parent: QObject | None = None, max_threads: int = 4) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._tasks: set[Task] = set()
        self._closed = False
        self._idle_switch_interval = sys.getswitchinterval()

    def submit(self, description: str, function: Callable[[CancelToken], Any]) -> Task:
        """Start ``function(token)`` off the GUI thread; connect to the returned task's signals."""
        if self._closed:
            raise RuntimeError("the worker pool is shut down")
        task = Task(description, self)
        was_busy = bool(self._tasks)
        self._tasks.add(task)
        task.done.connect(lambda: self._forget(task))
        self._pool.start(_TaskRunnable(task, function))
        if not was_busy:
            self._idle_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(BUSY_SWITCH_INTERVAL_S, self._idle_switch_interval))
            self.busyChanged.emit(True)
        self.tasksChanged.emit(self.task_descriptions())
        return task

    def task_descriptions(self) -> list[str]:
        """What the pool is doing, oldest first."""
        return [t.description for t in sorted(self._tasks, key=lambda t: t.serial)]

    def _forget(self, task: Task) -> None:
        if task in self._tasks:
            # The task stays a child of the pool (freed with it): deleting it here, inside
            # its own signal, or later with deleteLater while the pool may go first, crashes.
            self._tasks.discard(task)
            self.tasksChanged.emit(self.task_descriptions())
            if not self._tasks:
                sys.setswitchinterval(self._idle_switch_interval)
                self.busyChanged.emit(False)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until every running function has returned (True) or the timeout passed."""
        return self._pool.waitForDone(timeout_ms)

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel everything and wait for the threads: called when the window closes."""
        self._closed = True
        self.cancel_all()
        finished = self._pool.waitForDone(timeout_ms)
        if self._tasks:
            sys.setswitchinterval(self._idle_switch_interval)
        self._tasks.clear()
        return finished
