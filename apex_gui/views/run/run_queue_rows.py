"""The Run panel's queue table: a row per step with its progress, status and log."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QProgressBar, QTableWidgetItem

from apex_gui.core.jobs.device_placement import PLACEMENT_TOOLS
from apex_gui.core.jobs.monitor import BoundedText, cut_long_lines
from apex_gui.core.jobs.runner import JobOutcome, JobStatus


KEY_ROLE = Qt.ItemDataRole.UserRole + 1
#: Lines of log kept per job: a 700-tensor quantize prints ~1,500; a runaway tool more.
LOG_BLOCKS = 20_000
#: Characters of each job's log the panel keeps (its head and tail; the run history keeps
#: the whole bounded log): a tool printing without end must not grow the window.
LOG_HEAD_CHARS, LOG_TAIL_CHARS = 2**20, 2 * 2**20
#: Characters the log pane takes by appending before it is rebuilt from the kept head and
#: tail (appending is cheap, rebuilding is not; both stay bounded).
VIEW_CHARS = 4 * 2**20


def job_log() -> BoundedText:
    return BoundedText(LOG_HEAD_CHARS, LOG_TAIL_CHARS)


STATUS_TEXT = {JobStatus.SUCCEEDED: "done", JobStatus.FAILED: "failed",
               JobStatus.CANCELLED: "cancelled", JobStatus.SKIPPED: "skipped"}


#: The column that shows where each step runs (the device plan of its placement).
DEVICES_COLUMN = 5


def device_plan(job: Any) -> str:
    """Where a step runs: its placement's plan, "CPU" for tools that load no model onto
    devices (quantize), "" before the run has been placed."""
    placement = job.options.placement
    if placement is not None:
        return placement.describe()
    return "CPU" if job.tool not in PLACEMENT_TOOLS else ""


# --- widgets --------------------------------------------------------------------------------


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


class RunQueueRows:
    """The Run panel's queue table: a row per step with its progress, status and log: a part of RunPanel, which derives from it."""

    def _add_run_heading(self, model_name: str, steps: int) -> None:
        """A spanning row above a run's steps naming its model: runs of earlier models stay
        in the table, and each says what it was about."""
        row = self.table.rowCount()
        self.table.insertRow(row)
        when = time.strftime("%H:%M")
        heading = QTableWidgetItem(f"{model_name} · {steps} step(s) · started {when}")
        heading.setFlags(Qt.ItemFlag.ItemIsEnabled)  # not selectable: it is no step
        font = heading.font()
        font.setBold(True)
        heading.setFont(font)
        heading.setToolTip(f"The steps below are a run on {model_name}")
        self.table.setItem(row, 0, heading)
        self.table.setSpan(row, 0, 1, self.table.columnCount())
        self.run_headings.append(row)

    def _add_row(self, job_id: int, key: str, title: str) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        self._rows[job_id] = row
        self._titles[job_id] = title
        self._logs[job_id] = job_log()
        step = QTableWidgetItem(key)
        step.setToolTip(title)
        step.setData(KEY_ROLE, job_id)
        self.table.setItem(row, 0, step)
        self.table.setItem(row, 1, QTableWidgetItem("queued"))
        bar = QProgressBar()
        bar.setRange(0, 1000)
        bar.setValue(0)
        bar.setTextVisible(True)
        bar.setFormat("")
        self.table.setCellWidget(row, 2, bar)
        self.table.setItem(row, 3, QTableWidgetItem(""))
        self.table.setItem(row, 4, QTableWidgetItem(""))
        self.table.setItem(row, DEVICES_COLUMN, QTableWidgetItem(""))

    def _bar(self, job_id: int) -> QProgressBar | None:
        row = self._rows.get(job_id)
        widget = self.table.cellWidget(row, 2) if row is not None else None
        return widget if isinstance(widget, QProgressBar) else None

    def _set(self, job_id: int, column: int, text: str) -> None:
        row = self._rows.get(job_id)
        if row is not None:
            item = self.table.item(row, column)
            if item is not None:
                item.setText(text)
                if column in (4, DEVICES_COLUMN):
                    item.setToolTip(text)

    def _job_started(self, job_id: int) -> None:
        if job_id not in self._rows:
            self._add_row(job_id, self.queue.job(job_id).kind, self.queue.job(job_id).title())
        self._set(job_id, 1, "running")
        self._set(job_id, DEVICES_COLUMN, device_plan(self.queue.job(job_id)))
        bar = self._bar(job_id)
        if bar is not None:
            bar.setRange(0, 0)  # busy until the tool says how much there is
        selected = self._selected_job()
        # Follow the work: a selection on a finished step (say an earlier run's failure)
        # moves to the step that now runs, so its log shows and "Cancel step" applies.
        if selected is None or self.queue.outcome(selected) is not None:
            self.table.selectRow(self._rows[job_id])
            self.table.scrollToItem(self.table.item(self._rows[job_id], 0))
        self._update_status()
        self._update_buttons()

    def _job_progress(self, job_id: int, progress: Any, eta: float | None) -> None:
        bar = self._bar(job_id)
        fraction = progress.fraction
        if bar is not None and fraction is not None:
            if bar.maximum() == 0:
                bar.setRange(0, 1000)
            bar.setValue(int(fraction * 1000))
            bar.setFormat(f"{fraction * 100:.0f}%")
        self._set(job_id, 3, _format_eta(eta) if eta else "")
        if progress.detail:
            self._set(job_id, 4, progress.detail)

    def _job_output(self, job_id: int, text: str) -> None:
        log = self._logs.setdefault(job_id, job_log())
        text, self._open_lines[job_id] = cut_long_lines(text, self._open_lines.get(job_id, 0))
        if not text:
            return
        log.add(text)
        if self._selected_job() == job_id:
            if self._view_chars + len(text) > VIEW_CHARS:
                self._show_log_text(log.text())
                return
            cursor = self.log_view.textCursor()
            cursor.movePosition(QTextCursor.MoveOperation.End)
            cursor.insertText(text)
            self._view_chars += len(text)
            self.log_view.ensureCursorVisible()

    def _show_log_text(self, text: str) -> None:
        self.log_view.setPlainText(text)
        self.log_view.moveCursor(QTextCursor.MoveOperation.End)
        self._view_chars = len(text)

    def _job_finished(self, job_id: int, outcome: JobOutcome) -> None:
        if job_id not in self._rows:
            self._add_row(job_id, outcome.job.kind, outcome.job.title())
        self._set(job_id, 1, STATUS_TEXT.get(outcome.status, outcome.status.value))
        self._set(job_id, DEVICES_COLUMN, device_plan(outcome.job))
        self._set(job_id, 3, "")
        self._set(job_id, 4, outcome.message)
        if not outcome.succeeded and outcome.message:
            # The reason belongs in the log pane, under the tool's last lines, not only in
            # the tooltip of a narrow column.
            self._job_output(job_id, f"\n=== {self._titles.get(job_id, outcome.job.title())}: "
                                     f"{STATUS_TEXT.get(outcome.status, outcome.status.value)} ===\n"
                                     f"{outcome.message}\n")
            if outcome.status is JobStatus.FAILED:
                self.failure_label.setText(f"{self._titles.get(job_id, '')} failed: {outcome.message}")
                self.failure_label.show()
                self.table.selectRow(self._rows[job_id])
        bar = self._bar(job_id)
        if bar is not None:
            bar.setRange(0, 1000)
            if outcome.succeeded:
                bar.setValue(1000)
                bar.setFormat("100%")
            else:
                bar.setFormat(STATUS_TEXT.get(outcome.status, ""))
        self._update_status()
        self._update_buttons()
        self.jobFinished.emit(outcome)

    def _all_finished(self, failures: int) -> None:
        total = len(self._batch) or sum(1 for j in self._rows if self.queue.outcome(j) is not None)
        first_failed = next((j for j in self._batch if (o := self.queue.outcome(j)) is not None
                             and o.status is JobStatus.FAILED), None)
        if first_failed is not None:
            # The run is over: show why it failed (its log ends with the reason).
            self.table.selectRow(self._rows[first_failed])
        if failures:
            message = f"APEX Studio: the run finished, {failures} of {total} step(s) did not succeed"
        else:
            message = f"APEX Studio: all {total} step(s) finished"
        self.status_label.setText(message.removeprefix("APEX Studio: ").capitalize() + ".")
        self.notify(message)
        self._update_buttons()
        self.runFinished.emit(failures)
