"""The run queue across runs (real llama.cpp tools on the tiny model): a failure's reason
shows in full and in the log pane; the next run's steps come into view, take the selection
from an old failed row (so Cancel step works) and are counted on their own."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.run.run_panel import RunPanel

pytestmark = pytest.mark.gui

RUN_TIMEOUT_MS = 180_000


@pytest.fixture
def panel(qtbot: QtBot, tmp_path: Path, tiny_qwen2moe: Path, llama_tools):  # type: ignore[no-untyped-def]
    store = RunStore(tmp_path / "runs.sqlite")
    queue = JobQueue(llama_tools, store)
    widget = RunPanel(queue, open_model(tiny_qwen2moe))
    widget.resize(1000, 600)
    widget.show()
    qtbot.addWidget(widget)
    yield widget
    queue.shutdown(5000)
    store.close()


def test_failure_reason_in_the_log_and_the_next_run_takes_over(panel: RunPanel, qtbot: QtBot,
                                                               tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Too short to measure anything.\n")
    panel.set_checked_profiles(["compact"])
    panel.kl_box.setChecked(True)
    panel.eval_file.edit.setText(str(short))  # llama-perplexity refuses a text this short
    panel.output_dir.edit.setText(str(tmp_path / "first"))
    with qtbot.waitSignal(panel.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        first_ids = panel.start()
    assert first_ids and finished.args[0] >= 1
    failed = [j for j in first_ids.values()
              if (o := panel.queue.outcome(j)) is not None and not o.succeeded and o.message]
    assert failed, [(panel.queue.outcome(j).status, panel.queue.outcome(j).message) for j in first_ids.values()]
    reason = panel.queue.outcome(failed[0]).message  # type: ignore[union-attr]
    assert panel.failure_label.isVisible() and reason in panel.failure_label.text()
    assert panel._selected_job() == failed[0]
    assert reason in panel.log_view.toPlainText()  # not just a tooltip on a narrow column

    # A second run while the old failed row is selected.
    panel.kl_box.setChecked(False)
    panel.eval_file.edit.setText("")
    panel.output_dir.edit.setText(str(tmp_path / "second"))
    cancel_enabled: list[bool] = []
    panel.queue.jobStarted.connect(lambda _j: cancel_enabled.append(panel.cancel_button.isEnabled()))
    with qtbot.waitSignal(panel.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        second_ids = panel.start()
        assert second_ids
        assert f"{len(second_ids)} step(s) in this run" in panel.status_label.text()
    assert cancel_enabled and cancel_enabled[0], "Cancel step stayed grey on the old failed row"
    assert finished.args[0] == 0
    assert panel.status_label.text() == f"All {len(second_ids)} step(s) finished."
    last_row = panel._rows[list(second_ids.values())[-1]]
    visible = panel.table.viewport().rect()
    assert visible.intersects(panel.table.visualRect(panel.table.model().index(last_row, 0)))
