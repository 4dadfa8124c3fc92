"""Wire the quality features into the window: the "Fit to budget..." action (Tools menu and
toolbar), the Hardware & tiers "Best plan for this set-up" row applying its plan, and the
sensitivity overlay (View menu and toolbar toggle, legend under the heatmap, predicted KLD
beside the exact size in the plan panel, live on every edit).

Kept out of main_window.py: the window only offers ``menuBar()``, its toolbar, ``workers``,
``current_plan`` and ``statusBar()``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFormLayout, QInputDialog, QLabel, QToolBar

from apex_gui.core.hub.tables import fetch_table
from apex_gui.core.quality.curve import optimizer_curve, tier_points
from apex_gui.core.quality.job import SensitivityJob
from apex_gui.core.quality.known import beside_model, known_sensitivity
from apex_gui.core.quality.scratch import scratch_root
from apex_gui.core.quality.sensitivity import prepare_measurement
from apex_gui.core.quality.table import SensitivityTable
from apex_gui.core.settings import data_dir
from apex_gui.views.plan.budget_dialog import FitToBudgetDialog, apply_optimized_plan, kld_text
from apex_gui.views.heatmap.sensitivity_overlay import DamageLegend, SensitivityOverlay

__all__ = ["QualityState", "install_quality"]

NO_TABLE_TIP = ("No sensitivity measured for this model: run \"Sensitivity\" in the Run tab "
                "(or apex-studio sensitivity MODEL -o MODEL.sensitivity.json beside it)")


class QualityState(QObject):
    """The open model's measured sensitivity and everything shown from it."""

    tableChanged = Signal(object)  # SensitivityTable | None

    def __init__(self, window: Any, hardware: Any) -> None:
        super().__init__(window)
        self.window = window
        self.hardware = hardware
        self.table: Any = None
        self._model: Any = None
        self.legend = DamageLegend()
        self.legend.hide()
        legend = getattr(window, "legend", None)
        if legend is not None and legend.parentWidget() is not None:
            legend.parentWidget().layout().addWidget(self.legend)
        self.kld_label = QLabel("-")
        self.kld_label.setObjectName("planKldLabel")
        self.kld_label.setToolTip(NO_TABLE_TIP)
        panel = getattr(window, "plan_panel", None)
        if panel is not None:
            for form in panel.findChildren(QFormLayout):
                row, _role = form.getWidgetPosition(panel.size_label)
                if row >= 0:
                    form.insertRow(row + 1, "Predicted KLD", self.kld_label)
                    break
        self.overlay_action = QAction("Sensitivity &overlay", window)
        self.overlay_action.setObjectName("sensitivityOverlayAction")
        self.overlay_action.setCheckable(True)
        self.overlay_action.setShortcut(QKeySequence("Ctrl+K"))
        self.overlay_action.setToolTip("Colour cells by measured damage (predicted KL "
                                       "divergence) at their type (Ctrl+K)")
        self.overlay_action.setEnabled(False)
        self.per_byte_action = QAction("Overlay: damage &per byte", window)
        self.per_byte_action.setCheckable(True)
        self.per_byte_action.setToolTip("Colour by predicted KL divergence per byte the cell "
                                        "occupies: where bytes buy the most quality")
        self.overlay_action.toggled.connect(lambda _on: self.refresh_overlay())
        self.per_byte_action.toggled.connect(lambda _on: self.refresh_overlay())
        window.modelChanged.connect(self._model_changed)
        window.planChanged.connect(self._plan_changed)

    def _model_changed(self, model: Any) -> None:
        self._model = model
        self.set_table(None)
        if model is None:
            return

        task = self.window.workers.submit("look up sensitivity",
                                          lambda _token: known_sensitivity(model))
        task.finished.connect(lambda table, m=model: self.set_table(table)
                              if m is self._model else None)

    def set_table(self, table: Any) -> None:
        """The open model's table (None: none measured); refreshes every view of it."""
        model = self._model
        if table is not None and (model is None or not set(table.errors) <= {
                t.name for t in model.tensors}):
            table = None  # measured on another model
        self.table = table
        self.overlay_action.setEnabled(table is not None)
        self.overlay_action.setToolTip(self.overlay_action.toolTip() if table is not None
                                       else NO_TABLE_TIP)
        if table is None and self.overlay_action.isChecked():
            self.overlay_action.setChecked(False)
        if table is not None and self.hardware.sensitivity is not table:
            self.hardware.set_sensitivity(table)
        self.refresh_overlay()
        self._plan_changed(getattr(self.window, "current_plan", None))
        self.tableChanged.emit(table)

    def refresh_overlay(self) -> None:
        heatmap = self.window.heatmap
        plan = self.window.current_plan
        if self.table is None or plan is None or not self.overlay_action.isChecked():
            heatmap.set_overlay(None)
            self.legend.set_scale(None)
            self.legend.hide()
            return
        mode = "damage per byte" if self.per_byte_action.isChecked() else "damage"
        overlay = SensitivityOverlay(self.table, plan, mode)
        heatmap.set_overlay(overlay)
        self.legend.set_scale(overlay.scale)
        self.legend.show()

    def predicted_kld(self, plan: Any) -> float | None:
        prediction = self.prediction(plan)
        return None if prediction is None else float(prediction.kld)

    def prediction(self, plan: Any) -> Any:
        """The plan's predicted KLD (with what was estimated), or None without a table."""
        if self.table is None or plan is None:
            return None
        try:
            return self.table.predict_plan(plan)
        except KeyError:
            return None  # a type with nothing measured near it

    def _plan_changed(self, plan: Any) -> None:
        prediction = self.prediction(plan)
        if self.table is None:
            self.kld_label.setText("-")
            self.kld_label.setToolTip(NO_TABLE_TIP)
        elif prediction is None:
            self.kld_label.setText("types not measured")
            self.kld_label.setToolTip("The plan uses a type with no measured type near it; "
                                      "measure it among the candidate types")
        else:
            note = prediction.note()
            self.kld_label.setText(kld_text(prediction.kld, 3) + (" (estimated)" if note else ""))
            self.kld_label.setToolTip(
                "Predicted mean KL divergence against the source model (measured "
                f"sensitivity, per-tensor damages added), {self.table.calibration_basis()}"
                + (f"; {note}" if note else ""))
        overlay = self.window.heatmap.overlay
        if overlay is not None and overlay.plan is not plan:
            self.refresh_overlay()  # a new plan: the overlay follows it


