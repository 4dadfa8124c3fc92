"""Hardware and tiers: what this machine (or another) has, and which APEX tier fits it how.

The panel shows each GPU's memory as a bar, lets the user plan for other devices (typed, or
picked from the common cards), sets the context length and KV cache type, and lists every
profile with its exact size and the memory check's verdict from
:mod:`apex_gui.core.fit.recommend`: full GPU, experts on CPU (``--n-cpu-moe N``), partial
(``-ngl N``), CPU only or no fit, with headroom and the largest context that still fits.
The recommended tier is highlighted; one click applies it to the heatmap.

Signals:

* ``applyProfileRequested(str)``: a profile key ("i-quality"), or "stored" for an already
  quantized file's own types; the main window connects it to its profile switch
  (``MainWindow.switch_profile``).
* ``recommendationChanged(object)``: the latest :class:`Recommendation` (or None).
* ``manualDevicesChanged(str)``: the manual device text, for the settings.
* ``contextChanged(int, str)``: context length and KV cache type, for the settings.

Probing NVML and fitting every profile both run off the GUI thread through the window's
:class:`WorkerPool`; the newest request wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontDatabase, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView, QApplication, QCheckBox, QComboBox, QFrame, QGroupBox, QHBoxLayout,
    QHeaderView, QLabel, QLineEdit, QMenu, QPushButton, QScrollArea, QSpinBox, QTableWidget,
    QTableWidgetItem, QToolButton, QVBoxLayout, QWidget,
)

from apex_gui.core.fit import hardware
from apex_gui.core.fit.cluster import machine_with_workers
from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry
from apex_gui.core.fit.device_spec import COMMON_CARDS, parse_device_spec
from apex_gui.core.fit.hardware import GpuDevice, HardwareSnapshot
from apex_gui.core.fit.recommend import RULE_SHORT, Recommendation, recommend, tier_candidates
from apex_gui.core.fit.placement import Candidate, FitResult, Headroom, MachineMemory, Verdict
from apex_gui.core.fit.rpc_workers import WorkerProbe
from apex_gui.core.units import format_size
from apex_gui.qt.workers import CancelToken, Task, WorkerPool
from apex_gui.views.hardware.hardware_probing import HardwareProbing
from apex_gui.views.hardware.memory_bar import MemoryBar, VERDICT_COLOURS
from apex_gui.views.hardware.quality_rows import best_plan_for, figures_for, kl_cell
from apex_gui.views.hardware.rpc_workers_box import RpcWorkersBox

__all__ = ["HardwarePanel", "MemoryBar", "verdict_text"]

KV_TYPES = ("f16", "q8_0", "q4_0")
CONTEXT_STEP = 1024
COLUMNS = ("Tier", "Size", "Verdict", "Headroom", "Max context", "Flags", "KL mean")
#: The extra row with the optimizer's plan for the set-up (when sensitivities are known).
BEST_PLAN_LABEL = "Best plan for this set-up"
#: After a tier whose types need an importance matrix (as the Run tab's list says it).
IMATRIX_MARK = " · needs an imatrix"


def _profile_key(fit: FitResult) -> str:
    """The key the window's profile switch takes: "stored" for the file as it is."""
    return "stored" if fit.candidate.key == "as-is" else fit.candidate.key


def verdict_text(fit: FitResult) -> str:
    """The verdict as the table shows it, with the one number that matters."""
    placement = fit.placement
    if fit.verdict is Verdict.FULL_GPU:
        return "Full GPU"
    if fit.verdict is Verdict.EXPERTS_IN_RAM:
        return f"Experts on CPU (--n-cpu-moe {placement.n_cpu_moe})"
    if fit.verdict is Verdict.PARTIAL:
        return f"Partial (-ngl {placement.n_gpu_layers})"
    if fit.verdict is Verdict.CPU_ONLY:
        return "CPU only"
    return "No fit"


