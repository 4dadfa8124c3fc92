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
from PySide6.QtWidgets import QGraphicsItem

from apex_gui.qt.gui_thread_gc import pin_garbage_collection_to_gui_thread

# Progress is forwarded at most this often: a tight loop reporting every tensor would flood
# the GUI thread's event queue and make the window stutter exactly when it should not.
PROGRESS_INTERVAL_S = 0.05

# While a worker runs pure-Python code, every time the GUI thread needs the GIL back (Qt
# re-enters Python several times per event) it may wait a whole switch interval: 5 ms by
# default, which adds up to visible stutter. A shorter interval while workers run keeps the
# window smooth at a small cost in worker throughput.
BUSY_SWITCH_INTERVAL_S = 0.001


#: How a worker function ended (the kinds of :attr:`_PoolReports.ended`).
ENDED_RESULT, ENDED_ERROR, ENDED_CANCELLED = "result", "error", "cancelled"


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


def qt_objects_captured(function: Callable[..., Any]) -> list[str]:
    """Qt objects a worker function would reach directly: its bound ``self``, its defaults
    and the variables it closes over (one level: what a lambda or nested def captures)."""
    seen: list[Any] = []
    bound = getattr(function, "__self__", None)
    if bound is not None:
        seen.append(bound)
    code_owner = getattr(function, "__func__", function)
    seen += list(getattr(code_owner, "__defaults__", None) or ())
    for cell in getattr(code_owner, "__closure__", None) or ():
        try:
            seen.append(cell.cell_contents)
        except ValueError:  # an empty cell (a variable assigned later)
            continue
    found = []
    for value in seen:
        owner = getattr(value, "__self__", None)  # a bound method of a widget
        for candidate in (value, owner):
            if isinstance(candidate, (QObject, QGraphicsItem)):
                found.append(type(candidate).__name__)
    return found


