"""Garbage collection stays on the GUI thread while workers allocate (issue 20's deadlock).

Python's cyclic collector runs in whichever thread crosses its allocation threshold. Seen in
a full suite on a busy machine: a pool thread running the optimizer collected garbage that
held PySide wrappers and took Qt's connection lock to disconnect them, then waited for the
GIL, while the GUI thread held the GIL waiting for that lock in ``QObject::connect``.

The scenario runs in a child process so that a deadlock (or a crash from finalising a widget
off the GUI thread) fails this test instead of freezing the suite: workers run the optimizer
on the bundled demo with the collector's thresholds lowered, while the GUI thread creates and
drops plots and signal connections in reference cycles, round after round.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "resources" / "demo" / "apex-demo-trained-qwen2moe-f16.gguf"

SCENARIO = textwrap.dedent("""
    import gc, sys, threading
    from PySide6.QtWidgets import QApplication
    import pyqtgraph as pg

    from apex_gui.core.gguf.model import open_model
    from apex_gui.core.quality.optimizer import optimize
    from apex_gui.core.quality.sensitivity import SensitivityTable
    from apex_gui.qt.workers import WorkerPool

    model_path, table_path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # Hand the GIL over every 0.1 ms (default 5 ms): more interleavings of the GUI thread and
    # the workers per round, and the GUI thread is not starved by two busy workers (120 rounds
    # took 54 s on a quiet 2-core machine, 10 s with this). Without the fix it crashes in 0.7 s.
    sys.setswitchinterval(0.0001)
    app = QApplication([])
    pool = WorkerPool(max_threads=2)  # the window's worker abstraction
    gc.set_threshold(40, 2, 2)  # collections every few allocations, on whichever thread
    model = open_model(model_path)
    table = SensitivityTable.load(table_path)
    budget = model.file_size // 2
    stop = threading.Event()

    def run_optimizer(token):
        plans = 0
        while not stop.is_set():
            optimize(model, table, budget)
            plans += 1
        return plans

    tasks = [pool.submit(f"optimizer {i}", run_optimizer) for i in range(2)]

    class Holder:  # a reference cycle around Qt objects: only the collector frees it
        def __init__(self, widget):
            self.widget = widget
            self.me = self

    for round_ in range(rounds):
        widget = pg.PlotWidget()
        item = widget.plot([0, 1, 2], [round_, 1, 0])
        item.sigClicked.connect(lambda *_: None)
        widget.getPlotItem().vb.sigRangeChanged.connect(lambda *_: None)
        Holder(widget)
        del widget, item
        app.processEvents()
    stop.set()
    while pool.busy:
        app.processEvents()
    assert gc.isenabled() is False, "automatic collection was left on"
    print("rounds done", rounds, flush=True)
""")


@pytest.mark.gui
def test_workers_never_collect_qt_garbage_while_the_gui_thread_connects(tmp_path: Path) -> None:
    table = DEMO.with_suffix(".sensitivity.json")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONFAULTHANDLER": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", SCENARIO, str(DEMO), str(table), "120"],
                              capture_output=True, text=True, timeout=240, env=env,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired as hung:
        pytest.fail("the GUI thread and a worker deadlocked (no exit in 240 s): "
                    f"{(hung.stderr or b'')[-2000:]!r}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rounds done 120" in done.stdout


@pytest.mark.gui
def test_the_window_pins_collection_to_the_gui_thread(qtbot) -> None:
    from apex_gui.qt.gui_thread_gc import GuiThreadCollector, pin_garbage_collection_to_gui_thread
    from apex_gui.qt.workers import WorkerPool

    pool = WorkerPool()
    collector = pin_garbage_collection_to_gui_thread()
    assert isinstance(collector, GuiThreadCollector)
    assert pin_garbage_collection_to_gui_thread() is collector  # once per application
    assert not gc.isenabled()
    # The timer collects on the GUI thread by Python's own thresholds.
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    old = gc.get_threshold()
    gc.set_threshold(10, 10, 10)
    try:
        for _ in range(50):
            Cycle()
        qtbot.waitUntil(lambda: gc.get_count()[0] < 10, timeout=5000)
    finally:
        gc.set_threshold(*old)
    pool.shutdown()


@pytest.mark.gui
def test_pinning_from_a_worker_thread_is_refused(qtbot) -> None:
    import threading

    from apex_gui.qt.gui_thread_gc import pin_garbage_collection_to_gui_thread

    errors: list[BaseException] = []

    def pin() -> None:
        try:
            pin_garbage_collection_to_gui_thread()
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=pin)
    thread.start()
    thread.join()
    assert errors and "GUI thread" in str(errors[0])


@pytest.mark.gui
def test_a_worker_function_that_captures_a_widget_is_refused(qtbot) -> None:
    from PySide6.QtWidgets import QLabel

    from apex_gui.qt.workers import WorkerPool

    pool = WorkerPool()
    label = QLabel("status")
    qtbot.addWidget(label)
    text = label.text()  # plain data read on the GUI thread: fine
    with pytest.raises(TypeError, match="QLabel"):
        pool.submit("reads a widget", lambda _token: label.text())
    with pytest.raises(TypeError, match="QLabel"):
        pool.submit("bound method", label.text)
    task = pool.submit("plain data", lambda _token: text.upper())
    with qtbot.waitSignal(task.finished) as result:
        pass
    assert result.args == ["STATUS"]
    pool.shutdown()