def _tools_menu(window: Any) -> Any:
    for action in window.menuBar().actions():
        if action.menu() is not None and action.text().replace("&", "") == "Tools":
            return action.menu()
    return window.menuBar().addMenu("&Tools")


def sensitivity_output(model_path: Path) -> Path:
    """Where a measured table goes: beside the model (found there again on the next start),
    else in the data folder when the model's folder is read-only."""
    target = beside_model(model_path)
    if os.access(target.parent, os.W_OK):
        return target
    return data_dir() / "sensitivity" / target.name


def sensitivity_job_label(model: Any, imatrix: Path | None, context: int,
                          chunks: int | None) -> str:
    """The job's title with its projected time and scratch disk (said before it starts)."""
    name = f"sensitivity of {model.path.name}"
    try:
        settings = prepare_measurement(model.path, imatrix, context=context, chunks=chunks)
    except (ValueError, OSError) as error:
        return f"{name} (cannot start: {error})"
    projection = settings.projection()
    return f"{name} ({projection.short(str(scratch_root()))})"


def queue_sensitivity(window: Any, queue: Any, state: QualityState, *, context: int = 512,
                      chunks: int | None = None) -> int | None:
    """Queue the open model's sensitivity measurement; its table is used when it is done."""
    model = window.current_model
    if model is None:
        window.statusBar().showMessage("Open a model first", 4000)
        return None
    plan = window.current_plan
    imatrix = Path(plan.imatrix) if plan is not None and plan.imatrix else None
    output = sensitivity_output(model.path)
    if output.exists():
        output = output.with_name(f"{output.stem}.{int(time.time())}.json")
    job = SensitivityJob(model=Path(model.path), output_path=output, imatrix=imatrix,
                         context=context, chunks=chunks,
                         label=sensitivity_job_label(model, imatrix, context, chunks))
    job_id = queue.add(job)

    def finished(done_id: int, outcome: Any) -> None:
        if done_id != job_id:
            return
        queue.jobFinished.disconnect(finished)
        if outcome.succeeded and window.current_model is model:
            try:
                state.set_table(SensitivityTable.load(output, model))
            except (ValueError, OSError) as error:
                window.statusBar().showMessage(f"Sensitivity not used: {error}", 8000)
                return
            window.statusBar().showMessage(f"Sensitivity measured: {output}", 8000)

    queue.jobFinished.connect(finished)
    return job_id


