"""``python window_start.py [MODEL]``: the window's start-up as ``apex-studio [MODEL]`` runs
it (:func:`apex_gui.app.open_window`), then a quit as Ctrl+Q does it, once the model opened or
an error was shown. Prints what the start-up banner said. The process must then end: one
that stays alive (a worker or a tool held open) is a hang for the fault campaign.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from apex_gui.app import open_window
from apex_gui.views.window.startup_notice import StartupNotice


def main(argv: list[str]) -> int:
    window = open_window(argv[0] if argv else None)
    app = QApplication.instance()
    assert app is not None
    outcome: list[str] = []

    def quit_now(what: str) -> None:
        if outcome:
            return
        outcome.append(what)
        notice = window.findChild(StartupNotice, "startupNotice")
        for line in (notice.lines if notice is not None and notice.isVisible() else ()):
            print(f"notice: {line}")
        print(what, flush=True)
        # Through the event loop, as a key press would: the close guards and closeEvent run.
        QTimer.singleShot(0, window.close)

    window.modelLoadFinished.connect(lambda _seconds: quit_now("window: model opened"))
    window.errorShown.connect(lambda title, message: quit_now(f"window: error shown: {title}: "
                                                              f"{message}"))
    app.exec()
    return 0 if outcome else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
