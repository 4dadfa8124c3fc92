"""Calibration choices reach the run: typed files are used, the chunk limit is passed to
llama-imatrix, and a reused cached importance matrix is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.assembly import pipeline_for
from apex_gui.core.jobs.quantize import ImatrixJob
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.run.run_panel import DEFAULT_IMATRIX_CHUNKS, RunPanel

pytestmark = pytest.mark.gui


@pytest.fixture
def panel(qtbot: QtBot, tmp_path: Path, tiny_qwen2moe: Path):  # type: ignore[no-untyped-def]
    store = RunStore(tmp_path / "runs.sqlite")
    queue = JobQueue(store=store)
    widget = RunPanel(queue, open_model(tiny_qwen2moe))
    widget.output_dir.edit.setText(str(tmp_path / "out"))
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    queue.shutdown(2000)
    store.close()


def test_a_typed_calibration_file_is_used(panel: RunPanel, tmp_path: Path) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("my calibration text\n" * 50)
    panel.set_checked_profiles(["i-compact"])
    QTest.keyClicks(panel.calibration_files, str(mine))  # typed, radio button not clicked
    request = panel.request()
    assert request.calibration_files == (mine,)


def test_the_chunk_limit_reaches_llama_imatrix(panel: RunPanel) -> None:
    panel.set_checked_profiles(["i-compact"])
    assert panel.imatrix_chunks.value() == DEFAULT_IMATRIX_CHUNKS
    panel.imatrix_chunks.setValue(7)
    pipeline = pipeline_for(panel.request())
    imatrix = [s.job for s in pipeline.steps if isinstance(s.job, ImatrixJob)]
    assert imatrix and imatrix[0].chunks == 7
    argv = imatrix[0].args()
    assert argv[argv.index("--chunks") + 1] == "7"
    panel.imatrix_chunks.setValue(0)
    assert panel.request().imatrix_chunks is None  # 0: all of the text


def test_a_reused_imatrix_is_named(panel: RunPanel) -> None:
    panel.set_checked_profiles(["i-compact"])
    panel.kl_box.setChecked(False)
    request = panel.request()
    first = [s.job for s in pipeline_for(request).steps if isinstance(s.job, ImatrixJob)][0]
    first.output_path.write_bytes(b"cached")  # as if an earlier run had made it
    ids = panel.start()
    assert ids is not None
    assert "Reusing the importance matrix" in panel.status_label.text()
    assert "bundled calibration set" in panel.imatrix_note
    panel.queue.cancel_all()
