"""The side panel: type palette, profile and diff choice, live plan numbers and memory fit.

Every number is read from the :class:`PrecisionPlan` (sizes, bits per weight, problems);
the panel subscribes to the plan and refreshes on each edit, so what it shows is always
what the core computes. Choices the user makes (profile, diff reference, reset, save) go
to the window as signals: it owns plan replacement and the worker pool.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPaintEvent, QPalette, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QButtonGroup, QComboBox, QFormLayout,
                               QFrame, QGridLayout, QGroupBox, QHBoxLayout, QHeaderView,
                               QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton,
                               QScrollArea, QSizePolicy, QTableWidget, QTableWidgetItem,
                               QToolButton, QVBoxLayout, QWidget)

from apex_gui.core.fit.device_spec import parse_device_spec
from apex_gui.core.fit.hardware import GpuDevice, HardwareSnapshot
from apex_gui.core.gguf.types import PLAN_TYPES, ggml_type
from apex_gui.core.plan.precision import PlanProblem, PrecisionPlan
from apex_gui.core.plan.profiles import Profile, shallow_model_note
from apex_gui.core.units import format_size
from apex_gui.views import style
from apex_gui.views.plan.quiet_note import QuietNote

PROBLEMS_SHOWN = 300  # a 400B plan can list thousands; the count says how many are hidden


def type_swatch(type_name: str, size: int = 14) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(style.bpw_colour(ggml_type(type_name).bits_per_weight))
    return QIcon(pixmap)

#: The profile picker's item for a plan an edit renamed (the optimizer's plan).
NAMED_PLAN = "__named__"



class TypePalette(QWidget):
    """Every type a plan may use, as a grid of toggle buttons coloured like the heatmap."""

    typeChosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        self._buttons: dict[str, QToolButton] = {}
        columns = 4
        for index, type_name in enumerate(PLAN_TYPES):
            kind = ggml_type(type_name)
            button = QToolButton(self)
            button.setText(type_name)
            button.setIcon(type_swatch(type_name))
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            button.setCheckable(True)
            button.setAutoRaise(False)
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            note = " - needs an importance matrix" if kind.needs_imatrix else ""
            button.setToolTip(f"{type_name}: {kind.bits_per_weight:.3f} bits per weight, blocks of "
                              f"{kind.block_size}{note}. Click, then paint cells or press Enter "
                              "to set the selection.")
            self._group.addButton(button)
            self._buttons[type_name] = button
            layout.addWidget(button, index // columns, index % columns)
            button.clicked.connect(lambda _=False, t=type_name: self.typeChosen.emit(t))

    def set_current_type(self, type_name: str) -> None:
        button = self._buttons.get(type_name)
        if button is not None and not button.isChecked():
            button.setChecked(True)
            self.typeChosen.emit(type_name)

    def button(self, type_name: str) -> QToolButton:
        return self._buttons[type_name]


class FitBar(QWidget):
    """One memory pool: how much of it the plan's weights take."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = ""
        self.used = 0
        self.capacity = 0
        self.overflow = False
        self.setMinimumHeight(22)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_values(self, title: str, used: int, capacity: int, overflow: bool = False) -> None:
        self.title, self.used, self.capacity, self.overflow = title, used, capacity, overflow
        self.setToolTip(f"{title}: {format_size(used)} of {format_size(capacity)} used by the weights")
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(260, 22)

    def text(self) -> str:
        return f"{self.title}: {format_size(self.used, like=self.capacity)} / {format_size(self.capacity)}"

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        rect = self.rect().adjusted(0, 1, -1, -2)
        painter.fillRect(rect, palette.color(QPalette.ColorRole.Base))
        share = self.used / self.capacity if self.capacity else 1.0
        colour = QColor("#2e9d5b") if share < 0.85 else QColor("#d08a00") if share <= 1.0 else QColor("#d0342c")
        if self.overflow:
            colour = QColor("#d0342c")
        filled = QRect(rect.left(), rect.top(), round(rect.width() * min(share, 1.0)), rect.height())
        painter.fillRect(filled, colour)
        painter.setPen(palette.color(QPalette.ColorRole.Mid))
        painter.drawRect(rect)
        font = QFont(self.font())
        font.setPixelSize(11)
        painter.setFont(font)
        # Text over both the filled part and the empty part: a halo keeps it readable on both.
        text_rect = rect.adjusted(6, 0, -6, 0)
        painter.setPen(palette.color(QPalette.ColorRole.Base))
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            painter.drawText(text_rect.translated(dx, dy), Qt.AlignmentFlag.AlignVCenter, self.text())
        painter.setPen(palette.color(QPalette.ColorRole.Text))
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter, self.text())
        painter.end()