def load_sensitivity(window: Any, state: QualityState, spec: str) -> Any:
    """Use a table from a file or ``hf://OWNER/REPO/FILE.json`` for the open model (fetched
    and checked off the GUI thread); a refusal is one line in the status bar."""
    model = window.current_model
    if model is None:
        window.statusBar().showMessage("Open a model first", 4000)
        return None
    task = window.workers.submit("load sensitivity", lambda _token: fetch_table(spec, model))

    def loaded(table: Any) -> None:
        if window.current_model is model:
            state.set_table(table)
            window.statusBar().showMessage(f"Sensitivity table loaded: {spec}", 8000)

    task.finished.connect(loaded)
    task.failed.connect(lambda error: window.statusBar().showMessage(
        f"Sensitivity table not used: {error}", 10000))
    return task


def _update_curve(window: Any, results: Any, state: QualityState, table: Any) -> None:
    """Results view: the optimizer's plans and the tiers' predicted KL for this table."""
    model = window.current_model
    if table is None or model is None:
        results.set_quality_curve([], [])
        return

    task = window.workers.submit("optimizer curve", lambda _token: (
        optimizer_curve(model, table), tier_points(model, table)))
    task.finished.connect(lambda found: results.set_quality_curve(*found)
                          if state.table is table else None)


def install_quality(window: Any, hardware: Any, queue: Any = None,
                    results: Any = None) -> QAction:
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
        if apply_optimized_plan(window, result, f"Best plan for {hardware.hardware_label()}",
                                hardware.hardware_label()):
            tabs = getattr(window, "center_tabs", None)
            if tabs is not None:
                tabs.setCurrentIndex(0)

    hardware.bestPlanRequested.connect(best_plan)

    state = QualityState(window, hardware)
    if results is not None:
        state.tableChanged.connect(lambda table: _update_curve(window, results, state, table))
    if queue is not None:
        measure = QAction("&Measure sensitivity", window)
        measure.setObjectName("measureSensitivityAction")
        measure.setToolTip("Measure each tensor's damage at each candidate type with the "
                           "llama.cpp tools (a Run queue job: progress, ETA, cancel)")
        measure.triggered.connect(lambda _c=False: queue_sensitivity(window, queue, state))
        window.addAction(measure)
        _tools_menu(window).addAction(measure)
        window.measure_sensitivity_action = measure
    load = QAction("&Load sensitivity table...", window)
    load.setObjectName("loadSensitivityAction")
    load.setToolTip("Use a sensitivity table measured elsewhere: a file, or "
                    "hf://OWNER/REPO/FILE.json on Hugging Face (checked to be this model's)")

    def ask_and_load() -> None:
        spec, accepted = QInputDialog.getText(
            window, "Load sensitivity table", "File or hf://OWNER/REPO/FILE.json:")
        if accepted and spec.strip():
            load_sensitivity(window, state, spec.strip())

    load.triggered.connect(lambda _c=False: ask_and_load())
    window.addAction(load)
    _tools_menu(window).addAction(load)
    window.load_sensitivity_action = load
    window.quality_state = state
    view_menu = next((a.menu() for a in window.menuBar().actions()
                      if a.menu() is not None and a.text().replace("&", "") == "View"), None)
    for extra in (state.overlay_action, state.per_byte_action):
        window.addAction(extra)
        if view_menu is not None:
            view_menu.addAction(extra)
    if toolbar is not None:
        toolbar.addAction(state.overlay_action)
        if hasattr(window, "fit_toolbar"):
            window.fit_toolbar()  # the two new buttons may not fit a narrow window
    if window.current_model is not None:
        state._model_changed(window.current_model)
    return action
