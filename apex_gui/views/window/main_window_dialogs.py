"""The main window's dialogs: settings, theme, download, try, about, errors, questions."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QMessageBox

from apex_gui import __version__
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.settings import Settings
from apex_gui.views import style
from apex_gui.views.window.hf_download import HubDownloadDialog
from apex_gui.views.window.hf_pipeline_dialog import HubPipelineDialog
from apex_gui.views.window.settings_dialog import SettingsDialog
from apex_gui.views.run.try_quant import TryQuantDialog


class WindowDialogs:
    """The main window's dialogs: settings, theme, download, try, about, errors, questions: a part of MainWindow, which derives from it."""

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

    def show_hub_pipeline_dialog(self) -> HubPipelineDialog:
        """Quantize a Hugging Face model (id or folder): download, convert, tiers, card."""
        dialog = HubPipelineDialog(self.workers, self.settings, self)
        dialog.open()
        return dialog

    def show_try_dialog(self) -> TryQuantDialog | None:
        """Try the open model (typically the quant just made) with a short prompt."""
        if self.current_model is None:
            return None

        # As the Run queue's tools: the configured folder and the run options (threads,
        # --no-repack where the tools check found the repacked kernels crashing here).
        dialog = TryQuantDialog(self.current_model.path, LlamaTools.for_settings(self.settings),
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
