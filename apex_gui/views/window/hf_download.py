"""Download a GGUF from Hugging Face: list a repository's files with sizes, fetch one.

All Hub traffic runs on the worker pool; the dialog checks the network as it opens and says
at once when there is none, so nobody waits on a spinner that cannot succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QProgressBar, QPushButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from apex_gui.core.hub import download as hub, search as hub_search
from apex_gui.core.units import format_size
from apex_gui.qt.workers import CancelToken, Task, WorkerPool

EXAMPLE_REPO = "mudler/Qwen3.5-35B-A3B-APEX-GGUF"
BADGE_COLOURS = {"GPU": "#2e7d32", "GPU + RAM": "#b26a00", "RAM": "#1565c0", "too big": "#c62828"}


class HubDownloadDialog(QDialog):
    """Repository id -> GGUF files -> download into the Hugging Face cache -> open."""

    modelDownloaded = Signal(Path)
    statusChanged = Signal(str)

    def __init__(self, workers: WorkerPool, parent: QWidget | None = None, *,
                 snapshot: Any = None, listing: hub_search.Listing = hub_search.hub_listing,
                 file_lister: Callable[[str], list[hub.RemoteFile]] = hub.list_gguf_files) -> None:
        """``snapshot``: the hardware for the fit badges; ``listing`` / ``file_lister``: the
        Hub's search and file listing (replaceable: tests and offline use)."""
        super().__init__(parent)
        self._snapshot = snapshot
        self._listing = listing
        self._file_lister = file_lister
        self.hits: list[hub_search.RepoHit] = []
        self.setWindowTitle("Download a GGUF from Hugging Face")
        self.setObjectName("hubDownloadDialog")
        self.resize(640, 420)
        self._workers = workers
        self._task: Task | None = None
        self._files: list[hub.RemoteFile] = []
        self.network_ok: bool | None = None

        layout = QVBoxLayout(self)
        search_row = QHBoxLayout()
        self.search_edit = QLineEdit()
        self.search_edit.setObjectName("hubSearch")
        self.search_edit.setPlaceholderText("Search GGUF models, e.g. qwen3 30b, APEX")
        self.search_edit.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        search_row.addWidget(QLabel("Search"))
        search_row.addWidget(self.search_edit, 1)
        search_row.addWidget(self.search_button)
        layout.addLayout(search_row)
        self.results = QListWidget()
        self.results.setObjectName("hubResults")
        self.results.setMaximumHeight(120)
        self.results.hide()
        self.results.itemActivated.connect(self._hit_chosen)
        self.results.itemClicked.connect(self._hit_chosen)
        layout.addWidget(self.results)
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
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["File", "Size", "Fit here"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
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
        self.search_button.setEnabled(not busy)
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
        lister = self._file_lister
        self._start(f"list {repo}", lambda _token: lister(repo), self._listed)

    def _listed(self, files: object) -> None:
        assert isinstance(files, list)
        self._files = files
        self.table.setRowCount(len(files))
        for row, remote in enumerate(files):
            name = remote.name if not remote.shards else f"{remote.name} ({len(remote.shards)} shards)"
            self.table.setItem(row, 0, QTableWidgetItem(name))
            size = QTableWidgetItem(format_size(remote.size) if remote.size is not None else "?")
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, 1, size)
            badge, why = hub_search.fit_badge(remote.size, self._gpu_free(), self._ram())
            fit = QTableWidgetItem(badge if self._snapshot is not None else "?")
            fit.setToolTip(why if self._snapshot is not None else "hardware not probed yet")
            fit.setForeground(QBrush(QColor(BADGE_COLOURS.get(badge, "#808080"))))
            self.table.setItem(row, 2, fit)
        self._set_status(f"{len(files)} GGUF file(s)." if files else
                         "No GGUF files in this repository.")

    def _gpu_free(self) -> list[int]:
        return [g.free_bytes for g in self._snapshot.gpus] if self._snapshot is not None else []

    def _ram(self) -> int:
        return self._snapshot.system.available_bytes if self._snapshot is not None else 0

    def fit_badges(self) -> list[str]:
        return [self.table.item(r, 2).text() for r in range(self.table.rowCount())]

    # --- search -----------------------------------------------------------------------------
    def search(self) -> None:
        """Search the Hub (in the background); offline, say so at once and how to go on."""
        if self._busy():
            return
        query = self.search_edit.text().strip()
        listing = self._listing
        self._set_status(f"Searching for {query!r}...")
        self._start(f"search {query}", lambda _token: hub_search.search_repos(query, listing),
                    self._searched)

    def _searched(self, hits: object) -> None:
        assert isinstance(hits, list)
        self.hits = hits
        self.results.clear()
        for hit in hits:
            item = QListWidgetItem(f"{hit.repo_id}   ({hit.downloads:,} downloads)")
            item.setData(Qt.ItemDataRole.UserRole, hit.repo_id)
            self.results.addItem(item)
        self.results.setVisible(bool(hits))
        self._set_status(f"{len(hits)} repositories: pick one to list its GGUF files."
                         if hits else "No GGUF repositories match.")

    def _hit_chosen(self, item: QListWidgetItem) -> None:
        self.repo_edit.setText(str(item.data(Qt.ItemDataRole.UserRole)))
        self.list_files()

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
                token.progress(done / total if total else 0.0, f"{name}: {format_size(done)}")
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
