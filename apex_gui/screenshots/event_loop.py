"""Turning the event loop while a screenshot driver waits for the window to draw or a job to end."""

from __future__ import annotations

# Qt is imported inside the functions: app.py imports the drivers at start-up, before its
# preflight has checked that Qt can start here.


def wait(signal, timeout_ms: int = 20_000) -> bool:  # type: ignore[no-untyped-def]
    """Run the event loop until ``signal`` fires (True) or the timeout passes (False)."""
    # start-up: Qt after app.py's preflight (see above)
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    fired: list[bool] = []
    signal.connect(lambda *_: (fired.append(True), loop.quit()))
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()
    return bool(fired)


def settle(ms: int = 150) -> None:
    """Let the window draw for ``ms`` milliseconds."""
    # start-up: Qt after app.py's preflight (see above)
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
