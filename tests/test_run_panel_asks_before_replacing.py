"""The window asks before a run replaces quants already on disk (the CLI wants --force)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QMessageBox

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.assembly import output_name
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.run.run_panel import RunPanel

pytestmark = pytest.mark.gui


@pytest.fixture
def panel(qtbot, tmp_path: Path, tiny_qwen2moe: Path):
    store = RunStore(tmp_path / "runs.sqlite")
    queue = JobQueue(None, store)
    panel = RunPanel(queue, open_model(tiny_qwen2moe))
    qtbot.addWidget(panel)
    panel.output_dir.edit.setText(str(tmp_path / "out"))
    panel.set_checked_profiles(["compact"])
    panel.kl_box.setChecked(False)
    panel.ppl_box.setChecked(False)
    yield panel
    queue.shutdown(5000)
    store.close()


def _answer(panel: RunPanel, button: QMessageBox.StandardButton, seen: list[str]) -> None:
    box = panel._replace_box
    if box is None:  # not open yet: look again on the next turn of the event loop
        QTimer.singleShot(10, lambda: _answer(panel, button, seen))
        return
    seen.append(box.text())
    box.button(button).click()


def test_an_existing_quant_is_replaced_only_when_the_user_says_so(panel: RunPanel,
                                                                  tmp_path: Path) -> None:
    existing = tmp_path / "out" / output_name(panel._model, "Compact")
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"an earlier quant")
    seen: list[str] = []
    QTimer.singleShot(0, lambda: _answer(panel, QMessageBox.StandardButton.Cancel, seen))
    assert panel.start() is None
    assert seen and str(existing) in seen[0]
    assert "already exist" in panel.status_label.text()
    assert existing.read_bytes() == b"an earlier quant" and panel.queue.is_busy() is False

    QTimer.singleShot(0, lambda: _answer(panel, QMessageBox.StandardButton.Yes, seen))
    ids = panel.start()
    assert ids and len(seen) == 2
    panel.queue.cancel_all()


def test_no_question_when_nothing_would_be_replaced(panel: RunPanel) -> None:
    ids = panel.start()
    assert ids and panel._replace_box is None
