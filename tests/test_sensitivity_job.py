"""Sensitivity as a Run-queue job: progress parsed from the command's real output, a full
run through the window's queue (history, table used), and a clean cancel."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.quality.job import (SensitivityJob, SensitivityProgressReader,
                                       parse_sensitivity_progress)
from apex_gui.qt.job_queue import JobQueue

LOG = Path(__file__).parent / "logs" / "sensitivity_progress.log"
REPO = Path(__file__).resolve().parents[1]


def test_progress_and_verdict_from_recorded_output() -> None:
    text = LOG.read_bytes().decode("utf-8")  # keep the \r the command separates with
    assert parse_sensitivity_progress("[  3.8%] measured Q2_K, about 60 s left\x1b[K") == (
        0.038, "measured Q2_K")
    reader = SensitivityProgressReader()
    fractions = []
    for piece in text.split("\r"):
        if reader.peek(piece):
            fractions.append(reader.progress.fraction)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(fractions) > 20
    job = SensitivityJob(model=Path("m.gguf"), output_path=Path("m.sensitivity.json"))
    verdict = job.verdict(0, text)
    assert verdict.succeeded and verdict.message == "242 tensors x 8 types, 12 KL probes"
    # The counts themselves come from the table the command wrote.
    demo_table = REPO / "resources" / "demo" / "apex-demo-trained-qwen2moe-f16.sensitivity.json"
    assert job.output_results(demo_table) == {"tensors": 122, "types": 8, "probes": 14}
    failed = job.verdict(2, text.split("wrote")[0] + "\nerror: llama-quantize to Q6_K failed\n")
    assert not failed.succeeded and "llama-quantize to Q6_K failed" in failed.message


@pytest.fixture
def window(qtbot, tmp_path: Path, tiny_qwen2moe: Path, llama_tools):
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels

    model_path = tmp_path / "tiny.gguf"
    shutil.copyfile(tiny_qwen2moe, model_path)
    store = RunStore(tmp_path / "store" / "runs.sqlite")
    window = MainWindow(probe_hardware=False)
    qtbot.addWidget(window)
    panels = install_panels(window, store=store, queue=JobQueue(llama_tools, store),
                            probe_hardware=False)
    with qtbot.waitSignal(window.modelChanged, timeout=20_000):
        window.open_model_file(model_path)
    yield window, panels, store, model_path
    window.close()
    store.close()


@pytest.mark.gui
@pytest.mark.slow
def test_sensitivity_runs_in_the_queue_and_is_used(qtbot, window) -> None:
    from apex_gui.views.window.quality_wiring import queue_sensitivity

    window, panels, store, model_path = window
    state = window.quality_state
    assert state.table is None and not state.overlay_action.isEnabled()
    progress: list[float] = []
    panels.queue.jobProgress.connect(lambda _id, p, _eta: progress.append(p.fraction))
    # On the job's end, not the table's: a failed run then says why instead of timing out.
    with qtbot.waitSignal(panels.queue.jobFinished, timeout=170_000):
        job_id = queue_sensitivity(window, panels.queue, state, context=128, chunks=2)
    outcome = panels.queue.outcome(job_id)
    assert outcome.succeeded, outcome.message
    assert state.table is not None  # set by the window's own handler of the same signal
    assert progress and max(progress) == 1.0
    assert (model_path.parent / "tiny.sensitivity.json").is_file()
    assert state.overlay_action.isEnabled()
    assert state.kld_label.text() not in ("-", "types not measured")
    # Kept in the run history and shown in the Run tab like the other jobs.
    runs = store.runs(kind="sensitivity")
    assert runs and runs[0].status == "succeeded"
    kinds = [panels.run.table.item(r, 0).text() for r in range(panels.run.table.rowCount())]
    assert "sensitivity" in kinds


@pytest.mark.gui
def test_cancelled_sensitivity_job_leaves_no_table(qtbot, window, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancel stops the command politely: no table, no partial file, no scratch folder (a
    full quant of the model for a big one); the job said what it would cost before it ran."""
    from apex_gui.core.quality.scratch import SCRATCH_PREFIX
    from apex_gui.views.window.quality_wiring import queue_sensitivity

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the command's scratch folder goes here
    window, panels, store, model_path = window
    state = window.quality_state
    with qtbot.waitSignal(panels.queue.jobProgress, timeout=120_000):
        job_id = queue_sensitivity(window, panels.queue, state, context=128, chunks=2)
    title = panels.queue.job(job_id).title()
    assert "about" in title and "scratch disk up to" in title, title
    qtbot.waitUntil(lambda: bool(list(temp.glob(SCRATCH_PREFIX + "*"))), timeout=120_000)
    with qtbot.waitSignal(panels.queue.jobFinished, timeout=60_000):
        panels.queue.cancel(job_id)
    outcome = panels.queue.outcome(job_id)
    assert not outcome.succeeded and outcome.status.value == "cancelled"
    assert not (model_path.parent / "tiny.sensitivity.json").exists()
    assert not list(model_path.parent.glob("*.partial"))
    assert not list(temp.glob(SCRATCH_PREFIX + "*"))
    assert state.table is None
