"""Memory tab: weights, KV cache and compute buffers per device and for RAM, at several
context sizes side by side (what gguf-parser prints), for the window's current plan."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QTimer, Qt
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QSpinBox,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from apex_gui.core.fit.breakdown import MemoryBreakdown, contexts_for, memory_breakdown
from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry, Placement
from apex_gui.core.units import format_size, format_size_figure, size_unit

OVER_COLOUR = QColor("#f4c7c3")


def context_label(n_ctx: int) -> str:
    return f"{n_ctx // 1024}k" if n_ctx % 1024 == 0 else str(n_ctx)


class MemoryBreakdownView(QWidget):
    """Rows: device x component; columns: context sizes. Totals over a device's free memory
    are tinted and say so in their tooltip."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("memoryBreakdown")
        self._plan: Any = None
        self._snapshot: Any = None
        self._machine: Any = None  # Hardware & tiers' set-up (typed or picked devices)
        self.breakdown: MemoryBreakdown | None = None
        self.cpu_moe = QSpinBox()
        self.cpu_moe.setObjectName("breakdownCpuMoe")
        self.cpu_moe.setRange(0, 999)
        self.cpu_moe.setSpecialValueText("none")
        self.cpu_moe.setToolTip("--n-cpu-moe: the routed experts of the first N layers stay in RAM")
        self.table = QTableWidget(0, 2)
        self.table.setObjectName("breakdownTable")
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.note = QLabel("Open a model to see its memory.")
        self.note.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(QLabel("Experts in RAM for the first"))
        row.addWidget(self.cpu_moe)
        row.addWidget(QLabel("layers"))
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(row)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(200)  # edits come in bursts: one estimate per burst
        self._debounce.timeout.connect(self.refresh)
        self.cpu_moe.valueChanged.connect(self._debounce.start)

    def set_plan(self, plan: Any) -> None:
        self._plan = plan
        self._debounce.start()

    def set_hardware(self, snapshot: Any) -> None:
        self._snapshot = snapshot
        self._debounce.start()

    def set_machine(self, machine: Any) -> None:
        """The set-up Hardware & tiers fits to (its devices, typed or picked, and RAM); it
        takes the place of the probe, so this tab and the fit table speak of one machine."""
        self._machine = machine
        self._debounce.start()

    def refresh(self) -> None:
        plan = self._plan
        if plan is None:
            return
        model = plan.model
        snapshot, machine = self._snapshot, self._machine
        if machine is not None:
            gpus = [(g.name, g.free_bytes) for g in machine.gpus]
            ram = machine.ram_available
        else:
            gpus = [(g.name, g.free_bytes) for g in snapshot.gpus] if snapshot is not None else []
            ram = snapshot.system.available_bytes if snapshot is not None else 0
        geometry = ModelGeometry.from_model(model)
        contexts = contexts_for(model.context_length)
        self.breakdown = breakdown = memory_breakdown(
            geometry, plan.tensor_bytes_map(), ContextSettings(), contexts, gpus, ram,
            Placement(n_cpu_moe=self.cpu_moe.value()))
        self._show(breakdown)
        where = (", ".join(f"{name} ({format_size(free)} free)" for name, free in gpus)
                 if gpus else "no GPU: everything in RAM")
        if machine is not None:
            where += ", the set-up of Hardware & tiers"
        self.note.setText(f"{plan.origin}: f16 KV cache, flash attention, one sequence; {where}"
                          f"{f', {format_size(ram)} RAM available' if ram else ''}. "
                          "The same estimate as the Hardware & tiers fit table.")

    def _show(self, breakdown: MemoryBreakdown) -> None:
        # Narrow enough for the side panel: a device is a spanning title row, the context
        # columns hold one decimal unit, named in the header (MB for the demo: "0.00 GB"
        # on every cell said nothing).
        unit, unit_bytes = size_unit(max((max(row.bytes_per_context, default=0)
                                          for row in breakdown.rows), default=0))
        headers = [unit, *(context_label(n) for n in breakdown.contexts)]
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        for column, n_ctx in enumerate(breakdown.contexts, start=1):
            self.table.horizontalHeaderItem(column).setToolTip(f"context {n_ctx:,} tokens")
        devices = list(dict.fromkeys(row.device for row in breakdown.rows))
        self.table.setRowCount(len(breakdown.rows) + len(devices))
        bold = QFont(self.font())
        bold.setBold(True)
        self._positions: dict[tuple[str, str], int] = {}
        r = 0
        for device in devices:
            title = QTableWidgetItem(device)
            title.setFont(bold)
            self.table.setItem(r, 0, title)
            self.table.setSpan(r, 0, 1, len(headers))
            r += 1
            for row in (x for x in breakdown.rows if x.device == device):
                self._positions[(device, row.component)] = r
                part = QTableWidgetItem(f"  {row.component}")
                self.table.setItem(r, 0, part)
                for c, (n_ctx, value) in enumerate(zip(breakdown.contexts, row.bytes_per_context)):
                    item = QTableWidgetItem(format_size_figure(value, unit_bytes))
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    item.setToolTip(f"{format_size(value)} ({value:,} bytes) at {n_ctx:,} tokens")
                    if row.component == "total":
                        item.setFont(bold)
                        part.setFont(bold)
                        if breakdown.over(device, n_ctx):
                            item.setBackground(QBrush(OVER_COLOUR))
                            item.setForeground(QBrush(QColor("#000000")))
                            capacity = breakdown.capacities[device]
                            item.setToolTip(f"{format_size(value)}: more than the {format_size(capacity)} "
                                            f"free on {device}")
                    self.table.setItem(r, 1 + c, item)
                r += 1

    def cell_text(self, device: str, component: str, n_ctx: int) -> str:
        """The shown text for one cell (what a user reads)."""
        assert self.breakdown is not None
        column = 1 + self.breakdown.contexts.index(n_ctx)
        return self.table.item(self._positions[(device, component)], column).text()
