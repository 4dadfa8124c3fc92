"""The main window: precision heatmap in the centre, plan panel on the right, model info below.

The window holds the current :class:`ModelInfo` and :class:`PrecisionPlan`, opens files on
the worker pool, and tells other panels what the user is looking at through
``modelChanged`` / ``planChanged``. Panels added later (hardware and tiers, runs, results)
come in through :meth:`MainWindow.add_panel`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QApplication, QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QProgressBar,
    QTabWidget, QVBoxLayout, QWidget,
)

from apex_gui.core.fit import hardware
from apex_gui.core.fixtures.bundled_demo import demo_model
from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.plan.detect import ProfileMatch
from apex_gui.core.plan.precision import PrecisionPlan, plan_from_gguf, plan_from_profile
from apex_gui.core.plan.profiles import Profile
from apex_gui.core.settings import (Settings, add_recent_file, cache_dir, config_dir,
                                    load_settings, save_settings)
from apex_gui.core.units import readable_size
from apex_gui.qt.workers import CancelToken, Task, WorkerPool
from apex_gui.views import style
from apex_gui.views.heatmap.bits_legend import BitsLegend
from apex_gui.views.plan.export_dialog import ExportedDialog
from apex_gui.views.heatmap.heatmap import PrecisionHeatmap
from apex_gui.views.window.main_window_compare import PlanComparison
from apex_gui.views.window.main_window_dialogs import WindowDialogs
from apex_gui.views.window.main_window_menus import MainWindowMenus
from apex_gui.views.window.main_window_profiles import ProfileActions
from apex_gui.views.hardware.memory_breakdown import MemoryBreakdownView
from apex_gui.views.window.model_info import ModelInfoView
from apex_gui.views.window.model_loading import (
    DEFAULT_PROFILE, LoadedModel, PANEL_AREAS, is_quantized, load_model, open_error_message,
)
from apex_gui.views.plan.plan_panel import PlanPanel
from apex_gui.views.heatmap.tensor_browser import MetadataBrowser, TensorTable


class MainWindow(WindowDialogs, ProfileActions, PlanComparison, MainWindowMenus, QMainWindow):
    """APEX Studio's window."""

    modelChanged = Signal(object)  # ModelInfo | None
    planChanged = Signal(object)  # PrecisionPlan: a new plan, or an edit/undo/redo of it
    errorShown = Signal(str, str)  # title, message: every error dialog goes through this
    modelLoadFinished = Signal(float)  # seconds from request to heatmap
    settingsChanged = Signal(object)  # Settings, after the settings dialog was accepted

    def __init__(self, settings: Settings | None = None, probe_hardware: bool = True) -> None:
        super().__init__()
        self.setObjectName("apexMainWindow")
        self.setWindowTitle("APEX Studio")
        self.setWindowIcon(style.icon("apex-studio"))
        self.setAcceptDrops(True)
        self.settings = settings or load_settings()
        self.workers = WorkerPool(self)
        self.current_model: ModelInfo | None = None
        self.current_plan: PrecisionPlan | None = None
        self.reference_plan: PrecisionPlan | None = None
        self.profile_matches: list[ProfileMatch] = []
        self.last_open_seconds = 0.0
        self._profile_key = DEFAULT_PROFILE
        self._baseline: PrecisionPlan | None = None
        self._load_task: Task | None = None
        self._load_started = 0.0
        self._compare_task: Task | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._close_guards: list[Callable[[], bool]] = []
        self._error_box: QMessageBox | None = None
        self._diff_choice = ""
        self._detected_plan: PrecisionPlan | None = None
        self.exported_dialog: ExportedDialog | None = None
        self.hardware_snapshot: object | None = None  # the last probe: fit badges in the Hub search
        self._edits_kept = False  # the edits were exported or saved as a profile since the last change
        self._state_timer = QTimer(self)
        self._state_timer.setSingleShot(True)
        self._state_timer.setInterval(0)
        self._state_timer.timeout.connect(self._update_title)
        self._state_timer.timeout.connect(self._update_actions)
        self._build_ui()
        self._build_actions()
        self._restore_geometry()
        self._update_actions()
        if probe_hardware:
            self.probe_hardware()
        else:
            self.plan_panel.set_hardware(None, "hardware not probed")

    # --- layout ---------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.heatmap = PrecisionHeatmap()
        self.legend = BitsLegend()
        map_page = QWidget()
        map_layout = QVBoxLayout(map_page)
        map_layout.setContentsMargins(4, 4, 4, 0)
        map_layout.setSpacing(2)
        map_layout.addWidget(self.heatmap, 1)
        map_layout.addWidget(self.legend)
        self.center_tabs = QTabWidget()
        self.center_tabs.setObjectName("centerTabs")
        self.center_tabs.setDocumentMode(True)
        self.center_tabs.addTab(map_page, "Precision map")
        self.tensor_table = TensorTable()
        self.metadata_browser = MetadataBrowser()
        self.center_tabs.addTab(self.tensor_table, "Tensors")
        self.center_tabs.addTab(self.metadata_browser, "Metadata")
        # The Plan column follows edits, batched: a drag stroke is one refresh, not dozens.
        self._tensor_refresh = QTimer(self)
        self._tensor_refresh.setSingleShot(True)
        self._tensor_refresh.setInterval(150)
        self._tensor_refresh.timeout.connect(self._refresh_tensor_table)
        central = QWidget()
        self._central_layout = QVBoxLayout(central)  # banners above the tabs (add_banner)
        self._central_layout.setContentsMargins(0, 0, 0, 0)
        self._central_layout.setSpacing(0)
        self._central_layout.addWidget(self.center_tabs, 1)
        self.setCentralWidget(central)

        self.plan_panel = PlanPanel()
        self.right_tabs = QTabWidget()
        self.right_tabs.setObjectName("rightTabs")
        self.right_tabs.addTab(self.plan_panel, "Plan")
        self.memory_view = MemoryBreakdownView()
        self.right_tabs.addTab(self.memory_view, "Memory")
        self.right_dock = QDockWidget("Plan and numbers", self)
        self.right_dock.setObjectName("rightDock")
        self.right_dock.setWidget(self.right_tabs)
        self.right_dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable |
                                    QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.right_dock)

        self.model_info = ModelInfoView()
        self.bottom_tabs = QTabWidget()
        self.bottom_tabs.setObjectName("bottomTabs")
        self.bottom_tabs.addTab(self.model_info, "Model")
        self.bottom_dock = QDockWidget("Model", self)
        self.bottom_dock.setObjectName("bottomDock")
        self.bottom_dock.setWidget(self.bottom_tabs)
        self.bottom_dock.setFeatures(self.right_dock.features())
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.bottom_dock)
        # Explicit minimums: otherwise the largest page (Hardware & tiers, Run) sets the
        # window's minimum, 942x635, and at 2x scaling on a 1080p screen (960x540 logical)
        # the window could not fit. A page smaller than its own wish scrolls or clips instead.
        self.center_tabs.setMinimumSize(320, 200)
        self.right_tabs.setMinimumHeight(150)  # its width stays the Plan panel's own minimum
        self.bottom_tabs.setMinimumSize(200, 60)
        self.resizeDocks([self.right_dock], [400], Qt.Orientation.Horizontal)
        self.resizeDocks([self.bottom_dock], [170], Qt.Orientation.Vertical)

        self.hover_label = QLabel("")
        self.busy_bar = QProgressBar()
        self.busy_bar.setMaximumWidth(160)
        self.busy_bar.setRange(0, 0)
        self.busy_bar.hide()
        self.busy_label = QLabel("")  # what the background work is, beside its busy bar
        self.busy_label.hide()
        self.statusBar().addPermanentWidget(self.hover_label)
        self.statusBar().addPermanentWidget(self.busy_label)
        self.statusBar().addPermanentWidget(self.busy_bar)

        self.heatmap.selectionChanged.connect(self._selection_changed)
        self.heatmap.hoveredCellChanged.connect(self._hovered)
        self.heatmap.editMade.connect(self._edit_made)
        self.plan_panel.brushChanged.connect(self._brush_changed)
        self.plan_panel.profileRequested.connect(self.switch_profile)
        self.plan_panel.resetRequested.connect(self.reset_to_profile)
        self.plan_panel.saveProfileRequested.connect(self.save_as_profile)
        self.plan_panel.diffRequested.connect(self.set_diff)
        self.plan_panel.applyRequested.connect(lambda: self.heatmap.apply_to_selection())
        self.plan_panel.problemActivated.connect(self.show_tensor)
        self.plan_panel.manualDevicesChanged.connect(self._manual_devices_changed)
        self.plan_panel.probeRequested.connect(self.probe_hardware)
        self.plan_panel.set_manual_devices_text(self.settings.manual_devices)
        self.plan_panel.palette_widget.set_current_type("Q4_K")
        self.workers.busyChanged.connect(self.busy_bar.setVisible)
        self.workers.tasksChanged.connect(self._background_tasks_changed)

    def _background_tasks_changed(self, descriptions: list[str]) -> None:
        text = descriptions[0] if descriptions else ""
        if len(descriptions) > 1:
            text += f" (+{len(descriptions) - 1} more)"
        self.busy_label.setText(text)
        self.busy_label.setVisible(bool(descriptions))
        self.busy_bar.setToolTip("Working: " + ", ".join(descriptions) if descriptions else "")


    # --- panels for other views -------------------------------------------------------------
    def add_panel(self, title: str, widget: QWidget, area: str = "right") -> None:
        """Add a panel as a tab: "right" (beside Plan), "bottom" (beside Model) or "center"."""
        tabs = {"right": self.right_tabs, "bottom": self.bottom_tabs, "center": self.center_tabs}.get(area)
        if tabs is None:
            raise ValueError(f"unknown panel area {area!r}; use one of {', '.join(PANEL_AREAS)}")
        tabs.addTab(widget, title)

    def add_banner(self, widget: QWidget) -> None:
        """A strip across the top of the centre area (a problem the user must see first)."""
        self._central_layout.insertWidget(self._central_layout.count() - 1, widget)

    def add_close_guard(self, guard: Callable[[], bool]) -> None:
        """``guard()`` runs before the window closes; returning False keeps it open."""
        self._close_guards.append(guard)

    # --- opening ----------------------------------------------------------------------------
    def choose_file(self) -> None:
        start = str(Path(self.settings.recent_files[0]).parent) if self.settings.recent_files else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", start,
                                              "GGUF models (*.gguf);;All files (*)")
        if path:
            self.open_model_file(Path(path))

    def open_demo(self) -> None:
        """Open the bundled trained MoE (copied to the cache: outputs made from it land there)."""
        try:
            demo = demo_model(cache_dir())
        except OSError as exc:
            QMessageBox.warning(self, "Demo model", f"Could not prepare the demo model in "
                                f"{cache_dir()}: {exc}. Free some space or set "
                                "APEX_STUDIO_CACHE_DIR to a writable folder.")
            return
        if demo.note:
            self.statusBar().showMessage(demo.note, 15000)
        profile_key = self._profile_key  # read here: the worker never touches the window
        self._start_load("the demo model", lambda token: load_model(
            demo.path, profile_key, token), remember=False)

    def open_model_file(self, path: str | Path) -> None:
        """Open a GGUF off the GUI thread; the heatmap follows when it is read."""
        file_path = Path(path).expanduser()
        profile_key = self._profile_key  # read here: the worker never touches the window
        self._start_load(file_path.name, lambda token: load_model(file_path, profile_key, token),
                         remember=True, path=file_path)

    def has_unsaved_edits(self) -> bool:
        """True when the plan holds hand edits that no export or profile has kept."""
        plan = self.current_plan
        return plan is not None and plan.can_undo() and not self._edits_kept

    def allow_dropping_edits(self) -> None:
        """The current edits may go without asking (screenshot mode's staged edits)."""
        self._edits_kept = True

    def keep_edits_prompt(self, action: str) -> bool:
        """Ask before ``action`` drops hand edits; True when the caller may go on.

        Save exports the tensor-type file first (going on only if it was written), Discard
        goes on, Cancel (also Esc) keeps the plan and its undo history untouched.
        """
        if not self.has_unsaved_edits() or not self.isVisible():
            return True  # nothing to lose, or no window on screen to ask from (scripted use)
        assert self.current_plan is not None
        box = QMessageBox(QMessageBox.Icon.Question, "Keep your changes?",
                          f"{self._edit_summary()} {action} drops them and their undo history.",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard |
                          QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("keepEditsBox")
        box.setInformativeText("Save writes the tensor-type file (as File > Export does) first.")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setEscapeButton(QMessageBox.StandardButton.Cancel)
        answer = box.exec()
        if answer == QMessageBox.StandardButton.Save:
            return self.export_tensor_type_file()
        return answer == QMessageBox.StandardButton.Discard

    def _edit_summary(self) -> str:
        plan, baseline = self.current_plan, self._baseline
        assert plan is not None
        changed = len(plan.diff(baseline)) if baseline is not None else 0
        origin = baseline.origin if baseline is not None else plan.origin
        return f"Your edits to the plan (now {changed} tensor(s) differ from {origin}) are not saved."

    def _start_load(self, label: str, function: Callable[[CancelToken], LoadedModel],
                    remember: bool, path: Path | None = None) -> None:
        if not self.keep_edits_prompt(f"Opening {label}"):
            self.statusBar().showMessage(f"Did not open {label}: your edits are kept", 6000)
            return
        if self._load_task is not None:
            self._load_task.cancel()
        self._load_started = time.perf_counter()
        self.statusBar().showMessage(f"Opening {label}...")
        task = self.workers.submit(f"open {label}", function)
        self._load_task = task
        task.finished.connect(lambda loaded: self._loaded(task, loaded, remember))
        task.failed.connect(lambda error: self._load_failed(task, path or Path(label), error))
        task.progress.connect(lambda _f, text: self.statusBar().showMessage(f"Opening {label}: {text}"))

    def _load_failed(self, task: Task, path: Path, error: object) -> None:
        if task is self._load_task:
            self._load_task = None
        assert isinstance(error, BaseException)
        self.statusBar().showMessage(f"Could not open {path.name}", 8000)
        self.show_error(f"Cannot open {path.name}", open_error_message(path, error))

    def _loaded(self, task: Task, loaded: object, remember: bool) -> None:
        if task is not self._load_task:
            return  # superseded by a later open
        self._load_task = None
        assert isinstance(loaded, LoadedModel)
        self._install(loaded)
        if remember:
            add_recent_file(self.settings, str(loaded.model.path))
            self._save_settings()
        self.last_open_seconds = time.perf_counter() - self._load_started
        self.statusBar().showMessage(
            f"Opened {loaded.model.path.name}: {len(loaded.model.tensors)} tensors, "
            f"{loaded.model.n_layer} layers in {self.last_open_seconds:.2f} s", 8000)
        self.modelLoadFinished.emit(self.last_open_seconds)

    def _install(self, loaded: LoadedModel) -> None:
        model = loaded.model
        self.current_model = model
        self.profile_matches = loaded.matches
        detected = loaded.matches[0].profile if loaded.matches else None
        self._detected_plan = loaded.detected_plan
        stored_label = f"As stored in {model.path.name}" if is_quantized(model) else None
        self.plan_panel.set_profiles(loaded.profiles, loaded.profile_key, stored_label)
        self.plan_panel.set_detected(f"Detected: {loaded.matches[0].describe()}" if loaded.matches else "")
        self.model_info.setHtml(loaded.summary_html)
        # The tables wait one event-loop turn: the map shows first, the GUI never stalls
        # for the sum of everything (a 400B model has thousands of rows).
        QTimer.singleShot(0, lambda: self._fill_browsers(loaded))
        self._set_reference(None, "", "")
        self._set_plan(loaded.plan, band_profile=detected, baseline=loaded.baseline)
        self.modelChanged.emit(model)
        if loaded.matches and not loaded.matches[0].exact:
            # A quantized file: show at once where it departs from the closest profile.
            self.set_diff("detected")
        QTimer.singleShot(0, self.heatmap.zoom_to_fit)

    def _set_plan(self, plan: PrecisionPlan, band_profile: Profile | None = None,
                  baseline: PrecisionPlan | None = None) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.current_plan = plan
        self._edits_kept = False
        self._unsubscribe = plan.subscribe(self._plan_edited)
        if plan.profile is not None:
            self._baseline = baseline or plan_from_profile(plan.model, plan.profile)
            baseline_label = f"profile {plan.profile.label}"
        else:
            self._baseline = baseline or plan_from_gguf(plan.model)
            baseline_label = "the file as stored"
        self.heatmap.set_plan(plan, band_profile)
        self._tensor_refresh.start()
        self.plan_panel.set_plan(plan, self._baseline.total_bytes(), baseline_label)
        self._update_title()
        self._update_actions()
        self.memory_view.set_plan(plan)
        self.planChanged.emit(plan)

    def _fill_browsers(self, loaded: LoadedModel) -> None:
        if loaded.model is not self.current_model:
            return  # superseded by a later open
        self.tensor_table.set_model(loaded.model, rows=loaded.tensor_rows)
        self.metadata_browser.set_model(loaded.model, rows=loaded.metadata_rows)
        self._refresh_tensor_table()

    @staticmethod
    def _planned_types(plan: PrecisionPlan) -> dict[str, str]:
        return {name: plan.effective_type(name) for name in plan.types}

    def _refresh_tensor_table(self) -> None:
        if self.current_plan is not None:
            self.tensor_table.set_planned(self.current_model, self._planned_types(self.current_plan))

    def _plan_edited(self, _change: object) -> None:
        self._edits_kept = False
        self.memory_view.set_plan(self.current_plan)
        self._tensor_refresh.start()
        # Title and actions are refreshed from the event loop (a 0 ms single-shot timer), so
        # a burst of edits updates them once.
        self._state_timer.start()
        if self.reference_plan is not None:
            self._update_diff_summary()
        assert self.current_plan is not None
        self.planChanged.emit(self.current_plan)


    # --- edits ------------------------------------------------------------------------------
    def undo(self) -> None:
        if self.current_plan is not None:
            change = self.current_plan.undo()
            if change is not None:
                self.statusBar().showMessage(f"Undid: {change.description}", 4000)

    def redo(self) -> None:
        if self.current_plan is not None:
            change = self.current_plan.redo()
            if change is not None:
                self.statusBar().showMessage(f"Redid: {change.description}", 4000)

    def _select_all(self) -> None:
        if self.current_plan is not None:
            self.heatmap.set_selection(self.current_plan.cells())

    def _edit_made(self, description: str) -> None:
        if self.current_plan is not None:
            self.statusBar().showMessage(
                f"{description}: now {readable_size(self.current_plan.total_bytes())} (Ctrl+Z undoes it)", 5000)

    def _brush_changed(self, type_name: str) -> None:
        self.heatmap.brush_type = type_name
        # "Pick a type and press Enter": the map keeps the keyboard, not the palette button.
        self.heatmap.setFocus(Qt.FocusReason.OtherFocusReason)
        self.plan_panel.set_selection_size(len(self.heatmap.selection()), type_name)

    def _selection_changed(self, cells: list) -> None:  # type: ignore[type-arg]
        self.plan_panel.set_selection_size(len(cells), self.heatmap.brush_type)
        if cells:
            self.statusBar().showMessage(f"{len(cells)} cells selected: pick a type and press Enter", 4000)

    def _hovered(self, cell: object) -> None:
        plan = self.current_plan
        if plan is None or cell is None:
            self.hover_label.setText("")
            return
        layer, kind = cell  # type: ignore[misc]
        state = self.heatmap.cell_state(cell)  # type: ignore[arg-type]
        where = "non-layer" if layer is None else f"layer {layer}"
        shown = "" if state is None else state.effective
        self.hover_label.setText(f"{where} {kind}: {shown}, {plan.cell_bytes(layer, kind):,} bytes")

    def show_tensor(self, name: str) -> None:
        """Select and scroll to the cell that holds a tensor (from the problems list)."""
        model = self.current_model
        if model is None:
            return
        tensor = model.tensor(name)
        cell = (tensor.layer, tensor.kind)
        self.heatmap.set_selection([cell])
        self.heatmap.ensure_visible(cell)

    def export_tensor_type_file(self) -> bool:
        """Ask for a path and write the plan's tensor-type file; True when it was written."""
        plan = self.current_plan
        if plan is None:
            return False
        suggested = plan.model.path.with_name(f"{plan.model.path.stem}.tensor-types.txt")
        path, _ = QFileDialog.getSaveFileName(self, "Export tensor-type file", str(suggested),
                                              "Text files (*.txt);;All files (*)")
        if not path:
            return False
        try:
            plan.write_tensor_type_file(path)
        except OSError as error:
            self.show_error("Cannot export", f"{path}: {error.strerror or error}. Choose another folder.")
            return False
        self._edits_kept = True
        self.statusBar().showMessage(f"Wrote {path}", 8000)
        self.exported_dialog = ExportedDialog(plan, Path(path), self)
        self.exported_dialog.open()
        return True

    # --- hardware ---------------------------------------------------------------------------
    def probe_hardware(self) -> None:
        task = self.workers.submit("probe hardware", lambda _token: hardware.snapshot())
        task.finished.connect(lambda snap: self.plan_panel.set_hardware(snap))  # type: ignore[arg-type]
        task.finished.connect(self.memory_view.set_hardware)
        task.finished.connect(lambda snap: setattr(self, "hardware_snapshot", snap))
        task.failed.connect(lambda error: self.plan_panel.set_hardware(None, f"hardware probe failed: {error}"))

    def _manual_devices_changed(self, text: str) -> None:
        self.settings.manual_devices = text
        self._save_settings()


    @staticmethod
    def _dropped_gguf(event: QDragEnterEvent | QDropEvent) -> Path | None:
        for url in event.mimeData().urls():
            if url.isLocalFile() and url.toLocalFile().lower().endswith(".gguf"):
                return Path(url.toLocalFile())
        return None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self._dropped_gguf(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        path = self._dropped_gguf(event)
        if path is not None:
            event.acceptProposedAction()
            self.open_model_file(path)

    # --- state ------------------------------------------------------------------------------
    def _update_title(self) -> None:
        model, plan = self.current_model, self.current_plan
        if model is None or plan is None:
            self.setWindowTitle("APEX Studio")
            return
        edited = "*" if plan.can_undo() else ""
        self.setWindowTitle(f"{edited}{model.name} ({model.path.name}): {plan.origin} - APEX Studio")

    def _update_actions(self) -> None:
        plan = self.current_plan
        has_plan = plan is not None
        self.undo_action.setEnabled(has_plan and plan.can_undo())  # type: ignore[union-attr]
        self.redo_action.setEnabled(has_plan and plan.can_redo())  # type: ignore[union-attr]
        for action in (self.reset_action, self.export_action, self.compare_action, self.diff_action,
                       self.apply_action, self.select_all_action, self.try_action):
            action.setEnabled(has_plan)

    def _save_settings(self) -> None:
        try:
            save_settings(self.settings)
        except OSError as error:
            self.statusBar().showMessage(f"Could not save settings: {error}", 8000)

    def _window_settings(self) -> QSettings:
        # Window geometry only; everything else is the typed settings file.
        return QSettings(str(config_dir() / "window.ini"), QSettings.Format.IniFormat)

    def _restore_geometry(self) -> None:
        stored = self._window_settings()
        geometry = stored.value("geometry")
        state = stored.value("state")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1440, 900)
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
        self._fit_to_screen()

    def _fit_to_screen(self) -> None:
        """Never larger than the screen: geometry saved at 1x and restored at 2x scaling (or on
        a smaller monitor) came back bigger than the screen, title bar and edges unreachable."""
        screen = self.screen() or QApplication.primaryScreen()
        if screen is None:
            return
        available = screen.availableGeometry()
        width, height = min(self.width(), available.width()), min(self.height(), available.height())
        if (width, height) != (self.width(), self.height()):
            self.resize(width, height)
        # The side panel takes at most a third of a narrow window, so the map keeps its columns.
        self.resizeDocks([self.right_dock], [min(400, max(width // 3, 260))], Qt.Orientation.Horizontal)
        # And the model dock at most a fifth of a short window (2x scaling on a 1080p screen
        # leaves 540 logical pixels): the map keeps its rows readable.
        self.resizeDocks([self.bottom_dock], [max(100, min(170, height // 5))],
                         Qt.Orientation.Vertical)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.keep_edits_prompt("Quitting") or not all(guard() for guard in self._close_guards):
            event.ignore()
            return
        stored = self._window_settings()
        stored.setValue("geometry", self.saveGeometry())
        stored.setValue("state", self.saveState())
        stored.sync()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.heatmap.detach()
        self.plan_panel.detach()
        self.workers.shutdown()
        super().closeEvent(event)
