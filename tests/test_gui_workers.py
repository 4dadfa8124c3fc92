"""The worker pool: results and errors come back in the GUI thread; cancel drops results."""

from __future__ import annotations

import threading

import pytest
from pytestqt.qtbot import QtBot

from apex_gui.qt.workers import CancelToken, WorkerPool

pytestmark = pytest.mark.gui


def test_result_arrives_in_the_gui_thread(qtbot: QtBot) -> None:
    pool = WorkerPool()
    worker_threads: list[threading.Thread] = []

    def work(_token: CancelToken) -> int:
        worker_threads.append(threading.current_thread())
        return 42

    task = pool.submit("answer", work)
    delivered: list[threading.Thread] = []
    task.finished.connect(lambda _r: delivered.append(threading.current_thread()))
    with qtbot.waitSignal(task.finished, timeout=5000) as blocker:
        pass
    assert blocker.args == [42]
    assert worker_threads[0] is not threading.main_thread()
    assert delivered == [threading.main_thread()]
    assert pool.shutdown()


def test_errors_are_delivered_not_raised(qtbot: QtBot) -> None:
    pool = WorkerPool()

    def fail(_token: CancelToken) -> None:
        raise ValueError("model.gguf: bad magic")

    task = pool.submit("fail", fail)
    with qtbot.waitSignal(task.failed, timeout=5000) as blocker:
        pass
    assert isinstance(blocker.args[0], ValueError) and "bad magic" in str(blocker.args[0])
    assert pool.shutdown()


def test_cancel_stops_the_function_and_drops_its_result(qtbot: QtBot) -> None:
    pool = WorkerPool()
    started = threading.Event()

    def spin(token: CancelToken) -> str:
        started.set()
        while True:
            token.raise_if_cancelled()
            token.progress(0.5, "spinning")
            threading.Event().wait(0.001)

    task = pool.submit("spin", spin)
    results: list[object] = []
    task.finished.connect(results.append)
    task.failed.connect(results.append)
    assert started.wait(5)
    with qtbot.waitSignal(task.done, timeout=5000):
        task.cancel()
    assert results == [] and not pool.busy
    assert pool.shutdown(5000)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit("late", lambda _t: None)


def test_a_task_has_stopped_when_its_result_or_error_arrives(qtbot: QtBot) -> None:
    """The worker reported its result and its stop as two queued events: a slot that ended
    the wait on the result (the Hub dialog's search, then a click on a hit) found the task
    still running and ignored the click, on a busy machine. Result and stop are one report."""
    pool = WorkerPool()
    ended: list[tuple[bool, bool]] = []

    def boom(_token: CancelToken) -> None:
        raise ValueError("no")

    for round_number in range(200):
        task = pool.submit("quick", (lambda _token: 42) if round_number % 2 else boom)
        signal = task.finished if round_number % 2 else task.failed
        with qtbot.waitSignal(signal, timeout=10_000):
            pass
        ended.append((task.running, pool.busy))
    assert not any(running or busy for running, busy in ended), ended.count((True, True))
    pool.shutdown()
