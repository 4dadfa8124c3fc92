"""Model card and upload: choose the quants, read the card, save it or send it to the Hub.

The card is rendered by :mod:`apex_gui.core.report.model_card` from the measured results; the list
of files an upload sends comes from :func:`apex_gui.core.hub.publish.upload_plan`, shown before
anything is sent. On opening, a worker checks whether huggingface.co can be reached (a few
seconds at most) and who is logged in, so an offline machine is told at once and can still
save the card and recipes to a folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QListWidget, QListWidgetItem, QPlainTextEdit,
                               QProgressBar, QPushButton, QSplitter, QTabWidget, QTextBrowser,
                               QVBoxLayout, QWidget)

from apex_gui.core.hub.publish import (
    Account, Connectivity, UploadCancelled, UploadPlan, check_online, hub_account, repo_name_for,
    upload, upload_plan,
)
from apex_gui.core.plan.profiles import all_profiles
from apex_gui.core.report.card_facts import model_facts, quant_recipes, safe_name
from apex_gui.core.report.model_card import build_card_inputs, recipe_files, render_model_card
from apex_gui.core.report.results import QuantResult
from apex_gui.core.units import format_size
from apex_gui.qt.workers import CancelToken, Task, WorkerPool

__all__ = ["PublishDialog"]

PATH_ROLE = Qt.ItemDataRole.UserRole + 1


class PublishDialog(QDialog):
    """Write the model card for chosen quants; upload them with the card when online."""

    connectivityChecked = Signal(bool, str)  # online, message
    uploadFinished = Signal(bool, str)  # succeeded, URL or error message

    def __init__(self, rows: Sequence[QuantResult], *, store: Any = None, model: Any = None,
                 fits_by_profile: Mapping[str, Any] | None = None, hardware: str = "",
                 context: int = 8192, workers: WorkerPool | None = None,
                 check_network: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Model card and publish")
        self.setObjectName("publishDialog")
        self.resize(1000, 720)
        self._rows = list(rows)
        self._recipes = quant_recipes(store) if store is not None else {}
        self._facts = model_facts(model) if model is not None and hasattr(model, "layers") else None
        self._fits = dict(fits_by_profile or {})
        self._hardware = hardware
        self._context = context
        self._profiles = all_profiles()
        self._workers = workers or WorkerPool(self, max_threads=2)
        self._own_workers = workers is None
        self._account: Account | None = None
        self._online: bool | None = None
        self._upload_task: Task | None = None
        self.mmproj: tuple[str, int] | None = None
        self.card_text = ""
        self.plan: UploadPlan | None = None

        model_name = safe_name((getattr(model, "name", "") or "").strip()
                               or _name_from_rows(self._rows))
        self.model_name_edit = QLineEdit(model_name)
        self.repo_edit = QLineEdit(f"USER/{repo_name_for(model_name)}")
        self.repo_edit.setToolTip("USER/REPO on huggingface.co; filled with your account name "
                                  "once the login is checked")
        self.base_model_edit = QLineEdit(_base_model_id(model))
        self.base_model_edit.setPlaceholderText("e.g. Qwen/Qwen3.5-35B-A3B (optional)")
        self.private_box = QCheckBox("Private repository")
        self.mmproj_button = QPushButton("Add vision projector…")
        form = QFormLayout()
        form.addRow("Model name", self.model_name_edit)
        form.addRow("Repository", self.repo_edit)
        form.addRow("Base model", self.base_model_edit)
        extras = QHBoxLayout()
        extras.addWidget(self.private_box)
        extras.addStretch(1)
        extras.addWidget(self.mmproj_button)
        form.addRow("", extras)

        self.file_list = QListWidget()
        self.file_list.setObjectName("publishFiles")
        for row in self._rows:
            if row.kind != "apex":
                continue
            size = format_size(row.size_bytes) if row.size_bytes else "?"
            item = QListWidgetItem(f"{row.label}  ({size})  {row.file_name}")
            item.setData(PATH_ROLE, row.path)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            item.setToolTip(row.path)
            self.file_list.addItem(item)
        self.upload_list = QListWidget()
        self.upload_list.setObjectName("uploadList")
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(QLabel("Quants to publish"))
        left_layout.addWidget(self.file_list, 2)
        left_layout.addWidget(QLabel("An upload sends"))
        left_layout.addWidget(self.upload_list, 3)

        self.markdown_view = QPlainTextEdit()
        self.markdown_view.setReadOnly(True)
        self.markdown_view.setObjectName("cardMarkdown")
        self.preview = QTextBrowser()
        self.preview.setOpenExternalLinks(True)
        self.card_tabs = QTabWidget()
        self.card_tabs.addTab(self.preview, "Card preview")
        self.card_tabs.addTab(self.markdown_view, "README.md")
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.card_tabs)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)

        self.status = QLabel("Checking huggingface.co…")
        self.status.setObjectName("publishStatus")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.save_button = QPushButton("Save card to folder…")
        self.upload_button = QPushButton("Upload")
        self.upload_button.setEnabled(False)
        self.cancel_button = QPushButton("Cancel upload")
        self.cancel_button.hide()
        self.close_button = QPushButton("Close")
        buttons = QHBoxLayout()
        buttons.addWidget(self.status, 1)
        buttons.addWidget(self.progress)
        for button in (self.save_button, self.upload_button, self.cancel_button,
                       self.close_button):
            buttons.addWidget(button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(splitter, 1)
        layout.addLayout(buttons)

        for edit in (self.model_name_edit, self.repo_edit, self.base_model_edit):
            edit.textChanged.connect(self.update_card)
        self.model_name_edit.textEdited.connect(self._model_name_edited)
        self.file_list.itemChanged.connect(self.update_card)
        self.mmproj_button.clicked.connect(self._choose_mmproj)
        self.save_button.clicked.connect(self._choose_folder)
        self.upload_button.clicked.connect(self.start_upload)
        self.cancel_button.clicked.connect(self.cancel_upload)
        self.close_button.clicked.connect(self.reject)
        self.update_card()
        if check_network:
            self.check_network()

    # --- card ---------------------------------------------------------------------------
    def selected_paths(self) -> list[str]:
        return [self.file_list.item(i).data(PATH_ROLE) for i in range(self.file_list.count())
                if self.file_list.item(i).checkState() == Qt.CheckState.Checked]

    def set_mmproj(self, path: str | None) -> None:
        self.mmproj = (path, Path(path).stat().st_size) if path else None
        self.update_card()

    def update_card(self) -> None:
        """Re-render the card and the upload list from the current choices."""
        inputs, names = build_card_inputs(
            self._rows, self._recipes, repo_id=self.repo_edit.text().strip(),
            model_name=self.model_name_edit.text().strip() or "Model",
            profiles=self._profiles, selected=self.selected_paths(), facts=self._facts,
            base_model=self.base_model_edit.text().strip(), fits_by_profile=self._fits,
            hardware=self._hardware, context=self._context,
            mmproj=(Path(self.mmproj[0]).name, self.mmproj[1]) if self.mmproj else None)
        self.card_text = render_model_card(inputs)
        files = [(path, name) for path, name in names.items()]
        if self.mmproj:
            files.append((self.mmproj[0], Path(self.mmproj[0]).name))
        self.recipes = recipe_files(inputs)
        self.plan = upload_plan(inputs.repo_id, files, readme=self.card_text,
                                extras=self.recipes)
        scroll = self.markdown_view.verticalScrollBar().value()
        self.markdown_view.setPlainText(self.card_text)
        self.markdown_view.verticalScrollBar().setValue(scroll)
        self.preview.setMarkdown(_without_front_matter(self.card_text))
        self.upload_list.clear()
        for item in self.plan.items:
            self.upload_list.addItem(f"{item.path_in_repo}  ({format_size(item.size_bytes)})")
        for problem in self.plan.problems:
            entry = QListWidgetItem(f"⚠ {problem}")
            entry.setForeground(Qt.GlobalColor.red)
            self.upload_list.addItem(entry)
        self._update_buttons()

    def _model_name_edited(self, text: str) -> None:
        owner = self.repo_edit.text().split("/", 1)[0] or "USER"
        self.repo_edit.setText(f"{owner}/{repo_name_for(text)}")

    def save_to_folder(self, folder: str | Path) -> list[Path]:
        """README.md and the recipes into ``folder`` (the GGUFs stay where they are)."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        written = [target / "README.md"]
        written[0].write_text(self.card_text, encoding="utf-8")
        for name, local in self.recipes.items():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, destination)
            written.append(destination)
        self.status.setText(f"Wrote {len(written)} file(s) to {target}")
        return written

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the model card into")
        if folder:
            try:
                self.save_to_folder(folder)
            except OSError as error:
                # Said in the dialog (the button's slot must not raise into Qt).
                self.status.setText(f"{folder}: cannot write the card ({error.strerror or error}). "
                                    "Choose a folder you can write to.")

    def _choose_mmproj(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Vision projector", "", "GGUF (*.gguf)")
        if path:
            self.set_mmproj(path)

    # --- network ------------------------------------------------------------------------
    def check_network(self) -> Task:
        """Reachability, then the login, off the GUI thread."""
        def probe(_token: CancelToken) -> tuple[Connectivity, Account | None, str]:
            status = check_online()
            if not status.online:
                return status, None, ""
            try:
                return status, hub_account(), ""
            except Exception as error:  # noqa: BLE001 - shown to the user as it is
                return status, None, str(error)

        task = self._workers.submit("check huggingface.co", probe)
        task.finished.connect(self._network_checked)
        task.failed.connect(lambda error: self._network_checked(
            (Connectivity(False, f"network check failed: {error}"), None, "")))
        return task

    def _network_checked(self, result: Any) -> None:
        status, account, login_error = result
        self._online = status.online
        self._account = account
        if not status.online:
            text = status.message
        elif account is None:
            text = login_error
        else:
            text = f"Logged in to Hugging Face as {account.name}"
            owner, _, name = self.repo_edit.text().partition("/")
            if owner == "USER":
                self.repo_edit.setText(f"{account.name}/{name}")
        self.status.setText(text)
        self._update_buttons()
        self.connectivityChecked.emit(status.online, text)

    def _update_buttons(self) -> None:
        uploading = self._upload_task is not None
        ready = bool(self.plan and self.plan.ready)
        self.upload_button.setEnabled(bool(self._online and self._account and ready)
                                      and not uploading)
        if not self._online:
            self.upload_button.setToolTip("No connection to huggingface.co")
        elif self._account is None:
            self.upload_button.setToolTip("Not logged in: run `hf auth login`")
        elif not ready:
            self.upload_button.setToolTip("Fix the problems listed under the files first")
        else:
            self.upload_button.setToolTip("")
        self.cancel_button.setVisible(uploading)
        self.progress.setVisible(uploading)

    # --- upload -------------------------------------------------------------------------
    def start_upload(self) -> Task | None:
        if self.plan is None or not self.plan.ready or self._account is None:
            return None
        plan, token, private = self.plan, self._account.token, self.private_box.isChecked()

        def send(cancel: CancelToken) -> str:
            return upload(plan, token=token, private=private,
                          progress=lambda done, total, what: cancel.progress(
                              done / total if total else 1.0, what),
                          should_stop=lambda: cancel.cancelled)

        task = self._workers.submit(f"upload to {plan.repo_id}", send)
        self._upload_task = task
        task.progress.connect(self._upload_progress)
        task.finished.connect(lambda url: self._upload_done(True, str(url)))
        task.failed.connect(lambda error: self._upload_done(
            False, "upload stopped" if isinstance(error, UploadCancelled) else str(error)))
        task.done.connect(self._upload_ended)
        self.status.setText(f"Uploading {format_size(plan.total_bytes)} to {plan.repo_id}…")
        self._update_buttons()
        return task

    def _upload_progress(self, fraction: float, what: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.status.setText(f"Uploading {what}")

    def _upload_done(self, ok: bool, message: str) -> None:
        self.status.setText(f"Published: {message}" if ok else f"Upload failed: {message}")
        self.uploadFinished.emit(ok, message)

    def _upload_ended(self) -> None:
        if self._upload_task is not None and self._upload_task.cancelled:
            self.status.setText("Upload cancelled; files already sent stay in the repository")
            self.uploadFinished.emit(False, "cancelled")
        self._upload_task = None
        self._update_buttons()

    def cancel_upload(self) -> None:
        if self._upload_task is not None:
            self._upload_task.cancel()

    def done(self, result: int) -> None:  # noqa: D401 - Qt override: closing cancels the upload
        self.cancel_upload()
        if self._own_workers:
            self._workers.shutdown(10_000)
        super().done(result)


def _without_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end >= 0:
            return text[end + 5:]
    return text


def _name_from_rows(rows: Sequence[QuantResult]) -> str:
    for row in rows:
        if row.kind == "reference" and row.path:
            stem = Path(row.path).stem
            for suffix in ("-f16", "-bf16", "-F16", "-BF16", "-f32", "-F32"):
                stem = stem.removesuffix(suffix)
            return stem
    for row in rows:
        if row.kind == "apex" and row.path:
            return Path(row.path).stem.split("-APEX-")[0]
    return "Model"


def _base_model_id(model: Any) -> str:
    """The source's Hub id from GGUF metadata (``general.base_model.0.repo_url``), if any."""
    metadata = getattr(model, "metadata", {}) or {}
    url = str(metadata.get("general.base_model.0.repo_url", "") or "")
    if url.startswith("https://huggingface.co/"):
        return url.removeprefix("https://huggingface.co/").strip("/")
    return ""
