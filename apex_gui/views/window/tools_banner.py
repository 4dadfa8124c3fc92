"""A banner above the tabs when the llama.cpp tools check found a problem on this CPU.

The window checks each tools build once (``apex-studio tools --check`` does the same), in the
background, so a broken tool is named with its fix before a long run fails in its middle.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.jobs.tools_check import run_tools_check
from apex_gui.core.jobs.tools_findings import ToolsCheckReport, known_check


class ToolsCheckBanner(QFrame):
    """Hidden while the tools work; a warning (broken) or a note (--no-repack in use)."""

    #: asks for the check to be run again
    recheckRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("toolsCheckBanner")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        self.label = QLabel()
        self.label.setObjectName("toolsCheckText")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.recheck_button = QPushButton("Check again")
        self.recheck_button.clicked.connect(self.recheckRequested.emit)
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self.hide)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.recheck_button)
        layout.addWidget(self.dismiss_button)
        self.report: ToolsCheckReport | None = None
        self.hide()

    def show_report(self, report: ToolsCheckReport) -> None:
        self.report = report
        if not report.ok:
            lines = [f"<b>{c.tool}</b> does not work on this CPU: {c.detail}<br>"
                     f"<i>Fix:</i> {c.fix}" for c in report.broken]
            self.label.setText("<br>".join(lines))
            self.setProperty("severity", "error")
            self.setStyleSheet("#toolsCheckBanner { background: #5c1f1f; color: white; }"
                               " QLabel { color: white; }")
        elif report.repack_broken:
            self.label.setText(report.summary() + ".")
            self.setProperty("severity", "note")
            self.setStyleSheet("#toolsCheckBanner { background: #3d3a1f; color: white; }"
                               " QLabel { color: white; }")
        else:
            self.hide()
            return
        self.show()


def install_tools_check(window: Any, tools: LlamaTools) -> ToolsCheckBanner:
    """Add the banner to ``window`` and check ``tools`` once per build (in the background)."""
    banner = ToolsCheckBanner()
    window.add_banner(banner)

    def run_check(force: bool = False) -> None:
        known = None if force else known_check(tools)
        if known is not None:
            banner.show_report(known)
            return
        if tools.locate("quantize").path is None:
            return  # the Run panel already says how to install them
        banner.recheck_button.setEnabled(False)
        # The token cancels the check when the window closes: a hung tool is stopped, not
        # waited for (the window stayed alive after Ctrl+Q).
        task = window.workers.submit("check llama.cpp tools",
                                     lambda token: run_tools_check(tools, cancel=token))
        task.finished.connect(banner.show_report)
        task.failed.connect(lambda error: window.statusBar().showMessage(
            f"Could not check the llama.cpp tools: {error}", 10_000))
        task.done.connect(lambda: banner.recheck_button.setEnabled(True))

    banner.recheckRequested.connect(lambda: run_check(force=True))
    run_check()
    return banner