def place_weights(weights: int, devices: list[GpuDevice],
                  system_available: int) -> tuple[list[tuple[GpuDevice, int]], int, bool]:
    """Fill GPUs in order with the weights, the rest in RAM: (per-GPU bytes, RAM bytes, fits).

    A first picture only: the recommendation core adds KV cache and compute buffers.
    """
    remaining = weights
    placed: list[tuple[GpuDevice, int]] = []
    for device in devices:
        room = device.free_bytes if device.source == "nvml" else device.total_bytes
        taken = min(room, remaining)
        placed.append((device, taken))
        remaining -= taken
    return placed, remaining, remaining <= system_available


class PlanPanel(QWidget):
    """Profile, diff and palette controls plus the plan's live numbers."""

    profileRequested = Signal(str)  # profile key
    resetRequested = Signal()
    saveProfileRequested = Signal()
    diffRequested = Signal(str)  # "" (off), "profile:<key>", "file" (pick a GGUF), "detected"
    applyRequested = Signal()
    brushChanged = Signal(str)
    problemActivated = Signal(str)  # tensor name
    manualDevicesChanged = Signal(str)
    probeRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("planPanel")
        self._plan: PrecisionPlan | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._baseline_bytes = 0
        self._baseline_label = ""
        self._snapshot: HardwareSnapshot | None = None
        self._manual_devices: list[GpuDevice] = []
        self._updating = False

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(8)

        # --- profile -----------------------------------------------------------------------
        plan_box = QGroupBox("Plan")
        plan_form = QFormLayout(plan_box)
        plan_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.profile_combo = QComboBox()
        self.profile_combo.setToolTip("Start from an APEX profile (built-in or yours); "
                                      "switching replaces the plan")
        self.profile_combo.activated.connect(self._profile_activated)
        plan_form.addRow("Profile", self.profile_combo)
        buttons = QHBoxLayout()
        self.reset_button = QPushButton("Reset to profile")
        self.reset_button.setToolTip("Undo every edit: back to the profile's plan (Ctrl+R; undoable)")
        self.reset_button.clicked.connect(self.resetRequested)
        self.save_button = QPushButton("Save as my profile...")
        self.save_button.setToolTip("Save the plan as a profile in your config folder")
        self.save_button.clicked.connect(self.saveProfileRequested)
        buttons.addWidget(self.reset_button)
        buttons.addWidget(self.save_button)
        plan_form.addRow(buttons)
        self.diff_combo = QComboBox()
        self.diff_combo.setToolTip("Outline the cells whose type differs from another plan")
        self.diff_combo.activated.connect(self._diff_activated)
        plan_form.addRow("Compare with", self.diff_combo)
        self.diff_label = QLabel("")
        self.diff_label.setWordWrap(True)
        plan_form.addRow(self.diff_label)
        self.detected_label = QLabel("")
        self.detected_label.setWordWrap(True)
        self.detected_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        plan_form.addRow(self.detected_label)
        # The chosen profile's description in view, not only in a tooltip: it says, e.g.,
        # why Balanced is larger than Quality.
        self.profile_note = QuietNote()
        self.profile_note.setObjectName("profileNote")
        self.profile_note.setWordWrap(True)
        plan_form.addRow(self.profile_note)
        layout.addWidget(plan_box)

        # --- palette -----------------------------------------------------------------------
        palette_box = QGroupBox("Type palette")
        palette_layout = QVBoxLayout(palette_box)
        self.palette_widget = TypePalette()
        self.palette_widget.typeChosen.connect(self.brushChanged)
        palette_layout.addWidget(self.palette_widget)
        hint = QLabel("Drag over cells to paint. Shift+drag, or click a row or column header, "
                      "to select; Alt+click selects a band.")
        hint.setWordWrap(True)
        hint.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        palette_layout.addWidget(hint)
        self.apply_button = QPushButton("Set selection to Q4_K")
        self.apply_button.setToolTip("Give every selected cell the palette's type (Enter)")
        self.apply_button.setEnabled(False)
        self.apply_button.clicked.connect(self.applyRequested)
        palette_layout.addWidget(self.apply_button)
        layout.addWidget(palette_box)

        # --- numbers -----------------------------------------------------------------------
        numbers_box = QGroupBox("Predicted file")
        numbers = QFormLayout(numbers_box)
        self.size_label = QLabel("-")
        self.size_label.setObjectName("planSizeLabel")
        big = QFont(self.font())
        big.setPointSizeF(big.pointSizeF() * 1.35)
        big.setBold(True)
        self.size_label.setFont(big)
        self.size_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.bytes_label = QLabel("-")
        self.bytes_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.bpw_label = QLabel("-")
        self.change_label = QLabel("-")
        self.change_label.setWordWrap(True)
        numbers.addRow("Size", self.size_label)
        numbers.addRow("Bytes", self.bytes_label)
        numbers.addRow("Bits/weight", self.bpw_label)
        numbers.addRow("Change", self.change_label)
        self.role_table = QTableWidget(0, 3)
        self.role_table.setHorizontalHeaderLabels(["Role", "Size", "bpw"])
        self.role_table.verticalHeader().setVisible(False)
        self.role_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.role_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.role_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.role_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.role_table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.role_table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        numbers.addRow(self.role_table)
        layout.addWidget(numbers_box)

        # --- problems ----------------------------------------------------------------------
        self.problems_box = QGroupBox("Problems")
        problems_layout = QVBoxLayout(self.problems_box)
        self.problems_summary = QLabel("")
        self.problems_summary.setWordWrap(True)
        problems_layout.addWidget(self.problems_summary)
        self.problems_list = QListWidget()
        self.problems_list.setMaximumHeight(130)
        self.problems_list.setWordWrap(True)
        self.problems_list.itemActivated.connect(self._problem_activated)
        self.problems_list.itemClicked.connect(self._problem_activated)
        problems_layout.addWidget(self.problems_list)
        layout.addWidget(self.problems_box)

        # --- memory fit --------------------------------------------------------------------
        fit_box = QGroupBox("Fit (weights only)")
        fit_layout = QVBoxLayout(fit_box)
        device_row = QHBoxLayout()
        self.device_edit = QLineEdit()
        self.device_edit.setPlaceholderText("devices, e.g. 2 x RTX 3090 or 24GB")
        self.device_edit.setToolTip("Describe GPUs by hand (\"2 x RTX 3090\", \"H100 80GB\", "
                                    "\"128 GB unified\"); empty: the detected ones")
        self.device_edit.editingFinished.connect(self._devices_edited)
        self.probe_button = QPushButton("Detect")
        self.probe_button.setToolTip("Probe GPUs (NVML) and system memory again")
        self.probe_button.clicked.connect(self.probeRequested)
        device_row.addWidget(self.device_edit, 1)
        device_row.addWidget(self.probe_button)
        fit_layout.addLayout(device_row)
        self.device_error = QLabel("")
        self.device_error.setWordWrap(True)
        self.device_error.setStyleSheet("color: #d0342c")
        self.device_error.hide()
        fit_layout.addWidget(self.device_error)
        self.fit_bars_layout = QVBoxLayout()
        self.fit_bars_layout.setSpacing(3)
        fit_layout.addLayout(self.fit_bars_layout)
        self.fit_summary = QLabel("probing hardware...")
        self.fit_summary.setWordWrap(True)
        fit_layout.addWidget(self.fit_summary)
        layout.addWidget(fit_box)
        layout.addStretch(1)
        self._fit_bars: list[FitBar] = []
        # The scroll area never scrolls sideways, so the panel is never narrower than its
        # content: a dock state restored from a smaller screen would clip the numbers.
        self.setMinimumWidth(body.minimumSizeHint().width()
                             + scroll.verticalScrollBar().sizeHint().width())
        self.refresh()  # no plan yet: plan buttons off until a model is open

    # --- inputs from the window -----------------------------------------------------------
    def set_profiles(self, profiles: dict[str, Profile], current: str | None,
                     stored_label: str | None = None) -> None:
        """Fill the profile picker; ``stored_label`` adds the file's own types as a choice."""
        self._updating = True
        combo = self.profile_combo
        combo.clear()
        if stored_label:
            combo.addItem(stored_label, "stored")
        for key, profile in profiles.items():
            prefix = "" if profile.builtin else "my: "
            combo.addItem(f"{prefix}{profile.label}", key)
            combo.setItemData(combo.count() - 1, profile.description or profile.label,
                              Qt.ItemDataRole.ToolTipRole)
        index = combo.findData(current if current is not None else "stored")
        combo.setCurrentIndex(max(index, 0))
        self.diff_combo.clear()
        self.diff_combo.addItem("nothing (diff off)", "")
        if stored_label:
            self.diff_combo.addItem("the detected profile", "detected")
        for key, profile in profiles.items():
            self.diff_combo.addItem(f"profile {profile.label}", f"profile:{key}")
        self.diff_combo.addItem("another GGUF file...", "file")
        self._updating = False

    def select_profile(self, key: str) -> None:
        """Show ``key`` ("stored" for the file's own types) as the picked profile."""
        index = self.profile_combo.findData(key)
        if index >= 0:
            self._updating = True
            self.profile_combo.setCurrentIndex(index)
            self._updating = False

    def set_diff_choice(self, value: str, summary: str = "") -> None:
        index = self.diff_combo.findData(value)
        if index < 0 and value:
            # The item names what is compared (the summary below it changes with every edit).
            path = value.removeprefix("gguf:")
            self.diff_combo.addItem(f"file {Path(path).name}" if value.startswith("gguf:") else value,
                                    value)
            index = self.diff_combo.count() - 1
            self.diff_combo.setItemData(index, path, Qt.ItemDataRole.ToolTipRole)
        self._updating = True
        self.diff_combo.setCurrentIndex(max(index, 0))
        self._updating = False
        self.diff_label.setText(summary)

    def set_detected(self, text: str) -> None:
        self.detected_label.setText(text)
        self.detected_label.setVisible(bool(text))

    def set_plan(self, plan: PrecisionPlan | None, baseline_bytes: int, baseline_label: str) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._plan = plan
        self._baseline_bytes = baseline_bytes
        self._baseline_label = baseline_label
        if plan is not None:
            self._unsubscribe = plan.subscribe(lambda _change: self.refresh())
        self.refresh()

    def _show_name(self, plan: PrecisionPlan | None) -> None:
        """The plan's own name and note when an edit made it another plan (the optimizer's),
        else the profile's: the panel never calls the optimizer's plan "Quality"."""
        combo = self.profile_combo
        named = combo.findData(NAMED_PLAN)
        self._updating = True
        if plan is not None and plan.note:
            if named < 0:
                combo.insertItem(0, plan.origin, NAMED_PLAN)
                named = 0
            combo.setItemText(named, plan.origin)
            combo.setItemData(named, plan.note, Qt.ItemDataRole.ToolTipRole)
            combo.setCurrentIndex(named)
        elif named >= 0:
            combo.removeItem(named)
            key = plan.profile.key if plan is not None and plan.profile is not None else "stored"
            combo.setCurrentIndex(max(combo.findData(key), 0))
        self._updating = False
        if plan is None:
            # Left as it is: hiding the note before the first model is shown left it too
            # short (clipped) once it reappeared in the scroll area.
            return
        profile = plan.profile
        note = profile.description if profile is not None else ""
        if profile is not None:
            # Band depths are layer counts: on a shallow model say which types go unused.
            shallow = shallow_model_note(profile, plan.model.n_layer)
            if shallow:
                note = f"{note.rstrip('.')}. {shallow}" if note else shallow
        if plan.note:
            note = plan.note
        self.profile_note.setText(note)
        self.profile_note.setVisible(bool(note))

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def set_selection_size(self, count: int, brush: str) -> None:
        self.apply_button.setEnabled(count > 0)
        self.apply_button.setText(f"Set {count} selected cell(s) to {brush}" if count
                                  else f"Set selection to {brush}")

    def set_hardware(self, snapshot: HardwareSnapshot | None, note: str = "") -> None:
        self._snapshot = snapshot
        if snapshot is None:
            self.fit_summary.setText(note or "hardware not probed")
        self._refresh_fit()

    def set_manual_devices_text(self, text: str) -> None:
        self.device_edit.setText(text)
        self._parse_devices(text)
        self._refresh_fit()

    # --- refresh ----------------------------------------------------------------------------
    def refresh(self) -> None:
        plan = self._plan
        self._show_name(plan)
        self.reset_button.setEnabled(plan is not None)
        self.save_button.setEnabled(plan is not None)
        if plan is None:
            for label in (self.size_label, self.bytes_label, self.bpw_label, self.change_label):
                label.setText("-")
            self.role_table.setRowCount(0)
            self.problems_list.clear()
            self._refresh_fit()
            return
        total = plan.total_bytes()
        self.size_label.setText(format_size(total))
        # Model cards quote GiB under the name "GB" (Trinity Quality "219 GB" = 235 GB):
        # show both so a user can compare with a card.
        binary = format_size(total, binary=True)
        self.bytes_label.setText(f"{total:,}  ({binary})")
        self.bpw_label.setText(f"{plan.bits_per_weight():.3f}")
        if self._baseline_bytes and total == self._baseline_bytes:
            self.change_label.setText(f"none (0 bytes) vs {self._baseline_label}")
        elif self._baseline_bytes:
            delta = total - self._baseline_bytes
            share = delta / self._baseline_bytes
            sign = "+" if delta > 0 else ""
            self.change_label.setText(f"{sign}{format_size(delta, like=total)} ({sign}{delta:,} bytes, "
                                      f"{sign}{share:.2%}) vs {self._baseline_label}")
        else:
            self.change_label.setText("-")
        by_role = plan.bytes_by_role()
        bpw_by_role = plan.bits_per_weight_by_role()
        rows = sorted(((role, nbytes) for role, nbytes in by_role.items() if nbytes),
                      key=lambda item: -item[1])
        self.role_table.setRowCount(len(rows))
        for row, (role, nbytes) in enumerate(rows):
            self.role_table.setItem(row, 0, QTableWidgetItem(role.value))
            size_item = QTableWidgetItem(format_size(nbytes))
            size_item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            size_item.setToolTip(f"{nbytes:,} bytes")
            self.role_table.setItem(row, 1, size_item)
            bpw_item = QTableWidgetItem(f"{bpw_by_role.get(role, 0.0):.2f}")
            bpw_item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.role_table.setItem(row, 2, bpw_item)
        header_h = self.role_table.horizontalHeader().height()
        self.role_table.setFixedHeight(header_h + sum(self.role_table.rowHeight(r) for r in range(len(rows))) + 4)
        self._refresh_problems(plan.problems())
        self._refresh_fit()

    def _refresh_problems(self, problems: list[PlanProblem]) -> None:
        self.problems_list.clear()
        counts: dict[str, int] = {}
        for problem in problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        names = {"fallback": "row-length fallback", "needs-imatrix": "need an imatrix",
                 "unknown-type": "unknown type"}
        if not problems:
            self.problems_summary.setText("No problems: every tensor gets the type planned.")
            self.problems_list.hide()
            return
        self.problems_summary.setText(", ".join(f"{count} {names.get(kind, kind)}"
                                                for kind, count in counts.items()))
        self.problems_list.show()
        for problem in problems[:PROBLEMS_SHOWN]:
            item = QListWidgetItem(problem.message)
            item.setData(Qt.ItemDataRole.UserRole, problem.tensor)
            item.setToolTip(problem.message)
            self.problems_list.addItem(item)
        if len(problems) > PROBLEMS_SHOWN:
            self.problems_list.addItem(f"... and {len(problems) - PROBLEMS_SHOWN} more")

    def _problem_activated(self, item: QListWidgetItem) -> None:
        tensor = item.data(Qt.ItemDataRole.UserRole)
        if tensor:
            self.problemActivated.emit(str(tensor))

    def _devices_edited(self) -> None:
        text = self.device_edit.text().strip()
        self._parse_devices(text)
        self.manualDevicesChanged.emit(text)
        self._refresh_fit()

    def _parse_devices(self, text: str) -> None:
        self._manual_devices = []
        self.device_error.hide()
        if not text:
            return
        try:
            self._manual_devices = parse_device_spec(text)
        except ValueError as error:
            self.device_error.setText(str(error))
            self.device_error.show()

    def fit_bars(self) -> list[FitBar]:
        return [bar for bar in self._fit_bars if bar.isVisible() or not self.isVisible()]

    def _refresh_fit(self) -> None:
        plan, snapshot = self._plan, self._snapshot
        devices = self._manual_devices or (list(snapshot.gpus) if snapshot else [])
        if plan is None or (snapshot is None and not self._manual_devices):
            for bar in self._fit_bars:
                bar.hide()
            return
        weights = plan.total_bytes()
        system_available = snapshot.system.available_bytes if snapshot else 0
        placed, in_ram, fits = place_weights(weights, devices, system_available)
        pools: list[tuple[str, int, int, bool]] = [
            (f"GPU {d.index} {d.name}", taken, d.free_bytes if d.source == "nvml" else d.total_bytes,
             False) for d, taken in placed]
        if snapshot is not None:
            pools.append(("RAM (available)", in_ram, system_available, not fits))
        while len(self._fit_bars) < len(pools):
            bar = FitBar()
            self._fit_bars.append(bar)
            self.fit_bars_layout.addWidget(bar)
        for bar, pool in zip(self._fit_bars, pools):
            bar.set_values(*pool)
            bar.show()
        for bar in self._fit_bars[len(pools):]:
            bar.hide()
        if not devices:
            where = "no GPU found: the weights go to system RAM"
            if snapshot is not None and snapshot.notes:
                where += f" ({snapshot.notes[0]})"
        elif in_ram == 0:
            where = "the weights fit in GPU memory (add KV cache and buffers before you rely on it)"
        else:
            where = f"{format_size(in_ram)} of weights spill to system RAM"
        if not fits:
            where = (f"does not fit: {format_size(weights)} of weights, "
                     f"{format_size(sum(t for _, t in placed) + system_available)} of memory")
        self.fit_summary.setText(where)

    # --- user choices ---------------------------------------------------------------------
    def _profile_activated(self, index: int) -> None:
        if not self._updating and self.profile_combo.itemData(index) != NAMED_PLAN:
            self.profileRequested.emit(str(self.profile_combo.itemData(index)))

    def _diff_activated(self, index: int) -> None:
        if not self._updating:
            self.diffRequested.emit(str(self.diff_combo.itemData(index) or ""))