class Task(QObject):
    """One unit of work; its public signals are always delivered in the GUI thread.

    A task never crosses into the worker thread: the worker reports through its pool (a
    long-lived object), so the only Python objects a worker thread can release are the ones
    it made itself. Releasing a Qt wrapper there would finalise it off the GUI thread.
    """

    finished = Signal(object)  # the function's return value
    failed = Signal(object)  # the exception it raised (never for a cancelled task)
    progress = Signal(float, str)
    done = Signal()  # after finished/failed, or once a cancelled task has stopped

    _serials = itertools.count()

    def __init__(self, description: str, token: CancelToken,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.description = description
        self.serial = next(Task._serials)  # submission order
        self.token = token
        self.running = True

    def cancel(self) -> None:
        """Ask the function to stop; whatever it returns afterwards is dropped."""
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled


class _TaskRunnable(QRunnable):
    """Runs one function on a pool thread and reports through the pool's signals.

    It holds the function only while it runs and drops it before saying it stopped: the GUI
    thread keeps its own reference until then, so a closure over a widget is always released
    on the GUI thread.
    """

    def __init__(self, serial: int, function: Callable[[CancelToken], Any], token: CancelToken,
                 reports: _PoolReports) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._serial = serial
        self._function: Callable[[CancelToken], Any] | None = function
        self._token = token
        self._reports = reports

    def run(self) -> None:  # worker thread: only emit signals here
        function, self._function = self._function, None
        reports, serial = self._reports, self._serial
        kind, value = ENDED_CANCELLED, None
        try:
            assert function is not None
            value = function(self._token)
            kind = ENDED_RESULT
        except Cancelled:
            pass
        except BaseException as error:  # noqa: BLE001 - every failure must reach the GUI
            kind, value = ENDED_ERROR, error
            del error
        finally:
            del function
            # One report for the outcome and the stop: with two, a slot acting on the result
            # (the next search, the next listing) could find its task still running.
            reports.ended.emit(serial, kind, value)
            del value


class _PoolReports(QObject):
    """The signals workers emit; they live in the GUI thread, so slots run there."""

    progress = Signal(int, float, str)
    #: (serial, ENDED_RESULT / ENDED_ERROR / ENDED_CANCELLED, the result or the exception),
    #: emitted once the worker has let go of the function
    ended = Signal(int, str, object)


class WorkerPool(QObject):
    """Runs callables on a private thread pool; cancel and wait for all of them on quit."""

    busyChanged = Signal(bool)
    #: descriptions of the tasks not yet done, whenever one starts or ends (for a status bar)
    tasksChanged = Signal(list)

    def __init__(self, parent: QObject | None = None, max_threads: int = 4) -> None:
        super().__init__(parent)
        # Workers allocate; the cyclic collector must never run on their threads.
        pin_garbage_collection_to_gui_thread()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._reports = _PoolReports(self)
        self._reports.progress.connect(self._deliver_progress)
        self._reports.ended.connect(self._deliver_ended)
        #: serial -> (task, function): kept here until the worker has let go of the function
        self._running: dict[int, tuple[Task, Callable[[CancelToken], Any]]] = {}
        self._closed = False
        self._idle_switch_interval = sys.getswitchinterval()

    def submit(self, description: str, function: Callable[[CancelToken], Any]) -> Task:
        """Start ``function(token)`` off the GUI thread; connect to the returned task's signals."""
        if self._closed:
            raise RuntimeError("the worker pool is shut down")
        captured = qt_objects_captured(function)
        if captured:
            # Qt objects belong to the GUI thread: a worker must get plain data instead.
            raise TypeError(f"the worker function for {description!r} captures Qt objects "
                            f"({', '.join(captured)}); pass it the data it needs instead")
        progress_signal = self._reports.progress
        serial_box: list[int] = []
        token = CancelToken(lambda fraction, text: progress_signal.emit(serial_box[0], fraction,
                                                                        text))
        task = Task(description, token, self)
        serial_box.append(task.serial)
        was_busy = bool(self._running)
        self._running[task.serial] = (task, function)
        self._pool.start(_TaskRunnable(task.serial, function, token, self._reports))
        if not was_busy:
            self._idle_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(BUSY_SWITCH_INTERVAL_S, self._idle_switch_interval))
            self.busyChanged.emit(True)
        self.tasksChanged.emit(self.task_descriptions())
        return task

    def task_descriptions(self) -> list[str]:
        """What the pool is doing, oldest first."""
        return [task.description for _serial, (task, _f) in sorted(self._running.items())]

    def _task(self, serial: int) -> Task | None:
        entry = self._running.get(serial)
        return entry[0] if entry is not None else None

    @Slot(int, float, str)
    def _deliver_progress(self, serial: int, fraction: float, text: str) -> None:
        task = self._task(serial)
        if task is not None and not task.cancelled:
            task.progress.emit(fraction, text)

    @Slot(int, str, object)
    def _deliver_ended(self, serial: int, kind: str, value: object) -> None:
        task = self._task(serial)
        if task is not None and not task.cancelled:
            if kind == ENDED_RESULT:
                task.finished.emit(value)
            elif kind == ENDED_ERROR:
                task.failed.emit(value)
        del value
        entry = self._running.pop(serial, None)
        if entry is None:
            return
        task = entry[0]
        # The task stays a child of the pool (freed with it): deleting it here, inside its
        # own signal, or later with deleteLater while the pool may go first, crashes.
        task.running = False
        task.done.emit()
        self.tasksChanged.emit(self.task_descriptions())
        if not self._running:
            sys.setswitchinterval(self._idle_switch_interval)
            self.busyChanged.emit(False)

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def cancel_all(self) -> None:
        for task, _function in list(self._running.values()):
            task.cancel()

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until every running function has returned (True) or the timeout passed."""
        return self._pool.waitForDone(timeout_ms)

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel everything and wait for the threads: called when the window closes."""
        self._closed = True
        self.cancel_all()
        finished = self._pool.waitForDone(timeout_ms)
        if self._running:
            sys.setswitchinterval(self._idle_switch_interval)
        if finished:
            self._running.clear()  # every worker has let go: releasing here is safe
        return finished
