"""The main window's actions, menus and recent-files list."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence

from apex_gui.views import style


class MainWindowMenus:
    """The main window's actions, menus and recent-files list: a part of MainWindow, which derives from it."""

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
        self.hub_pipeline_action = self._action(
            "&Quantize a Hugging Face model...", self.show_hub_pipeline_dialog,
            tip="Download (or pick a folder), convert with llama.cpp, make the APEX tiers, "
                "measure them and write the card")
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
        file_menu.addAction(self.hub_pipeline_action)
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
