"""A banner above the tabs for what start-up found wrong and worked around: settings values
that fell back to their defaults, a run history that was damaged, locked or read-only.

The window starts either way; the banner says what is wrong, what was done and what to do,
until the user dismisses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget


class StartupNotice(QFrame):
    """One line per problem; hidden when there is none."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("startupNotice")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("#startupNotice { background: #3d3a1f; color: white; }"
                           " QLabel { color: white; }")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        self.label = QLabel()
        self.label.setObjectName("startupNoticeText")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self.hide)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.dismiss_button)
        self.lines: tuple[str, ...] = ()
        self.hide()

    def show_lines(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        self.label.setText("<br>".join(escape(line) for line in self.lines))
        self.setVisible(bool(self.lines))


def install_startup_notice(window: Any, lines: Sequence[str]) -> StartupNotice:
    """Add the banner to ``window`` showing ``lines`` (hidden when there are none)."""
    notice = StartupNotice()
    window.add_banner(notice)
    notice.show_lines(lines)
    return notice
