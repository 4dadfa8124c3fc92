"""File > Quantize a Hugging Face model: the resumable pipeline from a model id or a local
checkpoint folder to APEX quants, their evaluation and a card, without leaving the window.

The pipeline (:mod:`apex_gui.core.workflow.source_pipeline`) runs on the worker pool; this
dialog shows each step as it starts and ends, and Stop cancels it (the running tool is
stopped, its partial output removed; Start again continues where it stopped). When the
converter or its Python needs are missing, "Set up conversion" installs them with one click.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QLabel, QLineEdit, QListWidget, QProgressBar,
                               QPushButton, QVBoxLayout, QWidget)

from apex_gui.core.convert.converter import (converter_problem, fetch_sdist, find_converter,
                                             install_commands, missing_modules)
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.workflow.source_pipeline import (SourcePipelineRequest, StepEvents,
                                                    StepReport, check_request, model_name,
                                                    run_source_pipeline, succeeded)
from apex_gui.qt.workers import CancelToken, Task, WorkerPool

DEFAULT_PROFILES = "i-quality,i-balanced,i-compact"


class _TaskEvents(StepEvents):
    """Pipeline events as the task's progress text (the worker forwards them to the GUI)."""

    def __init__(self, token: CancelToken) -> None:
        self.token = token
        self.lines: list[str] = []

    def started(self, key: str, title: str) -> None:
        self.token.progress(0.0, f"{key}: {title}", force=True)

    def progress(self, key: str, fraction: float | None, detail: str) -> None:
        self.token.progress(fraction or 0.0, f"{key}: {detail}")

    def finished(self, report: StepReport) -> None:
        self.token.progress(1.0, f"{report.key}: {report.status} - {report.message}",
                            force=True)


