"""Python's cyclic garbage collector, run only on the GUI thread while Qt is up.

The collector runs in whichever thread happens to cross its allocation threshold. When that
is a worker (the optimizer allocates a lot) and the garbage holds PySide wrappers, the worker
finalises Qt objects of the GUI thread: it takes Qt's connection lock inside
``QObject::disconnect`` and then waits for the GIL, while the GUI thread holds the GIL and
waits for that lock inside ``QObject::connect``. Both wait for good (seen in the test suite
on a busy machine). The usual cure, as pyqtgraph's ``GarbageCollector`` and calibre do:
switch automatic collection off and collect from a timer on the GUI thread, by the same
thresholds Python would use.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer

#: How often the GUI thread looks at the allocation counts. Collections stay as frequent as
#: Python's own for a responsive window; a busy worker only delays them to the next tick.
CHECK_INTERVAL_MS = 250


class GuiThreadCollector(QObject):
    """Owns garbage collection for the life of the application (see the module's docstring)."""

    def __init__(self, app: QCoreApplication) -> None:
        super().__init__(app)
        self.setObjectName("apex-gui-thread-gc")
        self._thresholds = gc.get_threshold()
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.check)
        self._timer.start(CHECK_INTERVAL_MS)
        app.aboutToQuit.connect(self._restore)

    def check(self) -> int:
        """Collect the generations that are due (see :func:`collect_due_generations`)."""
        return collect_due_generations()

    def _restore(self) -> None:
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()


def collect_due_generations() -> int:
    """Collect the generations whose counts passed their thresholds, as Python's automatic
    collection would; the number of objects found."""
    # Thresholds are read each time: a caller (or a test) may lower them on purpose.
    threshold0, threshold1, threshold2 = gc.get_threshold()
    count0, count1, count2 = gc.get_count()
    if count0 <= threshold0:
        return 0
    generation = 0
    if count1 > threshold1:
        generation = 1
        if count2 > threshold2:
            generation = 2
    return gc.collect(generation)


def pin_garbage_collection_to_gui_thread() -> GuiThreadCollector:
    """Install the collector once per application (later calls return the same one).

    Call it from the GUI thread after the QApplication exists: the window does, at start.
    """
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("create the QApplication before pinning garbage collection to it")
    if QThread.currentThread() is not app.thread():
        raise RuntimeError("garbage collection can only be pinned from the GUI thread")
    existing = app.findChild(GuiThreadCollector, "apex-gui-thread-gc")
    if existing is not None:
        return existing
    return GuiThreadCollector(app)
