"""The main window: precision heatmap in the centre, plan panel on the right, model info below.

The window holds the current :class:`ModelInfo` and :class:`PrecisionPlan`, opens files on
the worker pool, and tells other panels what the user is looking at through
``modelChanged`` / ``planChanged``. Panels added later (hardware and tiers, runs, results)
come in through :meth:`MainWindow.add_panel`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import (QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent,
                           QKeySequence)
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QInputDialog, QLabel,
                               QMainWindow, QMessageBox, QProgressBar, QTabWidget, QVBoxLayout,
                               QWidget)

from apex_gui import __version__
from apex_gui.core import hardware
from apex_gui.core.gguf.browse import MetadataRow, TensorRow, metadata_rows, tensor_rows
from apex_gui.core.gguf_reader import GGUFError
from apex_gui.core.model import FileKind, ModelInfo, open_model
from apex_gui.core.plan import (PrecisionPlan, ProfileMatch, detect_profile, plan_from_gguf,
                                plan_from_profile)
from apex_gui.core.plan_profile import profile_from_plan
from apex_gui.core.profiles import (Profile, ProfileError, all_profiles, get_profile,
                                    save_user_profile, user_profiles)
from apex_gui.core.settings import (Settings, add_recent_file, cache_dir, config_dir,
                                    load_settings, save_settings)
from apex_gui.core.synthetic import demo_model_path
from apex_gui.workers import CancelToken, Task, WorkerPool

from . import style
from .export_dialog import ExportedDialog
from .heatmap import BitsLegend, PrecisionHeatmap
from .memory_breakdown import MemoryBreakdownView
from .tensor_browser import MetadataBrowser, TensorTable
from .try_quant import TryQuantDialog
from .hf_download import HubDownloadDialog
from .model_info import ModelInfoView, render_summary_html
from .plan_panel import PlanPanel, readable_size
from .settings_dialog import SettingsDialog

DEFAULT_PROFILE = "quality"
UNQUANTIZED_FILE_TYPES = {"F32", "F16", "BF16", "unknown"}
PANEL_AREAS = ("right", "bottom", "center")


@dataclass
class LoadedModel:
    """What the open worker hands to the GUI thread: everything computed, nothing to wait on."""

    model: ModelInfo
    plan: PrecisionPlan
    profile_key: str | None  # None: the plan is the file's own types
    matches: list[ProfileMatch]
    baseline: PrecisionPlan  # what "reset" returns to and "change" is measured against
    detected_plan: PrecisionPlan | None  # the closest profile's plan, for diff mode
    profiles: dict[str, Profile]
    summary_html: str
    seconds: float
    tensor_rows: list[TensorRow] = field(default_factory=list)  # the Tensors tab, made off-thread
    metadata_rows: list[MetadataRow] = field(default_factory=list)


def is_quantized(model: ModelInfo) -> bool:
    return model.file_type not in UNQUANTIZED_FILE_TYPES


def load_model(path: Path, profile_key: str, token: CancelToken) -> LoadedModel:
    """Open a GGUF and build its first plan (runs on a worker thread; Qt-free)."""
    started = time.perf_counter()
    token.progress(0.1, f"reading {path.name}")
    model = open_model(path)
    if model.file_kind is not FileKind.MODEL:
        raise GGUFError(path, f"is a {model.file_kind.value}, not a model: open the model "
                              "GGUF it belongs to")
    token.raise_if_cancelled()
    # Everything that costs more than a few milliseconds is computed here, so the GUI
    # thread only hands finished objects to the widgets (a 400B model stays smooth).
    matches: list[ProfileMatch] = []
    detected_plan: PrecisionPlan | None = None
    if is_quantized(model):
        token.progress(0.5, "detecting the profile")
        plan = plan_from_gguf(model)
        baseline = plan_from_gguf(model)
        matches = detect_profile(model)
        detected_plan = plan_from_profile(model, matches[0].profile) if matches else None
        key: str | None = None
    else:
        token.progress(0.5, "planning")
        profile = get_profile(profile_key)
        plan = plan_from_profile(model, profile)
        baseline = plan_from_profile(model, profile)
        key = plan.profile.key if plan.profile else profile_key
    token.raise_if_cancelled()
    summary = render_summary_html(model, matches)
    planned = {name: plan.effective_type(name) for name in plan.types}
    return LoadedModel(model, plan, key, matches, baseline, detected_plan, all_profiles(), summary,
                       time.perf_counter() - started, tensor_rows(model, planned), metadata_rows(model))


def open_error_message(path: Path, error: BaseException) -> str:
    """A message that names the file and what to do; never a traceback."""
    if isinstance(error, GGUFError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"{path}: the file does not exist (moved or deleted?). Choose it again with File > Open."
    if isinstance(error, PermissionError):
        return f"{path}: permission denied. Check the file's permissions."
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder: choose a .gguf file inside it."
    if isinstance(error, OSError):
        return f"{path}: cannot be read ({error.strerror or error}). Check the disk and the path."
    if isinstance(error, (ValueError, ProfileError)):
        return f"{path}: {error}"
    return (f"{path}: unexpected error ({type(error).__name__}: {error}). Please report it with "
            "the file's `apex-studio inspect` output.")


class MainWindow(QMainWindow):
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

    def _action(self, text: str, slot: Callable[[], object], shortcut: QKeySequence | str | None = None,
                icon: str | None = None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if icon:
            action.setIcon(style.icon(icon))
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        # Tooltips and status tips show text as is: the menu's "&" mnemonic marker must go.
        plain = text.replace("&", "").replace("...", "")
        action.setStatusTip(tip or plain)
        action.setToolTip(f"{plain} ({action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)})"
                          if shortcut is not None else plain)
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.open_action = self._action("&Open...", self.choose_file, QKeySequence.StandardKey.Open,
                                        "open", "Open a GGUF model (any shard of a split model)")
        self.demo_action = self._action("Open the &demo model", self.open_demo,
                                        tip="A small synthetic MoE model, made on first use")
        self.download_action = self._action("&Download from Hugging Face...", self.show_download_dialog,
                                            "Ctrl+Shift+D", "download")
        self.compare_action = self._action("Compare with &another GGUF...", self.choose_compare_file,
                                           "Ctrl+Shift+O", "diff",
                                           "Outline the cells whose type differs from another file")
        self.export_action = self._action("&Export tensor-type file...", self.export_tensor_type_file,
                                          QKeySequence.StandardKey.Save, "save",
                                          "Write the plan as a llama-quantize --tensor-type-file")
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.undo_action = self._action("&Undo", self.undo, QKeySequence.StandardKey.Undo, "undo")
        self.redo_action = self._action("&Redo", self.redo, None, "redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.redo_action.setToolTip("Redo (Ctrl+Shift+Z, Ctrl+Y)")
        self.reset_action = self._action("Reset to &profile", self.reset_to_profile, "Ctrl+R", "reset")
        self.apply_action = self._action("Set &selection to palette type",
                                         lambda: self.heatmap.apply_to_selection(), "Ctrl+Return")
        self.select_all_action = self._action("Select &all cells", self._select_all,
                                              QKeySequence.StandardKey.SelectAll)
        self.clear_selection_action = self._action("&Clear selection", self.heatmap.clear_selection,
                                                   "Ctrl+Shift+A")
        self.zoom_in_action = self._action("Zoom &in", self.heatmap.zoom_in,
                                           QKeySequence.StandardKey.ZoomIn, "zoom-in")
        self.zoom_out_action = self._action("Zoom &out", self.heatmap.zoom_out,
                                            QKeySequence.StandardKey.ZoomOut, "zoom-out")
        self.zoom_fit_action = self._action("&Fit all layers", self.heatmap.zoom_to_fit, "Ctrl+0",
                                            "zoom-fit")
        self.try_action = self._action("&Try this model with a prompt...", self.show_try_dialog,
                                       "Ctrl+T", tip="A short prompt through llama-completion: "
                                       "what this quant writes, and how fast")
        self.settings_action = self._action("&Settings...", self.show_settings,
                                            QKeySequence.StandardKey.Preferences, "settings")
        if self.settings_action.shortcut().isEmpty():
            self.settings_action.setShortcut(QKeySequence("Ctrl+,"))
        self.about_action = self._action("&About APEX Studio", self.show_about)

        self.tool_group = QActionGroup(self)
        self.paint_tool_action = QAction(style.icon("paint"), "&Paint", self)
        self.paint_tool_action.setCheckable(True)
        self.paint_tool_action.setChecked(True)
        self.paint_tool_action.setShortcut(QKeySequence("P"))
        self.paint_tool_action.setToolTip("Paint: click or drag over cells to give them the palette type (P)")
        self.select_tool_action = QAction(style.icon("select"), "&Select", self)
        self.select_tool_action.setCheckable(True)
        self.select_tool_action.setShortcut(QKeySequence("S"))
        self.select_tool_action.setToolTip("Select: drag a rectangle of cells, then press Enter (S)")
        for action, tool in ((self.paint_tool_action, "paint"), (self.select_tool_action, "select")):
            self.tool_group.addAction(action)
            action.triggered.connect(lambda _c=False, t=tool: setattr(self.heatmap, "tool", t))
            self.addAction(action)

        self.diff_action = QAction(style.icon("diff"), "&Diff mode", self)
        self.diff_action.setCheckable(True)
        self.diff_action.setShortcut(QKeySequence("Ctrl+D"))
        self.diff_action.setToolTip("Diff mode: outline cells that differ from the detected "
                                    "or chosen profile (Ctrl+D)")
        self.diff_action.toggled.connect(self._diff_toggled)
        self.addAction(self.diff_action)

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addAction(self.demo_action)
        file_menu.addAction(self.download_action)
        file_menu.addSeparator()
        file_menu.addAction(self.compare_action)
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit_menu = menu.addMenu("&Edit")
        for action in (self.undo_action, self.redo_action, self.reset_action):
            edit_menu.addAction(action)
        edit_menu.addSeparator()
        for action in (self.paint_tool_action, self.select_tool_action, self.apply_action,
                       self.select_all_action, self.clear_selection_action):
            edit_menu.addAction(action)
        view_menu = menu.addMenu("&View")
        for action in (self.zoom_in_action, self.zoom_out_action, self.zoom_fit_action,
                       self.diff_action):
            view_menu.addAction(action)
        view_menu.addSeparator()
        view_menu.addAction(self.right_dock.toggleViewAction())
        view_menu.addAction(self.bottom_dock.toggleViewAction())
        theme_menu = view_menu.addMenu("&Theme")
        self.theme_group = QActionGroup(self)
        for theme in style.THEMES:
            action = theme_menu.addAction(theme.capitalize())
            action.setCheckable(True)
            action.setChecked(theme == self.settings.theme)
            action.triggered.connect(lambda _c=False, t=theme: self.set_theme(t))
            self.theme_group.addAction(action)
        tools_menu = menu.addMenu("&Tools")
        tools_menu.addAction(self.try_action)
        tools_menu.addAction(self.settings_action)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.about_action)

        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("mainToolbar")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (self.open_action, self.download_action, None, self.undo_action,
                       self.redo_action, self.reset_action, None, self.paint_tool_action,
                       self.select_tool_action, self.diff_action, None, self.zoom_in_action,
                       self.zoom_out_action, self.zoom_fit_action, None, self.export_action,
                       self.settings_action):
            toolbar.addSeparator() if action is None else toolbar.addAction(action)
        for action in (self.zoom_in_action, self.zoom_out_action, self.zoom_fit_action,
                       self.undo_action, self.redo_action):
            button = toolbar.widgetForAction(action)
            if button is not None:
                button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)  # type: ignore[attr-defined]

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
        """Open the bundled synthetic MoE (written to the cache on first use)."""
        self._start_load("the demo model", lambda token: load_model(
            demo_model_path(cache_dir()), self._profile_key, token), remember=False)

    def open_model_file(self, path: str | Path) -> None:
        """Open a GGUF off the GUI thread; the heatmap follows when it is read."""
        file_path = Path(path).expanduser()
        self._start_load(file_path.name, lambda token: load_model(file_path, self._profile_key, token),
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

    # --- profiles ---------------------------------------------------------------------------
    def switch_profile(self, key: str) -> None:
        """Replace the plan with a profile's (or, for "stored", the file's own types)."""
        model, plan = self.current_model, self.current_plan
        if model is None or plan is None:
            return
        if plan.can_undo() and not self.confirm(
                "Switch profile?", "Switching the profile starts a new plan: your edits to the "
                "current one are dropped. Export it first (Ctrl+S) to keep them."):
            self.plan_panel.set_profiles(all_profiles(), plan.profile.key if plan.profile else None,
                                         f"As stored in {model.path.name}" if is_quantized(model) else None)
            return
        try:
            if key == "stored":
                new_plan = plan_from_gguf(model)
            else:
                new_plan = plan_from_profile(model, get_profile(key))
                self._profile_key = new_plan.profile.key if new_plan.profile else key
        except (ValueError, ProfileError) as error:
            self.show_error("Cannot use this profile", str(error))
            return
        detected = self.profile_matches[0].profile if self.profile_matches else None
        self._set_plan(new_plan, band_profile=detected)
        # The request may come from elsewhere (Hardware & tiers): the picker shows the result.
        self.plan_panel.select_profile(key if key == "stored" or new_plan.profile is None
                                       else new_plan.profile.key)
        if self.reference_plan is not None:
            self._update_diff_summary()
            self.heatmap.set_reference(self.reference_plan, self.heatmap.reference_label)
        self.statusBar().showMessage(f"Plan: {new_plan.origin}, {readable_size(new_plan.total_bytes())}", 6000)

    def reset_to_profile(self) -> None:
        """Every cell back to the profile's (or the file's) type, as one undoable step."""
        plan, baseline = self.current_plan, self._baseline
        if plan is None or baseline is None:
            return
        change = plan.set_tensor_types(baseline.types, f"reset to {baseline.origin}")
        self.statusBar().showMessage("Already matches the profile" if change is None else
                                     f"Reset to {baseline.origin} (Ctrl+Z undoes it)", 5000)

    def save_as_profile(self) -> None:
        plan = self.current_plan
        if plan is None:
            return
        label, ok = QInputDialog.getText(self, "Save as my profile", "Profile name:",
                                         text=f"My {plan.profile.label if plan.profile else 'plan'}")
        if ok and label.strip():
            self.save_profile_named(label.strip())

    def save_profile_named(self, label: str) -> Path | None:
        """Save the plan as a user profile (config folder) and offer it in the picker."""
        plan = self.current_plan
        if plan is None:
            return None
        key = "".join(c if c.isalnum() or c in "-_." else "-" for c in label.lower()).strip("-") or "my-profile"
        try:
            profile, notes = profile_from_plan(plan, key, label)
            path = save_user_profile(profile)
        except (ProfileError, ValueError, OSError) as error:
            self.show_error("Cannot save the profile", f"{label}: {error}")
            return None
        current = plan.profile.key if plan.profile else None
        model = plan.model
        self.plan_panel.set_profiles(all_profiles(), current,
                                     f"As stored in {model.path.name}" if is_quantized(model) else None)
        self._edits_kept = True
        problems = user_profiles()[1]
        message = f"Saved profile {label} to {path}"
        if notes:
            message += " (" + "; ".join(notes) + ")"
        if problems:
            message += f"; unreadable user profiles: {'; '.join(problems)}"
        self.statusBar().showMessage(message, 10000)
        return path

    # --- diff -------------------------------------------------------------------------------
    def set_diff(self, choice: str) -> None:
        """"" (off), "detected", "profile:<key>", or "file" (asks for a GGUF)."""
        model = self.current_model
        if model is None:
            return
        if choice == "file":
            self.choose_compare_file()
            return
        reference: PrecisionPlan | None = None
        label = ""
        try:
            if choice == "detected" and self.profile_matches:
                profile = self.profile_matches[0].profile
                reference = self._detected_plan or plan_from_profile(model, profile)
                label = f"profile {profile.label}"
            elif choice.startswith("profile:"):
                profile = get_profile(choice.split(":", 1)[1])
                reference, label = plan_from_profile(model, profile), f"profile {profile.label}"
        except (ValueError, ProfileError) as error:
            self.show_error("Cannot compare", str(error))
            return
        self._set_reference(reference, label, choice if reference is not None else "")

    def _set_reference(self, reference: PrecisionPlan | None, label: str, choice: str) -> None:
        self.reference_plan = reference
        self._diff_choice = choice
        self.heatmap.set_reference(reference, label)
        self.diff_action.blockSignals(True)
        self.diff_action.setChecked(reference is not None)
        self.diff_action.blockSignals(False)
        self._update_diff_summary()

    def _update_diff_summary(self) -> None:
        plan, reference = self.current_plan, self.reference_plan
        if plan is None or reference is None:
            self.plan_panel.set_diff_choice("", "")
            return
        differing = plan.diff(reference)
        share = plan.differing_bytes_share(reference)
        label = self.heatmap.reference_label
        summary = (f"{len(differing)} tensors ({share:.1%} of bytes) differ from {label}"
                   if differing else f"identical to {label}")
        self.plan_panel.set_diff_choice(self._diff_choice, summary)

    def _diff_toggled(self, on: bool) -> None:
        if not on:
            self.set_diff("")
        elif self.profile_matches:
            self.set_diff("detected")
        elif self.current_plan is not None and self.current_plan.profile is not None:
            # The plan's own profile: diff mode then shows exactly the hand edits.
            self.set_diff(f"profile:{self.current_plan.profile.key}")
        elif self.current_plan is not None:
            self.set_diff(f"profile:{DEFAULT_PROFILE}")

    def choose_compare_file(self) -> None:
        if self.current_model is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Compare with another GGUF",
                                              str(self.current_model.path.parent),
                                              "GGUF models (*.gguf);;All files (*)")
        if path:
            self.compare_with_file(Path(path))
        else:
            self.plan_panel.set_diff_choice(self._diff_choice, self.plan_panel.diff_label.text())

    def compare_with_file(self, path: str | Path) -> None:
        """Diff against the real types of another GGUF of the same model (read off-thread)."""
        file_path = Path(path)
        model = self.current_model
        if model is None:
            return

        def read(_token: CancelToken) -> PrecisionPlan:
            other = open_model(file_path)
            ours = {t.name: t.shape for t in model.tensors}
            theirs = {t.name: t.shape for t in other.tensors}
            if ours != theirs:
                missing = len(set(ours) ^ set(theirs))
                raise GGUFError(file_path, f"is not the same model as {model.path.name} "
                                f"({missing} tensor names or shapes differ): compare quants of one model")
            return plan_from_gguf(other)

        self.statusBar().showMessage(f"Reading {file_path.name}...")
        task = self.workers.submit(f"compare with {file_path.name}", read)
        self._compare_task = task
        task.finished.connect(lambda plan: self._set_reference(plan, file_path.name, f"gguf:{file_path}")
                              if task is self._compare_task else None)
        task.failed.connect(lambda error: self.show_error(
            f"Cannot compare with {file_path.name}", open_error_message(file_path, error)))

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

    # --- settings, theme, dialogs -----------------------------------------------------------
    def show_settings(self) -> SettingsDialog:
        dialog = SettingsDialog(self.settings, self.workers, self)
        dialog.accepted.connect(lambda: self.apply_settings(dialog.result_settings()))
        dialog.open()
        return dialog

    def apply_settings(self, settings: Settings) -> None:
        theme_changed = settings.theme != self.settings.theme
        self.settings = settings
        self._save_settings()
        if theme_changed:
            self.set_theme(settings.theme)
        self.settingsChanged.emit(settings)
        self.statusBar().showMessage("Settings saved", 4000)

    def set_theme(self, theme: str) -> None:
        app = QApplication.instance()
        assert isinstance(app, QApplication)
        style.apply_theme(app, theme)
        self.settings.theme = theme
        self._save_settings()
        for action in self.theme_group.actions():
            action.setChecked(action.text().lower() == theme)
        self._refresh_icons()

    def _refresh_icons(self) -> None:
        """Icons are tinted with the palette's text colour: redo them after a theme switch."""
        names = {self.open_action: "open", self.download_action: "download", self.undo_action: "undo",
                 self.redo_action: "redo", self.reset_action: "reset", self.paint_tool_action: "paint",
                 self.select_tool_action: "select", self.diff_action: "diff",
                 self.zoom_in_action: "zoom-in", self.zoom_out_action: "zoom-out",
                 self.zoom_fit_action: "zoom-fit", self.export_action: "save",
                 self.settings_action: "settings", self.compare_action: "diff"}
        for action, name in names.items():
            action.setIcon(style.icon(name))

    def show_download_dialog(self) -> HubDownloadDialog:
        dialog = HubDownloadDialog(self.workers, self, snapshot=self.hardware_snapshot)
        dialog.modelDownloaded.connect(self.open_model_file)
        dialog.open()
        return dialog

    def show_try_dialog(self) -> TryQuantDialog | None:
        """Try the open model (typically the quant just made) with a short prompt."""
        if self.current_model is None:
            return None
        dialog = TryQuantDialog(self.current_model.path, threads=self.settings.effective_threads(),
                                parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        self.try_dialog = dialog
        return dialog

    def show_about(self) -> None:
        QMessageBox.about(self, "About APEX Studio",
                          f"<b>APEX Studio {__version__}</b><p>Plan, quantize and evaluate APEX "
                          "mixed-precision GGUF quants of Mixture-of-Experts models with "
                          "llama.cpp.</p>")

    def show_error(self, title: str, message: str) -> QMessageBox:
        """Every user-facing error: a window-modal box that does not block the event loop."""
        self.errorShown.emit(title, message)
        if self._error_box is not None:
            self._error_box.close()
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setObjectName("errorBox")
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # Deleted when closed, so old boxes do not pile up as hidden children of the window.
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _result, b=box: self._error_closed(b))
        box.open()
        self._error_box = box
        return box

    def _error_closed(self, box: QMessageBox) -> None:
        if self._error_box is box:
            self._error_box = None

    def confirm(self, title: str, question: str) -> bool:
        answer = QMessageBox.question(self, title, question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    # --- recent files, drag and drop --------------------------------------------------------
    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_files or []
        if not recent:
            action = self.recent_menu.addAction("(none yet)")
            action.setEnabled(False)
            return
        for index, path in enumerate(recent):
            action = self.recent_menu.addAction(f"&{index + 1} {Path(path).name}")
            action.setToolTip(path)
            action.setStatusTip(path)
            action.triggered.connect(lambda _c=False, p=path: self.open_model_file(p))
        self.recent_menu.addSeparator()
        self.recent_menu.addAction("Clear the list", self._clear_recent)

    def _clear_recent(self) -> None:
        self.settings.recent_files = []
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