class HubPipelineDialog(QDialog):
    """Source -> profiles -> Start; steps listed as they run; the quants' folder at the end."""

    finishedWith = Signal(str)  # the final status line
    quantsReady = Signal(Path)  # the work folder, when every step is done

    def __init__(self, workers: WorkerPool, settings: object, parent: QWidget | None = None,
                 ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Quantize a Hugging Face model")
        self.setObjectName("hubPipelineDialog")
        self.resize(680, 460)
        self._workers = workers
        self._settings = settings
        self._task: Task | None = None
        self._stop = threading.Event()
        layout = QVBoxLayout(self)
        form = QFormLayout()
        source_row = QHBoxLayout()
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText("hf://OWNER/NAME, or a folder with config.json "
                                            "and *.safetensors")
        browse = QPushButton("Folder...")
        browse.clicked.connect(self._choose_folder)
        source_row.addWidget(self.source_edit, 1)
        source_row.addWidget(browse)
        form.addRow("Model", source_row)
        self.profiles_edit = QLineEdit(DEFAULT_PROFILES)
        form.addRow("Profiles", self.profiles_edit)
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("default: NAME-APEX in your home folder")
        form.addRow("Work folder", self.output_edit)
        self.pre_tokenizer_edit = QLineEdit()
        self.pre_tokenizer_edit.setPlaceholderText("only when the converter does not know the "
                                                   "model's tokenizer (e.g. qwen2)")
        form.addRow("Pre-tokenizer", self.pre_tokenizer_edit)
        self.evaluate_box = QCheckBox("Measure KL divergence of each quant")
        self.evaluate_box.setChecked(True)
        form.addRow("", self.evaluate_box)
        self.publish_edit = QLineEdit()
        self.publish_edit.setPlaceholderText("optional: OWNER/REPO to upload the quants and card")
        form.addRow("Publish to", self.publish_edit)
        layout.addLayout(form)
        setup_row = QHBoxLayout()
        self.setup_label = QLabel("")
        self.setup_label.setWordWrap(True)
        self.setup_button = QPushButton("Set up conversion")
        self.setup_button.clicked.connect(self.set_up_conversion)
        setup_row.addWidget(self.setup_label, 1)
        setup_row.addWidget(self.setup_button)
        layout.addLayout(setup_row)
        self.steps = QListWidget()
        self.steps.setObjectName("pipelineSteps")
        layout.addWidget(self.steps, 1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        layout.addWidget(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status_label)
        buttons = QDialogButtonBox()
        self.start_button = buttons.addButton("Start", QDialogButtonBox.ButtonRole.AcceptRole)
        self.close_button = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        buttons.accepted.connect(self.start)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self._check_converter()

    # --- set-up -----------------------------------------------------------------------------
    def _tools(self) -> LlamaTools:
        return LlamaTools.for_settings(self._settings)

    def _check_converter(self) -> None:
        problem = converter_problem(find_converter(self._tools().configured_dir))
        self.setup_label.setText(problem or "llama.cpp's converter is ready.")
        self.setup_button.setVisible(problem is not None)

    def set_up_conversion(self) -> None:
        """Install the converter's needs and fetch it (pip; minutes the first time)."""
        if self._busy():
            return
        self.setup_label.setText("Installing the converter and its Python needs "
                                 "(PyTorch's CPU build)...")

        configured = self._tools().configured_dir

        def install(token: CancelToken) -> str:
            if missing_modules():
                for command in install_commands():
                    token.progress(0.0, " ".join(command[3:])[:120], force=True)
                    done = subprocess.run(command, capture_output=True, text=True)
                    if done.returncode != 0:
                        raise RuntimeError("pip failed: " + (done.stderr.strip().splitlines()
                                                             or ["no message"])[-1])
            if find_converter(configured) is None:
                fetch_sdist()
            return "ready"

        self._run("set up conversion", install, lambda _r: self._check_converter())

    # --- the run ----------------------------------------------------------------------------
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Hugging Face model folder")
        if folder:
            self.source_edit.setText(folder)

    def request(self) -> SourcePipelineRequest:
        source = self.source_edit.text().strip()
        if source and not source.startswith("hf://") and "/" in source \
                and not Path(source).expanduser().exists():
            source = "hf://" + source  # OWNER/NAME typed without the scheme
        if source and not source.startswith("hf://"):
            source = str(Path(source).expanduser().resolve())
        work = self.output_edit.text().strip()
        work_dir = Path(work).expanduser() if work else (
            Path.home() / f"{model_name(source or 'model')}-APEX")
        # start-up: huggingface_hub loads only when the Hub is used
        from huggingface_hub import get_token

        return SourcePipelineRequest(
            source=source, work_dir=work_dir.resolve(),
            profiles=tuple(p.strip() for p in self.profiles_edit.text().split(",") if p.strip()),
            kl_divergence=self.evaluate_box.isChecked(),
            pre_tokenizer=self.pre_tokenizer_edit.text().strip(),
            publish_repo=self.publish_edit.text().strip() or None, token=get_token())

    def start(self) -> None:
        if self._busy():
            return
        try:
            request = self.request()
            if not request.source:
                raise ValueError("give a model: hf://OWNER/NAME or a checkpoint folder")
            check_request(request)
        except (ValueError, KeyError) as error:
            self._set_status(str(error).strip("'\""), problem=True)
            return
        self.steps.clear()
        self._stop = threading.Event()
        stop = self._stop
        tools = self._tools()

        def run(token: CancelToken) -> tuple[bool, str]:
            store = RunStore()
            try:
                store.mark_interrupted()
                reports = run_source_pipeline(request, tools, store, _TaskEvents(token), stop)
            finally:
                store.close()
            last = list(reports.values())[-1] if reports else None
            ok = succeeded(reports)
            line = (f"Done: quants and card in {request.work_dir}" if ok else
                    f"{last.key}: {last.message}" if last else "nothing ran")
            return ok, line

        self._set_status(f"Running in {request.work_dir}...")
        self._work_dir = request.work_dir
        self._run(f"pipeline {request.source}", run, self._finished)

    def _run(self, description: str, function, on_done) -> None:  # type: ignore[no-untyped-def]
        task = self._workers.submit(description, function)
        self._task = task
        task.finished.connect(on_done)
        task.failed.connect(self._failed)
        task.progress.connect(self._progress)
        task.done.connect(self._task_done)
        self._update_buttons()

    def _progress(self, fraction: float, text: str) -> None:
        self.progress.setValue(round(fraction * 1000))
        key = text.split(":", 1)[0]
        last = self.steps.item(self.steps.count() - 1) if self.steps.count() else None
        if last is not None and last.text().split(":", 1)[0] == key:
            last.setText(text)
        else:
            self.steps.addItem(text)

    def _finished(self, result: object) -> None:
        ok, line = result  # type: ignore[misc]
        self._set_status(line, problem=not ok)
        self.finishedWith.emit(line)
        if ok:
            self.quantsReady.emit(self._work_dir)

    def _failed(self, error: object) -> None:
        # An error inside a step (not a failed tool, which ends the run with its message):
        # the run is over all the same, and whoever waits for it must hear so.
        line = f"Stopped by an error: {error}"
        self._set_status(line, problem=True)
        self.finishedWith.emit(line)

    def _task_done(self) -> None:
        if self._task is not None and self._task.cancelled:
            self._set_status("Stopped. Start continues where it stopped.")
            self.finishedWith.emit("Stopped.")
        self._task = None
        self._update_buttons()

    def _busy(self) -> bool:
        return self._task is not None and self._task.running

    def _update_buttons(self) -> None:
        busy = self._busy()
        self.start_button.setEnabled(not busy)
        self.setup_button.setEnabled(not busy)
        self.close_button.setText("Stop" if busy else "Close")

    def _set_status(self, text: str, problem: bool = False) -> None:
        self.status_label.setStyleSheet("color: #d0342c; font-weight: bold" if problem else "")
        self.status_label.setText(text)

    def reject(self) -> None:
        if self._busy():
            # Stop: the running tool is stopped and its partial file removed; Start resumes.
            self._stop.set()
            assert self._task is not None
            self._task.cancel()
            self._set_status("Stopping... (Start continues where it stopped)")
            return
        super().reject()
