"""Download a GGUF from Hugging Face: list a repository's files with sizes, fetch one.

All Hub traffic runs on the worker pool; the dialog checks the network as it opens and says
at once when there is none, so nobody waits on a spinner that cannot succeed.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from apex_gui.core import hub
from apex_gui.core.units import format_gb
from apex_gui.workers import CancelToken, Task, WorkerPool

EXAMPLE_REPO = "mudler/Qwen3.5-35B-A3B-APEX-GGUF"


class HubDownloadDialog(QDialog):
    """Repository id -> GGUF files -> download into the Hugging Face cache -> open."""

    modelDownloaded = Signal(Path)
    statusChanged = Signal(str)

    def __init__(self, workers: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Download a GGUF from Hugging Face")
        self.setObjectName("hubDownloadDialog")
        self.resize(640, 420)
        self._workers = workers
        self._task: Task | None = None
        self._files: list[hub.RemoteFile] = []
        self.network_ok: bool | None = None

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.repo_edit = QLineEdit()
        self.repo_edit.setPlaceholderText(EXAMPLE_REPO)
        self.repo_edit.setToolTip("OWNER/NAME of a model repository on huggingface.co")
        self.repo_edit.returnPressed.connect(self.list_files)
        self.list_button = QPushButton("List files")
        self.list_button.clicked.connect(self.list_files)
        row.addWidget(QLabel("Repository"))
        row.addWidget(self.repo_edit, 1)
        row.addWidget(self.list_button)
        layout.addLayout(row)
        self.token_label = QLabel(f"Hugging Face: {hub.token_status()}")
        self.token_label.setWordWrap(True)
        layout.addWidget(self.token_label)
        self.status_label = QLabel("")
        self.status_label.setObjectName("hubStatus")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status_label)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["File", "Size"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(lambda _index: self.download_selected())
        layout.addWidget(self.table, 1)
        self.progress = QProgressBar()
        self.progress.hide()
        layout.addWidget(self.progress)
        buttons = QDialogButtonBox()
        self.download_button = buttons.addButton("Download and open", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        buttons.accepted.connect(self.download_selected)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self._update_buttons()
        self._check_network()

    # --- state ----------------------------------------------------------------------------
    def _set_status(self, text: str, problem: bool = False) -> None:
        self.status_label.setStyleSheet("color: #d0342c; font-weight: bold" if problem else "")
        self.status_label.setText(text)
        self.statusChanged.emit(text)

    def _busy(self) -> bool:
        return self._task is not None and self._task.running

    def _update_buttons(self) -> None:
        busy = self._busy()
        self.list_button.setEnabled(not busy and self.network_ok is not False)
        self.download_button.setEnabled(not busy and bool(self.table.selectedItems())
                                        and self.network_ok is not False)
        self.cancel_button.setText("Stop" if busy else "Close")

    def _start(self, description: str, function, on_done) -> None:  # type: ignore[no-untyped-def]
        task = self._workers.submit(description, function)
        self._task = task
        task.finished.connect(on_done)
        task.failed.connect(self._failed)
        task.progress.connect(self._progress)
        task.done.connect(self._task_done)
        self._update_buttons()

    def _task_done(self) -> None:
        self._task = None
        self.progress.hide()
        self._update_buttons()

    def _failed(self, error: object) -> None:
        if isinstance(error, hub.HubUnreachable):
            self.network_ok = False
        message = str(error) if isinstance(error, hub.HubError) else f"Unexpected error: {error}"
        self._set_status(message, problem=True)

    # --- network check ----------------------------------------------------------------------
    def _check_network(self) -> None:
        self._set_status("Checking the connection to Hugging Face...")

        def check(_token: CancelToken) -> bool:
            hub.check_reachable()
            return True

        self._start("check the Hugging Face connection", check, self._network_checked)

    def _network_checked(self, _result: object) -> None:
        self.network_ok = True
        self._set_status("Connected. Enter a repository id and list its GGUF files.")

    # --- listing ----------------------------------------------------------------------------
    def list_files(self) -> None:
        if self._busy():
            return
        repo = self.repo_edit.text().strip() or EXAMPLE_REPO
        self.repo_edit.setText(repo)
        self._set_status(f"Listing {repo}...")
        self._start(f"list {repo}", lambda _token: hub.list_gguf_files(repo), self._listed)

    def _listed(self, files: object) -> None:
        assert isinstance(files, list)
        self._files = files
        self.table.setRowCount(len(files))
        for row, remote in enumerate(files):
            name = remote.name if not remote.shards else f"{remote.name} ({len(remote.shards)} shards)"
            self.table.setItem(row, 0, QTableWidgetItem(name))
            size = QTableWidgetItem(format_gb(remote.size) if remote.size is not None else "?")
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, 1, size)
        self._set_status(f"{len(files)} GGUF file(s)." if files else
                         "No GGUF files in this repository.")

    # --- download ---------------------------------------------------------------------------
    def download_selected(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        if self._busy() or not rows:
            return
        remote = self._files[min(rows)]
        repo = self.repo_edit.text().strip()
        self.progress.setRange(0, 0)
        self.progress.show()
        self._set_status(f"Downloading {remote.name}...")

        def download(token: CancelToken) -> Path:
            def report(name: str, done: int, total: int | None) -> None:
                token.progress(done / total if total else 0.0, f"{name}: {format_gb(done)}")
            return hub.download_gguf(repo, remote, cancelled=lambda: token.cancelled,
                                     progress=report)

        self._start(f"download {remote.name}", download, self._downloaded)

    def _progress(self, fraction: float, text: str) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(round(fraction * 1000))
        self.progress.setFormat(text)

    def _downloaded(self, path: object) -> None:
        assert isinstance(path, Path)
        self._set_status(f"Downloaded to {path}")
        self.modelDownloaded.emit(path)
        self.accept()

    def reject(self) -> None:
        if self._busy():
            # First press stops the work (a download keeps its partial file for a resume).
            assert self._task is not None
            self._task.cancel()
            self._set_status("Stopped.")
            self._task = None
            self._update_buttons()
            return
        super().reject()
