"""Fit to budget: the optimizer's plan for a size, or for the GPU set-up of Hardware & tiers.

The plan lands in the editor as one undoable edit of the current plan (every quantizable
tensor pinned to the optimizer's type), so the user keeps painting on it and Ctrl+Z returns
to the plan before. The optimizer runs in the window's worker pool; it needs the model's
measured sensitivity (the Run tab's "Sensitivity" job, or ``apex-studio sensitivity MODEL
-o MODEL.sensitivity.json`` beside the model).
"""

from __future__ import annotations

import math
import re
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QButtonGroup, QDialog, QDialogButtonBox, QFormLayout, QLabel,
                               QLineEdit, QRadioButton, QVBoxLayout, QWidget)

from apex_gui.core.plan.precision import PlanName
from apex_gui.core.quality.known import known_sensitivity
from apex_gui.core.quality.optimizer import optimize, optimize_for_fit
from apex_gui.core.units import format_size, parse_size
from apex_gui.qt.workers import CancelToken, Task

__all__ = ["FitToBudgetDialog", "apply_optimized_plan"]

NO_SENSITIVITY = ("No sensitivity measured for {name}: run \"Sensitivity\" in the Run tab "
                  "(or apex-studio sensitivity MODEL -o {stem}.sensitivity.json beside it), "
                  "then fit again.")


def kld_text(value: float, digits: int = 2) -> str:
    """A KL divergence with ``digits`` significant digits in plain decimals: ``0.000090``,
    not ``9e-05`` (people compare these by eye)."""
    if value <= 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.{max(digits - 1 - math.floor(math.log10(value)), 0)}f}"


def optimized_plan_name(what: str, tag: str, result: Any, before: str) -> PlanName:
    """The optimizer's plan, named so everywhere (panel, Run tab, file names): what it was fitted
    to, its predicted KL divergence, and what Reset returns to."""
    kld = kld_text(result.predicted_kld)
    slug = re.sub(r"[^A-Za-z0-9.+]+", "-", tag).strip("-")
    return PlanName(
        origin=f"{what} (KLD {kld})", file_label=f"Optimized-{slug}",
        note=f"The optimizer's plan ({what}): the type of each tensor chosen for the least "
             f"predicted KL divergence, {kld}, from the measured sensitivity. Ctrl+Z returns "
             f"to {before}.")


def apply_optimized_plan(window: Any, result: Any, what: str, tag: str) -> bool:
    """Put the optimizer's types into the window's plan as one undoable edit that names the
    plan the optimizer's (``tag``: the budget or set-up in a file name)."""
    plan = getattr(window, "current_plan", None)
    if plan is None or result.plan.model.path != plan.model.path:
        return False
    types = {name: result.plan.types[name] for name in result.plan.types
             if plan.is_quantizable(name)}
    change = plan.set_tensor_types(
        types, f"{what}: predicted KLD {kld_text(result.predicted_kld, 3)}",
        rename=optimized_plan_name(what, tag, result, plan.origin))
    window.statusBar().showMessage(
        f"{what}: {format_size(plan.total_bytes())}, predicted KLD "
        f"{kld_text(result.predicted_kld, 3)} (Ctrl+Z returns to the plan before)"
        if change is not None else f"{what}: the plan already is the optimizer's", 10000)
    return True