class HardwarePanel(HardwareProbing, QWidget):
    """The "Hardware & tiers" tab."""

    applyProfileRequested = Signal(str)
    recommendationChanged = Signal(object)
    manualDevicesChanged = Signal(str)
    snapshotChanged = Signal(object)
    contextChanged = Signal(int, str)  # context length, KV cache type
    commandCopied = Signal(str)
    bestPlanRequested = Signal(object)  # the optimizer's PrecisionPlan for this set-up

    def __init__(self, model: Any = None, *, snapshot: HardwareSnapshot | None = None,
                 workers: WorkerPool | None = None,
                 probe: Callable[[], HardwareSnapshot] = hardware.snapshot,
                 context: int = 8192, kv_cache_type: str = "f16", manual_devices: str = "",
                 auto_probe: bool = True, rpc_workers: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("hardwarePanel")
        self._model = model
        self._snapshot = snapshot
        self._own_workers = workers is None
        self._workers = workers or WorkerPool(self, max_threads=2)
        self._probe = probe
        self._candidates: list[Candidate] | None = None
        self._candidates_for: Any = None
        self._task: Task | None = None
        self._probe_task: Task | None = None
        self.recommendation: Recommendation | None = None
        # Measured sensitivity of the model (None: looked up beside it / in the cache) and the
        # optimizer's plan for the set-up, with its fit (apex_gui.core.quality).
        self.sensitivity: Any = None
        self.best_plan: Any = None
        self.best_fit: FitResult | None = None
        self.manual_error = ""
        # RPC workers: their devices join the ones fitted to (apex_gui.core.fit.cluster).
        self.rpc_probes: tuple[WorkerProbe, ...] = ()
        self.rpc_box = RpcWorkersBox(self._workers, rpc_workers)
        self.rpc_box.probesChanged.connect(self.set_rpc_probes)

        # Devices.
        self.bars_box = QGroupBox("Memory")
        self.bars_layout = QVBoxLayout(self.bars_box)
        self.bars_layout.setSpacing(4)
        self.notes_label = QLabel("")
        self.notes_label.setWordWrap(True)
        self.notes_label.setObjectName("hardwareNotes")
        self.refresh_button = QToolButton()
        self.refresh_button.setText("Re-detect")
        self.refresh_button.setToolTip("Probe the GPUs and system memory again")
        self.bars: list[MemoryBar] = []

        self.manual_edit = QLineEdit(manual_devices)
        self.manual_edit.setPlaceholderText("plan for other devices: 2 x RTX 3090, 128 GB unified")
        self.manual_edit.setClearButtonEnabled(True)
        self.cards_button = QToolButton()
        self.cards_button.setText("Common cards")
        self.cards_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.cards_button.setToolTip("Plan for a common GPU or unified-memory machine")
        self.cards_menu = QMenu(self.cards_button)
        for card in COMMON_CARDS:
            action = self.cards_menu.addAction(card.name)
            action.triggered.connect(lambda _=False, name=card.name: self.choose_card(name))
        self.cards_button.setMenu(self.cards_menu)
        self.add_detected_check = QCheckBox("add to detected GPUs")
        self.add_detected_check.setToolTip(
            "Plan for the detected GPUs plus the typed ones (e.g. a card you are about to add); "
            "unticked, the typed devices replace this machine's")
        self.manual_status = QLabel("")
        self.manual_status.setWordWrap(True)

        self.context_spin = QSpinBox()
        self.context_spin.setRange(256, 1 << 20)
        self.context_spin.setSingleStep(CONTEXT_STEP)
        self.context_spin.setSuffix(" tokens")
        self.context_spin.setValue(context)
        # What the user asked for; a model trained on less shows less, the next model gets it back.
        self._preferred_context = context
        self.context_spin.setKeyboardTracking(False)
        self.context_spin.setToolTip("Context length (-c) the KV cache is sized for")
        self.kv_combo = QComboBox()
        self.kv_combo.addItems(KV_TYPES)
        if kv_cache_type in KV_TYPES:
            self.kv_combo.setCurrentText(kv_cache_type)
        self.kv_combo.setToolTip("KV cache type (-ctk / -ctv); quantized caches need flash "
                                 "attention, which the command turns on")

        # Tiers.
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("tierTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.summary = QLabel("Open a model to see which tiers fit.")
        self.summary.setWordWrap(True)
        self.summary.setObjectName("tierSummary")
        self.apply_button = QPushButton("Apply to heatmap")
        self.apply_button.setToolTip("Switch the plan to the selected tier")
        self.command_edit = QLineEdit()
        self.command_edit.setReadOnly(True)
        self.command_edit.setObjectName("serverCommand")
        self.command_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the llama-server command line")

        # Layout.
        top = QHBoxLayout()
        self.devices_heading = QLabel("Detected on this machine")
        top.addWidget(self.devices_heading)
        top.addStretch(1)
        top.addWidget(self.refresh_button)
        self.bars_layout.addLayout(top)
        self.bars_container = QVBoxLayout()
        self.bars_layout.addLayout(self.bars_container)
        self.bars_layout.addWidget(self.notes_label)
        manual_row = QHBoxLayout()
        manual_row.addWidget(self.manual_edit, 1)
        manual_row.addWidget(self.cards_button)
        manual_row.addWidget(self.add_detected_check)
        self.bars_layout.addLayout(manual_row)
        self.bars_layout.addWidget(self.manual_status)

        settings = QHBoxLayout()
        settings.addWidget(QLabel("Context"))
        settings.addWidget(self.context_spin)
        settings.addSpacing(12)
        settings.addWidget(QLabel("KV cache"))
        settings.addWidget(self.kv_combo)
        settings.addStretch(1)

        command_row = QHBoxLayout()
        command_row.addWidget(self.command_edit, 1)
        command_row.addWidget(self.copy_button)
        command_row.addWidget(self.apply_button)

        # The page scrolls when the window is short (1024x700, 2x scaling): squeezed below
        # its minimum, the memory box drew its lines over each other.
        body = QWidget()
        scroll = QScrollArea()
        scroll.setObjectName("hardwareScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        # At least four tier rows on screen, whatever the window's height.
        self.table.setMinimumHeight(self.table.horizontalHeader().sizeHint().height()
                                    + 4 * self.table.verticalHeader().defaultSectionSize() + 4)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.bars_box)
        layout.addLayout(settings)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.summary)
        layout.addWidget(QLabel("llama-server command for the selected tier:"))
        layout.addLayout(command_row)
        # Other machines joined over RPC: rarer than the tiers, so below them.
        layout.addWidget(self.rpc_box)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(120)
        self._debounce.timeout.connect(self.recompute)
        self.refresh_button.clicked.connect(self.probe_hardware)
        self.manual_edit.textChanged.connect(self._manual_changed)
        self.add_detected_check.toggled.connect(lambda _on: self._manual_changed(
            self.manual_edit.text()))
        self.context_spin.valueChanged.connect(self._context_edited)
        self.kv_combo.currentTextChanged.connect(self._context_edited)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.itemDoubleClicked.connect(lambda _item: self.apply_selected())
        self.apply_button.clicked.connect(self.apply_selected)
        self.copy_button.clicked.connect(self.copy_command)

        self._update_manual_status()
        self._show_devices()
        self._cap_context()
        if snapshot is None and auto_probe:
            self.probe_hardware()
        else:
            self._debounce.start()

    # --- inputs -------------------------------------------------------------------------
    def set_model(self, model: Any) -> None:
        """The model whose tiers are fitted (a ModelInfo, or None)."""
        self._model = model
        self._candidates = None
        self.sensitivity = None  # another model's table says nothing about this one
        self._cap_context()
        self._debounce.start()

    def _cap_context(self) -> None:
        """Planning beyond the training context would size a KV cache nobody can use."""
        trained = int(getattr(self._model, "context_length", 0) or 0)
        wanted = min(self._preferred_context, trained) if trained else self._preferred_context
        if self.context_spin.value() != wanted:
            self.context_spin.blockSignals(True)
            self.context_spin.setValue(wanted)
            self.context_spin.blockSignals(False)

    def set_snapshot(self, snapshot: HardwareSnapshot | None) -> None:
        self._snapshot = snapshot
        self._show_devices()
        self.snapshotChanged.emit(snapshot)
        self._debounce.start()

    def set_manual_devices(self, text: str) -> None:
        if text != self.manual_edit.text():
            self.manual_edit.setText(text)

    def set_context(self, context: int, kv_cache_type: str) -> None:
        """Context length and KV cache type from the settings (no echo back)."""
        for widget in (self.context_spin, self.kv_combo):
            widget.blockSignals(True)
        self.context_spin.setValue(context)
        self._preferred_context = context
        self._cap_context()
        if kv_cache_type in KV_TYPES:
            self.kv_combo.setCurrentText(kv_cache_type)
        for widget in (self.context_spin, self.kv_combo):
            widget.blockSignals(False)
        self._debounce.start()

    def _context_edited(self, _value: object) -> None:
        self._preferred_context = self.context_spin.value()
        self.contextChanged.emit(self.context_spin.value(), self.kv_combo.currentText())
        self._debounce.start()

    def choose_card(self, name: str) -> None:
        """Plan for one common card (the one-click list)."""
        self.manual_edit.setText(name)

    def context_settings(self) -> ContextSettings:
        kv = self.kv_combo.currentText()
        return ContextSettings(n_ctx=self.context_spin.value(), type_k=kv, type_v=kv,
                               flash_attn=True)

    def manual_devices(self) -> list[GpuDevice] | None:
        """The typed devices, or None when the field is empty or unreadable."""
        text = self.manual_edit.text().strip()
        if not text:
            return None
        try:
            return parse_device_spec(text)
        except ValueError:
            return None

    def set_rpc_probes(self, probes: tuple[WorkerProbe, ...]) -> None:
        """The latest probe of the RPC workers; the tiers are fitted again across them."""
        self.rpc_probes = tuple(probes)
        self._show_devices()
        self._debounce.start()

    def machine(self) -> MachineMemory | None:
        """This machine (or the typed devices) plus the reachable RPC workers' devices."""
        local = self._local_machine()
        if local is None or not self.rpc_probes:
            return local
        return machine_with_workers(local, self.rpc_probes)

    def _local_machine(self) -> MachineMemory | None:
        """What the tiers are fitted into: manual devices if given, else the probe's."""
        snapshot = self._snapshot
        manual = self.manual_devices()
        ram = snapshot.system.available_bytes if snapshot is not None else 0
        if manual is not None and self.add_detected_check.isChecked() and snapshot is not None:
            detected = MachineMemory.from_snapshot(snapshot)
            devices = [replace(d, index=i) for i, d in enumerate([*detected.gpus, *manual])]
            return MachineMemory(tuple(devices), detected.ram_available, detected.notes)
        if manual is not None:
            if snapshot is None:
                # No probe yet: assume the devices are all there is, with RAM for the host side.
                ram = max(sum(d.total_bytes for d in manual), 16 * 10**9)
            # Typed devices stand for another machine, but its RAM is unknown: say whose.
            note = (f"System RAM is this machine's ({format_size(ram)} available); experts "
                    "placed in RAM assume that much.")
            return MachineMemory(tuple(manual), ram, (note,))
        if snapshot is None:
            return None
        return MachineMemory.from_snapshot(snapshot)

    def hardware_label(self) -> str:
        """A short name of what is planned for ("RTX 4090 24GB", "2 x RTX 3090 24GB", "CPU")."""
        machine = self.machine()
        if machine is None:
            return ""
        if not machine.gpus:
            return f"CPU only, {format_size(machine.ram_available)} RAM available"
        names: dict[str, int] = {}
        for gpu in machine.gpus:
            names[gpu.name] = names.get(gpu.name, 0) + 1
        return " + ".join(name if n == 1 else f"{n} x {name}" for name, n in names.items())


    # --- fitting ------------------------------------------------------------------------
    def recompute(self) -> Task | None:
        """Fit every profile off the GUI thread; the newest request wins."""
        model, machine = self._model, self.machine()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if model is None or machine is None:
            self._show_recommendation(None)
            if model is None:
                self.summary.setText("Open a model to see which tiers fit.")
            else:
                self.summary.setText("Waiting for the hardware probe…")
            return None
        try:
            ctx = self.context_settings()
        except ValueError as error:
            self.summary.setText(str(error))
            return None
        cached = self._candidates if self._candidates_for is model else None
        table = self.sensitivity

        def fit(token: CancelToken) -> tuple[list[Candidate], Recommendation, Any]:
            # The tiers `apex-studio recommend` ranks, so both give the same answer.
            candidates = cached if cached is not None else tier_candidates(model)
            token.raise_if_cancelled()
            geometry = ModelGeometry.from_model(model)
            known, figures = figures_for(model, candidates, table)
            token.raise_if_cancelled()
            rec = recommend(geometry, candidates, machine, ctx, quality=figures)
            return candidates, rec, best_plan_for(model, known, machine, ctx, rec.margin)

        self.summary.setText("Fitting every tier…")
        task = self._workers.submit("fit tiers", fit)
        self._task = task
        task.finished.connect(lambda result, m=model: self._fitted(m, result))
        task.failed.connect(lambda error: self.summary.setText(f"Cannot fit the tiers: {error}"))
        return task

    def _fitted(self, model: Any, result: tuple[list[Candidate], Recommendation, Any]) -> None:
        candidates, recommendation, best = result
        self._task = None
        if model is not self._model:
            return
        self._candidates, self._candidates_for = candidates, model
        self.best_plan, self.best_fit = best if best is not None else (None, None)
        self._show_recommendation(recommendation)

    def set_sensitivity(self, table: Any) -> None:
        """Measured sensitivity of the open model: ranks the tiers and adds the best plan."""
        self.sensitivity = table
        self._debounce.start()

    def best_plan_row(self) -> int | None:
        """Row of "Best plan for this set-up", when the optimizer gave one."""
        if self.recommendation is None or self.best_fit is None:
            return None
        return len(self.recommendation.results)

    def _show_recommendation(self, recommendation: Recommendation | None) -> None:
        self.recommendation = recommendation
        self.table.setRowCount(0)
        if recommendation is None:
            self.command_edit.clear()
            self.apply_button.setEnabled(False)
            self.recommendationChanged.emit(None)
            return
        recommended = recommendation.recommended
        bold = QFont(self.font())
        bold.setBold(True)
        highlight = QColor(self.palette().color(QPalette.ColorRole.Highlight))
        highlight.setAlpha(60)

        rows = list(recommendation.results)
        if self.best_fit is not None:
            rows.append(self.best_fit)
        self.table.setRowCount(len(rows))
        for row, fit in enumerate(rows):
            is_best = fit is recommended
            is_plan = fit is self.best_fit
            kl_text, kl_tip = kl_cell(recommendation, fit, self.best_plan if is_plan else None)
            label = BEST_PLAN_LABEL if is_plan else fit.candidate.label
            if fit.candidate.needs_imatrix and not is_plan:
                label += IMATRIX_MARK
            cells = [("★ " if is_best else "") + label,
                     format_size(fit.candidate.file_bytes), verdict_text(fit),
                     self._headroom_text(fit),
                     f"{fit.max_context:,}" if fit.max_context else "--", fit.flags, kl_text]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, fit.candidate.key)
                if column in (1, 3, 4):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if column == 2:
                    item.setForeground(VERDICT_COLOURS[fit.verdict])
                    item.setToolTip("; ".join(fit.notes) or fit.verdict.value)
                if column == 6:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    item.setToolTip(kl_tip)
                if is_best:
                    item.setFont(bold)
                    item.setBackground(highlight)
                    item.setToolTip(recommendation.rule)
                self.table.setItem(row, column, item)
        if recommended is not None:
            fit = recommended
            ranked = recommendation.quality_note or (
                "No KL divergence is known for this model (none measured, no sensitivity "
                "table, and the published figures are of another model): tiers in tier order.")
            needs = " ".join(n for n in recommendation.notes if "needs an importance matrix" in n)
            self.summary.setText(
                f"Recommended: <b>{fit.candidate.label}</b> ({verdict_text(fit)}, "
                f"{self._headroom_text(fit)} headroom) at {recommendation.context.n_ctx:,} "
                f"tokens on {self.hardware_label()}." + (f" {needs}" if needs else "")
                + f"<br>{ranked}<br><small>{RULE_SHORT} (hover for the whole rule)</small>")
            self.summary.setToolTip(recommendation.rule)
            self.table.selectRow(recommendation.results.index(fit))
        else:
            self.summary.setText(" ".join(recommendation.notes) or "No tier fits.")
            self.summary.setToolTip(recommendation.rule)
            self.table.selectRow(0)
        self.recommendationChanged.emit(recommendation)

    @staticmethod
    def _headroom_text(fit: FitResult) -> str:
        if fit.verdict is Verdict.DOES_NOT_FIT or fit.headroom is Headroom.NONE:
            return "none"
        return f"{format_size(fit.headroom_bytes)} ({fit.headroom.value})"

    def selected_fit(self) -> FitResult | None:
        if self.recommendation is None:
            return None
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return self.recommendation.recommended
        if rows[0].row() == self.best_plan_row():
            return self.best_fit
        return self.recommendation.results[rows[0].row()]

    def recommended_row(self) -> int | None:
        rec = self.recommendation
        if rec is None or rec.recommended is None:
            return None
        return rec.results.index(rec.recommended)

    def _selection_changed(self) -> None:
        fit = self.selected_fit()
        self.apply_button.setEnabled(fit is not None)
        self.copy_button.setEnabled(fit is not None and fit.verdict is not Verdict.DOES_NOT_FIT)
        self.command_edit.setText(fit.command_line if fit is not None and
                                  fit.verdict is not Verdict.DOES_NOT_FIT else "")
        self.command_edit.setCursorPosition(0)
        gpu_bars = self.bars[:len(fit.estimate.devices)] if fit is not None else []
        for bar in self.bars:
            bar.set_need(None)
        if fit is not None:
            for bar, usage in zip(gpu_bars, fit.estimate.devices):
                bar.set_need(usage.total)
            if self.bars and self._snapshot is not None and len(self.bars) > len(gpu_bars):
                self.bars[-1].set_need(fit.estimate.host.total)

    # --- actions ------------------------------------------------------------------------
    def apply_selected(self) -> None:
        fit = self.selected_fit()
        if fit is not None and fit is self.best_fit:
            self.bestPlanRequested.emit(self.best_plan.plan)
        elif fit is not None:
            self.applyProfileRequested.emit(_profile_key(fit))

    def copy_command(self) -> None:
        text = self.command_edit.text()
        if text:
            QApplication.clipboard().setText(text)
            self.commandCopied.emit(text)

    def shutdown(self, timeout_ms: int = 5000) -> None:
        """Cancel pending fits; a pool of the panel's own is also waited for (the window's
        pool is shut down by the window)."""
        self._debounce.stop()
        if self._task is not None:
            self._task.cancel()
        if self._own_workers:
            self._workers.shutdown(timeout_ms)
