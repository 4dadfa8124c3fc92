"""The RPC workers box of the Hardware & tiers panel: the worker list, its probe, the warning.

Signals:

* ``workersChanged(str)``: the typed list, for the settings (the Run panel runs across it).
* ``probesChanged(object)``: a tuple of :class:`WorkerProbe` after each probe; the panel
  fits the tiers across the reachable ones.

Probing runs the tools (``llama-perplexity --rpc W --list-devices``, a few seconds at most
per worker) off the GUI thread through the panel's :class:`WorkerPool`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QLineEdit, QToolButton, QVBoxLayout, QWidget

from apex_gui.core.fit.rpc_workers import (RpcWorker, RpcWorkerError, WorkerProbe, parse_workers,
                                           probe_workers, worker_warnings)
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.settings import load_settings
from apex_gui.qt.workers import Task, WorkerPool

ProbeFunction = Callable[[Sequence[RpcWorker]], tuple[WorkerProbe, ...]]

ERROR_STYLE = "color: #e03131;"


def probe_with_tools(workers: Sequence[RpcWorker]) -> tuple[WorkerProbe, ...]:
    return probe_workers(workers, LlamaTools.for_settings(load_settings()))


class RpcWorkersBox(QGroupBox):
    """Type ``host:port`` workers, probe them, see what each offers or why it cannot be used."""

    workersChanged = Signal(str)
    probesChanged = Signal(object)

    def __init__(self, workers: WorkerPool, text: str = "", *,
                 probe: ProbeFunction = probe_with_tools, parent: QWidget | None = None) -> None:
        super().__init__("RPC workers (llama.cpp rpc-server)", parent)
        self.setObjectName("rpcWorkersBox")
        self._pool = workers
        self._probe = probe
        self._task: Task | None = None
        self.probes: tuple[WorkerProbe, ...] = ()
        self.edit = QLineEdit(text)
        self.edit.setObjectName("rpcWorkersEdit")
        self.edit.setPlaceholderText("other machines' devices: 192.168.1.20:50052, "
                                     "192.168.1.21:50052")
        self.edit.setClearButtonEnabled(True)
        self.edit.setToolTip("Start `apex-studio rpc-worker --host ADDRESS` (or llama.cpp's "
                             "rpc-server) on each machine; imatrix, evaluations and the "
                             "recommended command then split layers across them (--rpc)")
        self.probe_button = QToolButton()
        self.probe_button.setText("Probe")
        self.probe_button.setToolTip("Ask each worker for its devices and free memory")
        self.status = QLabel("")
        self.status.setObjectName("rpcWorkersStatus")
        self.status.setWordWrap(True)
        self.warning = QLabel("")
        self.warning.setObjectName("rpcWorkersWarning")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet(ERROR_STYLE)
        self.warning.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.edit, 1)
        row.addWidget(self.probe_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.warning)
        layout.addWidget(self.status)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(600)  # typing an address should not probe each prefix
        self._debounce.timeout.connect(self.probe)
        self.edit.textChanged.connect(self._edited)
        self.probe_button.clicked.connect(self.probe)
        if text.strip():
            self._debounce.start()
        else:
            self._show_idle()

    def workers(self) -> tuple[RpcWorker, ...]:
        """The typed workers (ValueError naming a bad entry)."""
        return parse_workers(self.edit.text())

    def endpoints(self) -> tuple[str, ...]:
        """The typed workers as ``host:port``; empty when the list is empty or malformed."""
        try:
            return tuple(w.endpoint for w in self.workers())
        except RpcWorkerError:
            return ()

    def _show_idle(self) -> None:
        self.status.setStyleSheet("")
        self.status.setText("None: fitting to this machine alone.")

    def _edited(self, text: str) -> None:
        self.workersChanged.emit(text)
        self._debounce.start()

    def probe(self) -> Task | None:
        """Check the list and probe every worker off the GUI thread; the newest probe wins."""
        self._debounce.stop()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            workers = self.workers()
        except RpcWorkerError as error:
            self.warning.setVisible(False)
            self.status.setStyleSheet(ERROR_STYLE)
            self.status.setText(str(error))
            self._set_probes(())
            return None
        if not workers:
            self.warning.setVisible(False)
            self._show_idle()
            self._set_probes(())
            return None
        self.status.setStyleSheet("")
        self.status.setText(f"Probing {len(workers)} worker(s)…")
        self.probe_button.setEnabled(False)
        probe = self._probe
        try:
            # The warnings resolve host names: a slow DNS server must not stall the GUI thread.
            task = self._pool.submit("probe RPC workers",
                                     lambda _token: (worker_warnings(workers), probe(workers)))
        except RuntimeError:  # the pool is shut down: the window closed before the debounce
            self.probe_button.setEnabled(True)
            return None
        self._task = task
        task.finished.connect(lambda found, t=task: self._probed(t, *found))
        task.failed.connect(lambda error, t=task: self._failed(t, error))
        task.done.connect(lambda: self.probe_button.setEnabled(True))
        return task

    def _probed(self, task: Task, warnings: list[str], probes: tuple[WorkerProbe, ...]) -> None:
        if task is not self._task:
            return
        self._task = None
        self.warning.setText("\n".join(warnings))
        self.warning.setVisible(bool(warnings))
        failed = any(not p.reachable for p in probes)
        self.status.setStyleSheet(ERROR_STYLE if failed else "")
        self.status.setText("\n".join(p.summary() for p in probes))
        self._set_probes(tuple(probes))

    def _failed(self, task: Task, error: object) -> None:
        if task is not self._task:
            return
        self._task = None
        self.status.setStyleSheet(ERROR_STYLE)
        self.status.setText(f"Cannot probe the workers: {error}")
        self._set_probes(())

    def _set_probes(self, probes: tuple[WorkerProbe, ...]) -> None:
        self.probes = probes
        self.probesChanged.emit(probes)