class FitToBudgetDialog(QDialog):
    """Size or GPU set-up in, the optimizer's plan into the editor."""

    fitted = Signal(object)  # the OptimizedPlan that was applied
    failed = Signal(str)

    def __init__(self, window: Any, hardware: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent or window)
        self.setObjectName("fitToBudgetDialog")
        self.setWindowTitle("Fit to budget")
        self._window = window
        self._hardware = hardware
        self._task: Task | None = None
        self.result: Any = None
        plan = window.current_plan
        self.size_radio = QRadioButton("File size")
        self.size_edit = QLineEdit(format_size(plan.total_bytes()).replace(" ", "")
                                   if plan is not None else "")
        self.size_edit.setPlaceholderText("15.5MB, 21GiB (a unit is needed)")
        self.size_edit.setToolTip("The largest file the plan may make (exact, as written by "
                                  "llama-quantize)")
        self.setup_radio = QRadioButton("Loads fully on the set-up of Hardware && tiers")
        label = hardware.hardware_label() if hardware is not None else ""
        self.setup_label = QLabel(label or "no set-up: open Hardware & tiers first")
        self.setup_radio.setEnabled(hardware is not None and hardware.machine() is not None)
        group = QButtonGroup(self)
        group.addButton(self.size_radio)
        group.addButton(self.setup_radio)
        self.size_radio.setChecked(True)
        # Typing a size is what one opens this for: the field has the keyboard, text selected.
        self.size_edit.setFocus()
        self.size_edit.selectAll()
        self.status = QLabel("The optimizer picks a type per tensor that minimises the "
                             "predicted KL divergence.")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.fit_button = self.buttons.addButton("Fit",
                                                 QDialogButtonBox.ButtonRole.AcceptRole)
        self.fit_button.setObjectName("fitButton")
        form = QFormLayout()
        form.addRow(self.size_radio, self.size_edit)
        form.addRow(self.setup_radio, self.setup_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self.buttons.rejected.connect(self.reject)
        self.buttons.accepted.connect(self.run_fit)
        self.size_edit.textEdited.connect(lambda _t: self.size_radio.setChecked(True))

    def run_fit(self) -> Task | None:
        """Start the optimizer off the GUI thread; the dialog closes when the plan is in."""
        window = self._window
        model, plan = window.current_model, window.current_plan
        if model is None or plan is None:
            self._fail("Open a model first.")
            return None
        budget: int | None = None
        machine = ctx = None
        margin = 0
        if self.size_radio.isChecked():
            try:
                budget = parse_size(self.size_edit.text(), "File size")
            except ValueError as error:
                self._fail(str(error))
                return None
            what = f"Fit to {format_size(budget)}"
            tag = format_size(budget).replace(" ", "")
        else:
            hardware = self._hardware
            machine = hardware.machine()
            ctx = hardware.context_settings()
            rec = hardware.recommendation
            margin = rec.margin if rec is not None else 1 << 30
            what = f"Fit to {hardware.hardware_label()}"
            tag = hardware.hardware_label()
        table = getattr(self._hardware, "sensitivity", None)
        imatrix = plan.imatrix

        def work(token: CancelToken) -> Any:
            found = table if table is not None else known_sensitivity(model, imatrix)
            if found is None:
                raise ValueError(NO_SENSITIVITY.format(name=model.path.name,
                                                       stem=model.path.stem))
            token.raise_if_cancelled()
            if budget is not None:
                return optimize(model, found, budget, imatrix)
            return optimize_for_fit(model, found, machine, ctx, margin=margin,
                                    imatrix=imatrix)[0]

        self.fit_button.setEnabled(False)
        self.status.setText("Optimizing…")
        task = window.workers.submit("fit to budget", work)
        self._task = task
        task.finished.connect(lambda result: self._done(result, what, tag))
        task.failed.connect(lambda error: self._fail(str(error)))
        return task

    def _done(self, result: Any, what: str, tag: str) -> None:
        self._task = None
        self.fit_button.setEnabled(True)
        if not apply_optimized_plan(self._window, result, what, tag):
            self._fail("The model changed while optimizing; fit again.")
            return
        self.result = result
        self.fitted.emit(result)
        self.accept()

    def _fail(self, message: str) -> None:
        self._task = None
        self.fit_button.setEnabled(True)
        self.status.setText(message)
        # A wrapped message of three lines in a dialog sized for one: grow to show it whole.
        self.adjustSize()
        self.failed.emit(message)

    def reject(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        super().reject()
