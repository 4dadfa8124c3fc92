"""Run: quantize the chosen profiles, evaluate them, and watch the queue.

The user picks profiles (and the window's current, possibly edited, plan), where the
importance matrix comes from (the bundled calibration set or their own files), how each
quant is evaluated (KL divergence against the source on the bundled quick text or their own
file, perplexity, HellaSwag / Winogrande / multiple-choice files, a speed bench) and the
output folder. :func:`pipeline_for` turns that into one :class:`Pipeline` (imatrix ->
quantize -> evaluate, each quant evaluated right after it is written) and the
:class:`apex_gui.qt.job_queue.JobQueue` runs it: one row per step with a progress bar and ETA, the
live log of the selected step, cancel, and a notification when everything is done.

For the main window's ``closeEvent``: :meth:`RunPanel.has_running_jobs` and
:meth:`RunPanel.cancel_all_and_wait` (see :func:`apex_gui.views.window.panels.install_panels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QElapsedTimer, Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView, QApplication, QCheckBox, QFileDialog, QFrame, QScrollArea, QFormLayout,
    QGroupBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QListWidget, QListWidgetItem,
    QMainWindow, QMessageBox, QPlainTextEdit, QPushButton, QRadioButton, QSpinBox, QSplitter,
    QSystemTrayIcon, QTableWidget, QToolButton, QVBoxLayout, QWidget,
)

from apex_gui.core.files.task_files import check_task_file
from apex_gui.core.fit.rpc_workers import parse_workers
from apex_gui.core.jobs.assembly import RunRequest, check_free_space, pipeline_for
from apex_gui.core.jobs.monitor import BoundedText
from apex_gui.core.jobs.pipeline import Pipeline
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import Profile, all_profiles
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.file_field import FileField
from apex_gui.views.run.run_queue_rows import KEY_ROLE, LOG_BLOCKS, RunQueueRows

__all__ = [
    "RunPanel",
    "RunRequest",
    "pipeline_for",
]

CURRENT_PLAN_KEY = "__current_plan__"
#: llama-imatrix chunks read by default: ~50k tokens, the APEX calibration size
DEFAULT_IMATRIX_CHUNKS = 100


class RunPanel(RunQueueRows, QWidget):
    """The Run tab: choose, start, watch, cancel."""

    #: a job ended (its :class:`JobOutcome`): the results panel refreshes on it
    jobFinished = Signal(object)
    #: the queue went idle: number of jobs that did not succeed
    runFinished = Signal(int)
    #: a start was refused (the message says why)
    startRefused = Signal(str)

    def __init__(self, queue: JobQueue | None = None, model: Any = None, plan: Any = None, *,
                 settings: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("runPanel")
        self.queue = queue if queue is not None else JobQueue(parent=self)
        self._model = model
        self._plan = plan
        self._settings = settings
        self._replace_box: QMessageBox | None = None  # open while asking to replace quants
        self._rows: dict[int, int] = {}  # job id -> table row
        self.run_headings: list[int] = []  # table rows naming the model of the run below
        self._logs: dict[int, BoundedText] = {}  # job id -> its log, head and tail kept
        self._open_lines: dict[int, int] = {}  # job id -> length of its unterminated line
        self._view_chars = 0  # characters in the log pane
        self._titles: dict[int, str] = {}
        #: the steps of the run now shown in the status line: reset when a start finds the
        #: queue idle, so counts never include earlier runs' steps
        self._batch: list[int] = []
        self.imatrix_note = ""
        self._tray: QSystemTrayIcon | None = None
        self.last_notification = ""

        # Profiles.
        self.profile_list = QListWidget()
        self.profile_list.setObjectName("runProfiles")
        self.profile_list.setMaximumHeight(170)
        self._fill_profiles()

        # Importance matrix.
        # Its token count depends on the model's tokenizer (about 50k with a real one, five
        # times more with the demo's byte-level one): say what is fixed, the size of the text.
        self.calibration_bundled = QRadioButton("Bundled calibration set (200 kB)")
        self.calibration_bundled.setChecked(True)
        self.calibration_custom = QRadioButton("My files:")
        self.calibration_files = QLineEdit()
        self.calibration_files.setPlaceholderText("one or more text files, separated by ;")
        calibration_browse = QToolButton()
        calibration_browse.setText("…")
        calibration_browse.setToolTip("Choose calibration text files")
        calibration_browse.clicked.connect(self._choose_calibration)
        # Typing a file name means "use my files": it used to be ignored until the radio
        # button was also clicked, and the run silently used the bundled set.
        self.calibration_files.textEdited.connect(
            lambda text: self.calibration_custom.setChecked(True) if text.strip() else None)
        self.calibration_bundled.setToolTip("The bundled, diverse calibration text: chat, "
                                            "code, reasoning and tool calls, 200 kB, no "
                                            "Wikipedia; what the APEX I-variants use")
        self.calibration_custom.setToolTip("Your own text files, joined in order")
        imatrix_box = QGroupBox("Importance matrix (I-profiles)")
        imatrix_layout = QVBoxLayout(imatrix_box)
        imatrix_layout.addWidget(self.calibration_bundled)
        custom_row = QHBoxLayout()
        custom_row.addWidget(self.calibration_custom)
        custom_row.addWidget(self.calibration_files, 1)
        custom_row.addWidget(calibration_browse)
        imatrix_layout.addLayout(custom_row)
        self.imatrix_chunks = QSpinBox()
        self.imatrix_chunks.setObjectName("imatrixChunks")
        self.imatrix_chunks.setRange(0, 100_000)
        self.imatrix_chunks.setValue(DEFAULT_IMATRIX_CHUNKS)
        self.imatrix_chunks.setSpecialValueText("all of the text")
        self.imatrix_chunks.setSuffix(" chunks")
        self.imatrix_chunks.setToolTip("llama-imatrix --chunks (512 tokens each): how much of "
                                       "the text to read. "
                                       "100 chunks is about the APEX calibration size; 0 reads "
                                       "it all (the demo model's tokenizer makes 541 chunks of "
                                       "the bundled set: about 10 minutes on 2 cores)")
        chunks_row = QHBoxLayout()
        chunks_row.addWidget(QLabel("Read at most"))
        chunks_row.addWidget(self.imatrix_chunks, 1)
        imatrix_layout.addLayout(chunks_row)

        # Evaluation.
        self.eval_file = FileField("bundled quick text (a sanity check, not wikitext-2)",
                                    "Evaluation text (e.g. wiki.test.raw)")
        self.kl_box = QCheckBox("KL divergence (and PPL)")
        self.kl_box.setChecked(True)
        self.kl_box.setToolTip("KL divergence against the source, with perplexity: "
                               "llama-perplexity --kl-divergence against the source's logits "
                               "(saved once per text and context)")
        self.ppl_box = QCheckBox("Perplexity")
        self.ppl_box.setToolTip("llama-perplexity on the evaluation text")
        self.eval_context = QSpinBox()
        self.eval_context.setRange(64, 131072)
        self.eval_context.setValue(512)
        self.eval_context.setToolTip("-c for perplexity / KL divergence; the text needs at "
                                     "least twice as many tokens (use 2048 with wiki.test.raw)")
        self.hellaswag_file = FileField("optional: hellaswag_val_full.txt", "HellaSwag data")
        self.winogrande_file = FileField("optional: winogrande-debiased-eval.csv",
                                          "Winogrande data")
        self.mc_file = FileField("optional: mmlu / arc / truthfulqa .bin", "Multiple-choice data")
        self.bench_box = QCheckBox("Speed (llama-bench)")
        self.bench_box.setToolTip("llama-bench prompt processing and generation speed "
                                  "(pp512 / tg128), on this machine's build of llama.cpp")
        eval_box = QGroupBox("Evaluation")
        eval_form = QFormLayout(eval_box)
        eval_form.addRow("Text", self.eval_file)
        checks = QVBoxLayout()  # one above the other: side by side they widened the pane
        checks.addWidget(self.kl_box)
        checks.addWidget(self.ppl_box)
        eval_form.addRow(checks)
        eval_form.addRow("Context", self.eval_context)
        eval_form.addRow("HellaSwag", self.hellaswag_file)
        eval_form.addRow("Winogrande", self.winogrande_file)
        eval_form.addRow("Multiple choice", self.mc_file)
        eval_form.addRow(self.bench_box)

        # Output and start.
        default_out = getattr(settings, "output_dir", "") or ""
        self.output_dir = FileField("next to the source model", "Output folder", folder=True)
        self.output_dir.edit.setText(default_out)
        self._default_output = default_out
        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("runStart")
        self.start_button.setDefault(True)
        self.start_button.setToolTip("Queue the importance matrix (when needed), the quants "
                                     "and their evaluation")
        out_row = QHBoxLayout()
        out_row.addWidget(QLabel("Output folder"))
        out_row.addWidget(self.output_dir, 1)
        out_row.addWidget(self.start_button)

        # Queue and log.
        self.table = QTableWidget(0, 6)
        self.table.setObjectName("runQueue")
        self.table.setHorizontalHeaderLabels(["Step", "Status", "Progress", "ETA", "Message",
                                              "Devices"])
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        # One line per step: long messages (output paths) elide, the tooltip has them whole.
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header = self.table.horizontalHeader()
        # Step names can be long (file names): a fixed, resizable width keeps Progress and
        # ETA on screen in a narrow window; the full title is the Step cell's tooltip.
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(5, QHeaderView.ResizeMode.Interactive)
        header.setMinimumSectionSize(40)
        self.table.setColumnWidth(0, 120)
        self.table.setColumnWidth(2, 90)
        self.table.setColumnWidth(5, 150)
        self.log_view = QPlainTextEdit()
        self.log_view.setObjectName("runLog")
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(LOG_BLOCKS)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.cancel_button = QPushButton("Cancel step")
        self.cancel_button.setToolTip("Stop the selected step; its unfinished output is "
                                      "deleted and the steps that need it are skipped")
        self.cancel_all_button = QPushButton("Cancel all")
        self.cancel_all_button.setToolTip("Stop the running step and drop every queued one")
        self.status_label = QLabel("Nothing queued.")
        self.status_label.setObjectName("runStatus")
        self.status_label.setWordWrap(True)
        # The last failure's reason, in full and selectable: the Message column is narrow.
        self.failure_label = QLabel("")
        self.failure_label.setObjectName("runFailure")
        self.failure_label.setWordWrap(True)
        self.failure_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.failure_label.setStyleSheet("color: palette(highlighted-text); background: #b3261e; "
                                         "padding: 4px; border-radius: 3px;")
        self.failure_label.hide()
        queue_buttons = QHBoxLayout()
        queue_buttons.addWidget(self.status_label, 1)
        queue_buttons.addWidget(self.cancel_button)
        queue_buttons.addWidget(self.cancel_all_button)

        choices = QWidget()
        choices_layout = QVBoxLayout(choices)
        choices_layout.setContentsMargins(0, 0, 0, 0)
        choices_layout.addWidget(QLabel("Profiles to quantize"))
        choices_layout.addWidget(self.profile_list)
        choices_layout.addWidget(imatrix_box)
        choices_layout.addWidget(eval_box)
        choices_layout.addStretch(1)
        watch = QSplitter(Qt.Orientation.Vertical)
        watch.addWidget(self.table)
        watch.addWidget(self.log_view)
        watch.setStretchFactor(0, 2)
        watch.setStretchFactor(1, 3)
        watch_page = QWidget()
        watch_layout = QVBoxLayout(watch_page)
        watch_layout.setContentsMargins(0, 0, 0, 0)
        watch_layout.addWidget(watch, 1)
        watch_layout.addWidget(self.failure_label)
        watch_layout.addLayout(queue_buttons)
        # The choices scroll instead of setting the window's minimum size: with them inline
        # the whole window could not be narrower than ~1170 px, nor a 1024x700 screen's.
        choices_scroll = QScrollArea()
        choices_scroll.setWidgetResizable(True)
        choices_scroll.setFrameShape(QFrame.Shape.NoFrame)
        choices_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        choices_scroll.setWidget(choices)
        choices_scroll.setMinimumWidth(280)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(choices_scroll)
        splitter.addWidget(watch_page)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([300, 600])  # the queue gets the room: its columns must show
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(splitter, 1)
        # Start sits below both panes, never inside the scrolled choices: at 1024x700 and at
        # 2x scaling it was off-screen until one scrolled sideways or dragged the splitter.
        layout.addLayout(out_row)

        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.cancel_all_button.clicked.connect(self.queue.cancel_all)
        self.table.itemSelectionChanged.connect(self._show_selected_log)
        self.queue.jobStarted.connect(self._job_started)
        self.queue.jobProgress.connect(self._job_progress)
        self.queue.jobOutput.connect(self._job_output)
        self.queue.jobFinished.connect(self._job_finished)
        self.queue.allFinished.connect(self._all_finished)
        self._update_buttons()

    # --- inputs -------------------------------------------------------------------------
    def set_default_output_dir(self, folder: str) -> None:
        """The settings' default output folder; a folder the user typed here is kept."""
        if self.output_dir.edit.text().strip() in ("", self._default_output):
            self.output_dir.edit.setText(folder)
        self._default_output = folder

    def set_model(self, model: Any) -> None:
        self._model = model
        self._update_buttons()

    def set_plan(self, plan: Any) -> None:
        """The window's current plan: offered as "Current plan" when it is not a profile's."""
        self._plan = plan
        self._fill_profiles()

    def _fill_profiles(self) -> None:
        checked = set(self.checked_keys()) if self.profile_list.count() else {"i-balanced"}
        self.profile_list.clear()
        plan = self._plan
        if plan is not None and (plan.profile is None or plan.can_undo()):
            item = QListWidgetItem(f"Current plan ({plan.origin}"
                                   f"{', edited' if plan.edits_since_named() else ''})")
            item.setData(KEY_ROLE, CURRENT_PLAN_KEY)
            self._add_checkable(item, CURRENT_PLAN_KEY in checked)
        for key, profile in all_profiles().items():
            note = " · needs an imatrix" if profile.uses_imatrix else ""
            item = QListWidgetItem(f"{profile.label}{note}")
            item.setToolTip(profile.description)
            item.setData(KEY_ROLE, key)
            self._add_checkable(item, key in checked)

    def _add_checkable(self, item: QListWidgetItem, checked: bool) -> None:
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.profile_list.addItem(item)

    def checked_keys(self) -> list[str]:
        return [self.profile_list.item(i).data(KEY_ROLE) for i in range(self.profile_list.count())
                if self.profile_list.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked_profiles(self, keys: Sequence[str]) -> None:
        wanted = set(keys)
        for i in range(self.profile_list.count()):
            item = self.profile_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.data(KEY_ROLE) in wanted
                               else Qt.CheckState.Unchecked)

    def _choose_calibration(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Calibration text files", "",
                                                "Text (*.txt *.md *.jsonl);;All files (*)")
        if paths:
            self.calibration_files.setText(";".join(paths))
            self.calibration_custom.setChecked(True)

    def request(self) -> RunRequest:
        """The current choices as a :class:`RunRequest`; ValueError says what is missing."""
        model = self._model
        if model is None:
            raise ValueError("open the full-precision (F16/BF16) model first")
        if not model.is_full_precision:
            raise ValueError(f"{Path(model.path).name} is already quantized ({model.file_type}): "
                             "open the F16/BF16 model it was made from to quantize")
        keys = self.checked_keys()
        if not keys:
            raise ValueError("tick at least one profile to quantize")
        profiles = all_profiles()
        plans, labels = [], []
        for key in keys:
            if key == CURRENT_PLAN_KEY:
                plans.append(self._plan)
                labels.append(self._plan.output_label())
            else:
                profile: Profile = profiles[key]
                plans.append(plan_from_profile(model, profile))
                labels.append(profile.label)
        calibration: tuple[Path, ...] = ()
        if self.calibration_custom.isChecked():
            calibration = tuple(Path(p.strip()).expanduser()
                                for p in self.calibration_files.text().split(";") if p.strip())
            if not calibration:
                raise ValueError("choose calibration files, or use the bundled set")
        # A wrong task file runs to "exit 0, no score": say what is wrong before anything runs.
        for kind, field in (("hellaswag", self.hellaswag_file),
                            ("winogrande", self.winogrande_file),
                            ("multiple-choice", self.mc_file)):
            task_file = field.path()
            if task_file is not None:
                check_task_file(kind, task_file)
        output = self.output_dir.path() or Path(model.path).parent
        check_free_space(output, sum(plan.total_bytes() for plan in plans))
        # The Hardware & tiers panel's worker list (settings); a bad entry refuses the run.
        # Threads and --no-repack come with the queue's tools when each job starts.
        workers = parse_workers(getattr(self._settings, "rpc_workers", "") or "")
        mc = self.mc_file.path()
        return RunRequest(
            model=model, plans=tuple(plans), labels=tuple(labels), output_dir=output,
            calibration_files=calibration, eval_text=self.eval_file.path(),
            imatrix_chunks=self.imatrix_chunks.value() or None,
            kl_divergence=self.kl_box.isChecked(), perplexity=self.ppl_box.isChecked(),
            eval_context=self.eval_context.value(), hellaswag=self.hellaswag_file.path(),
            winogrande=self.winogrande_file.path(), multiple_choice=(mc,) if mc else (),
            bench=self.bench_box.isChecked(),
            options=RunOptions(rpc_workers=tuple(w.endpoint for w in workers)))

    # --- running ------------------------------------------------------------------------
    def start(self) -> dict[str, int] | None:
        """Queue the pipeline for the current choices; returns step key -> job id."""
        try:
            request = self.request()
            pipeline = pipeline_for(request)
        except (ValueError, OSError) as error:
            self.status_label.setText(f"Not started: {error}")
            self.startRefused.emit(str(error))
            return None
        existing = [job.output_path for job in (step.job for step in pipeline.steps)
                    if isinstance(job, QuantizeJob) and job.output_path.exists()]
        if existing and not self._confirm_replace(existing):
            names = ", ".join(path.name for path in existing)
            self.status_label.setText(f"Not started: {names} already exist(s); choose another "
                                      "output folder, or start again and replace them")
            return None
        if not self.queue.is_busy():
            self._batch = []
        self._add_run_heading(Path(request.model.path).name, len(pipeline.steps))
        ids = self.queue.add_pipeline(pipeline)
        for key, job_id in ids.items():
            self._add_row(job_id, key, pipeline.step(key).job.title())
        self._batch.extend(ids.values())
        # New steps land at the bottom: bring them into view (from their heading), not the
        # earlier run's rows.
        self.table.scrollToItem(self.table.item(self.run_headings[-1], 0),
                                QAbstractItemView.ScrollHint.PositionAtTop)
        self._update_status()
        self.imatrix_note = self._imatrix_note(request, pipeline)
        if self.imatrix_note:
            self.status_label.setText(f"{self.status_label.text()} {self.imatrix_note}")
        self._update_buttons()
        return ids

    @staticmethod
    def _imatrix_note(request: RunRequest, pipeline: Pipeline) -> str:
        """Say which importance matrix a run uses when it reuses a cached one."""
        if not request.needs_imatrix() or any(isinstance(step.job, ImatrixJob) for step in pipeline.steps):
            return ""
        source = (", ".join(p.name for p in request.calibration_files) if request.calibration_files
                  else "the bundled calibration set")
        return f"Reusing the importance matrix made earlier from {source} (same text and context)."

    def _update_status(self) -> None:
        """"Step 2 of 6 running: quantize ... (1 done)": counts this run's steps only."""
        batch = self._batch
        if not batch:
            return
        outcomes = [self.queue.outcome(j) for j in batch]
        done = sum(1 for o in outcomes if o is not None)
        failed = [o for o in outcomes if o is not None and not o.succeeded]
        running = self.queue.running_job_id()
        text = f"{len(batch)} step(s) in this run: {done} finished"
        if failed:
            text += f", {len(failed)} did not succeed"
        if running is not None and running in batch:
            text += f"; running step {batch.index(running) + 1}: {self._titles.get(running, '')}"
        self.status_label.setText(text + ".")

    def _confirm_replace(self, existing: list[Path]) -> bool:
        """Ask before a run replaces quants already on disk (the CLI wants --force)."""
        listing = "\n".join(str(path) for path in existing)
        box = QMessageBox(QMessageBox.Icon.Warning, "Replace existing quants?",
                          f"These files exist and would be replaced:\n{listing}",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                          self)
        box.button(QMessageBox.StandardButton.Yes).setText("Replace")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        self._replace_box = box  # tests answer it through the real buttons
        try:
            return box.exec() == QMessageBox.StandardButton.Yes
        finally:
            self._replace_box = None
            box.deleteLater()


    def notify(self, message: str) -> None:
        """Tell the user the run ended: a tray message where there is a tray, else the
        window's status bar and a taskbar alert."""
        self.last_notification = message
        if QSystemTrayIcon.isSystemTrayAvailable():
            if self._tray is None:
                self._tray = QSystemTrayIcon(self.window().windowIcon(), self)
            self._tray.show()
            self._tray.showMessage("APEX Studio", message)
        window = self.window()
        if isinstance(window, QMainWindow):
            window.statusBar().showMessage(message, 15_000)
        QApplication.alert(window)

    # --- cancelling ---------------------------------------------------------------------
    def _selected_job(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return item.data(KEY_ROLE) if item is not None else None

    def cancel_selected(self) -> None:
        job_id = self._selected_job()
        if job_id is not None and self.queue.outcome(job_id) is None:
            self.queue.cancel(job_id)

    def has_running_jobs(self) -> bool:
        """True while a job runs or waits: the window asks before closing."""
        return self.queue.is_busy()

    def cancel_all_and_wait(self, timeout_ms: int = 10_000) -> bool:
        """Cancel every job and wait for the running process to end (polite terminate, then
        kill); True when nothing runs any more. Partial outputs are deleted by the queue."""
        timer = QElapsedTimer()
        timer.start()
        self.queue.shutdown(max(timeout_ms, 0))
        # The queue's done-handler runs from the event loop: let it record the cancellation.
        while self.queue.running_job_id() is not None and timer.elapsed() < timeout_ms:
            QApplication.processEvents()
        return self.queue.running_job_id() is None

    # --- look ---------------------------------------------------------------------------
    def _show_selected_log(self) -> None:
        job_id = self._selected_job()
        log = self._logs.get(job_id) if job_id else None
        self._show_log_text(log.text() if log is not None else "")
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.queue.is_busy()
        self.start_button.setEnabled(self._model is not None)
        self.cancel_all_button.setEnabled(busy)
        job_id = self._selected_job()
        self.cancel_button.setEnabled(job_id is not None and self.queue.outcome(job_id) is None)
