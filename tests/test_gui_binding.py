"""The Qt binding itself: guards against a PySide6 release that breaks reference counts.

PySide6 6.12.0 returned a borrowed ``True`` from ``Signal.emit()`` and dropped a reference
on slot calls; on Python 3.11 the window then aborted with "bool_dealloc" / "none_dealloc"
after a few hundred signals. pyproject.toml excludes it; this test fails on any release that
brings the bug back, long before a user's session crashes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

PROBE = """
import sys
from PySide6.QtCore import QCoreApplication, QObject, Signal, Slot

app = QCoreApplication([])

class Source(QObject):
    changed = Signal(object)
    pinged = Signal()

class Sink(QObject):
    @Slot(object)
    def receive(self, value):
        return None

source, sink = Source(), Sink()
source.changed.connect(sink.receive)
source.pinged.connect(lambda: None)
true_before, none_before = sys.getrefcount(True), sys.getrefcount(None)
for _ in range(5000):
    source.changed.emit(None)
    source.pinged.emit()
print(sys.getrefcount(True) - true_before, sys.getrefcount(None) - none_before)
"""


def test_signal_emit_keeps_reference_counts() -> None:
    # A child process: if the binding is broken the interpreter aborts, and that must fail
    # this test rather than the whole test run.
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"the Qt binding crashed: {result.stderr[-500:]}"
    true_delta, none_delta = (int(v) for v in result.stdout.split())
    assert abs(true_delta) < 100 and abs(none_delta) < 100, (
        f"Signal.emit leaks or drops references (True {true_delta}, None {none_delta}); "
        "pin PySide6-Essentials to a release without the bug")
