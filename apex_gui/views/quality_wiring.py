"""Wire the quality features into the window: the "Fit to budget..." action (Tools menu and
toolbar) and the Hardware & tiers "Best plan for this set-up" row applying its plan.

Kept out of main_window.py: the window only offers ``menuBar()``, its toolbar, ``workers``,
``current_plan`` and ``statusBar()``.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QToolBar

from .fit_dialog import FitToBudgetDialog, apply_optimized_plan

__all__ = ["install_quality"]


def _tools_menu(window: Any) -> Any:
    for action in window.menuBar().actions():
        if action.menu() is not None and action.text().replace("&", "") == "Tools":
            return action.menu()
    return window.menuBar().addMenu("&Tools")


def install_quality(window: Any, hardware: Any) -> QAction:
    """Add "Fit to budget..." and connect the best-plan row; returns the action."""
    action = QAction("&Fit to budget...", window)
    action.setObjectName("fitToBudgetAction")
    action.setShortcut(QKeySequence("Ctrl+B"))
    action.setToolTip("Fit to budget: the plan of least predicted KL divergence for a size "
                      "or a GPU set-up (Ctrl+B)")
    action.setStatusTip("The optimizer's plan for a size or the Hardware & tiers set-up")

    def open_dialog() -> FitToBudgetDialog | None:
        if window.current_plan is None:
            window.statusBar().showMessage("Open a model first", 4000)
            return None
        dialog = FitToBudgetDialog(window, hardware)
        window.fit_dialog = dialog  # reachable for tests and screenshots
        dialog.setModal(True)
        dialog.show()
        return dialog

    action.triggered.connect(lambda _checked=False: open_dialog())
    window.addAction(action)
    _tools_menu(window).addAction(action)
    toolbar = window.findChild(QToolBar, "mainToolbar")
    if toolbar is not None:
        toolbar.addAction(action)
    window.fit_to_budget_action = action
    window.open_fit_dialog = open_dialog

    def best_plan(_plan: Any) -> None:
        result = hardware.best_plan
        if result is None:
            return
        if apply_optimized_plan(window, result, f"Best plan for {hardware.hardware_label()}"):
            tabs = getattr(window, "center_tabs", None)
            if tabs is not None:
                tabs.setCurrentIndex(0)

    hardware.bestPlanRequested.connect(best_plan)
    return action
