"""Answering the window's "Keep your changes?" prompt in tests (it is modal: exec())."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget


class PromptAnswer:
    """Clicks ``button`` in the next "Keep your changes?" box and records what it said."""

    def __init__(self, button: QMessageBox.StandardButton) -> None:
        self.button = button
        self.texts: list[str] = []
        self._timer = QTimer()
        self._timer.setInterval(5)
        self._timer.timeout.connect(self._look)
        self._timer.start()

    def _look(self) -> None:
        boxes = [w for w in QApplication.topLevelWidgets()
                 if isinstance(w, QMessageBox) and w.objectName() == "keepEditsBox" and w.isVisible()]
        if boxes:
            self.texts.append(boxes[0].text())
            self._timer.stop()
            boxes[0].button(self.button).click()

    def stop(self) -> None:
        self._timer.stop()


def close_discarding(main: MainWindow) -> None:
    """Test teardown: a window with edits asks on close; answer Discard so it closes."""
    answer = PromptAnswer(QMessageBox.StandardButton.Discard) if main.has_unsaved_edits() else None
    main.close()
    if answer is not None:
        answer.stop()


def close_window(main: QWidget) -> None:
    """Fixture teardown: close (discarding edits) and delete, instead of qtbot.addWidget,
    whose own close at teardown would stop at the prompt."""
    if main.isVisible() or hasattr(main, "has_unsaved_edits"):
        close_discarding(main)  # type: ignore[arg-type]
    main.deleteLater()
