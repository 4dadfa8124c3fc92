"""Run panel: real llama.cpp jobs on the synthetic model through the Qt job queue."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QElapsedTimer, QTimer

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.assembly import RunRequest, pipeline_for
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobStatus
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.results.results_panel import ResultsPanel
from apex_gui.views.run.run_panel import RunPanel

pytestmark = pytest.mark.gui

SCREENSHOTS = Path(os.environ.get("APEX_SCREENSHOT_DIR", "/tmp/apex-screenshots"))


class Heartbeat:
    """A 10 ms timer that records the longest gap between its ticks (event-loop stalls)."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.clock = QElapsedTimer()
        self.longest = 0
        self.ticks = 0
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        if self.clock.isValid():
            self.longest = max(self.longest, self.clock.restart())
        else:
            self.clock.start()
        self.ticks += 1

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


@pytest.fixture
def run_store(tmp_path: Path):
    """The real store on the test's disk: its WAL writes must not stall the heartbeat."""
    store = RunStore(tmp_path / "store" / "runs.sqlite")
    yield store
    store.close()


@pytest.fixture
def setup(qtbot, tmp_path: Path, tiny_qwen2moe: Path, llama_tools, run_store):
    store = run_store
    queue = JobQueue(llama_tools, store)
    model = open_model(tiny_qwen2moe)
    panel = RunPanel(queue, model)
    results = ResultsPanel(store)
    results.set_model(model)
    panel.jobFinished.connect(lambda _outcome: results.refresh())
    panel.output_dir.edit.setText(str(tmp_path / "out"))
    for widget in (panel, results):
        qtbot.addWidget(widget)
    yield panel, results, queue, tmp_path / "out"
    queue.shutdown(5000)


def test_real_quantize_and_kl_show_a_result_row_without_stalling_the_gui(qtbot, setup) -> None:
    panel, results, queue, out = setup
    panel.set_checked_profiles(["compact"])
    panel.kl_box.setChecked(True)
    beat = Heartbeat()
    beat.start()

    row_counts: list[int] = []
    results.rowsChanged.connect(row_counts.append)
    # The results table refreshes on every finished job, before the queue reports idle.
    with qtbot.waitSignal(panel.runFinished, timeout=60_000) as finished:
        ids = panel.start()
    beat.stop()
    assert ids is not None and set(ids) >= {"compact:quantize", "compact:kld"}
    assert len(row_counts) >= 3  # reference, quantize and KL runs each refreshed it
    assert finished.args == [0]
    # The event loop kept turning while the tools ran (a GUI thread waiting on a process
    # would not tick). How long its longest gap was depends on the machine's load: that
    # figure is a benchmark's, not a pass/fail line here.
    assert beat.ticks > 20, f"event loop ticked only {beat.ticks} times"

    output = out / "tiny-qwen2moe-APEX-Compact.gguf"
    assert output.is_file() and not output.with_name(output.name + ".partial").exists()
    row = next(r for r in results.rows if r.label == "APEX Compact")
    assert row.size_bytes == output.stat().st_size
    assert row.ppl is not None and row.ppl.error is not None and row.kld_max is not None
    table = results.table_model
    labels = [table.cell_text(r, 0) for r in table.rows]
    assert labels[0] == "F16" and "APEX Compact" in labels
    assert results.ppl_plot.points and results.kld_plot.points
    assert panel.table.item(0, 1).text() in ("done", "skipped")
    statuses = {panel.table.item(r, 0).text(): panel.table.item(r, 1).text()
                for r in range(panel.table.rowCount())}
    assert statuses["compact:quantize"] == "done" and statuses["compact:kld"] == "done"
    assert "finished" in panel.last_notification
    panel.table.selectRow(list(statuses).index("compact:quantize"))
    assert "llama_model_quantize" in panel.log_view.toPlainText() or \
        "blk.0" in panel.log_view.toPlainText()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    panel.resize(1200, 720)
    panel.grab().save(str(SCREENSHOTS / "run_panel.png"))
    results.resize(1100, 760)
    results.grab().save(str(SCREENSHOTS / "results_panel_run.png"))


def test_cancel_a_running_job_leaves_no_partial_output(qtbot, setup) -> None:
    panel, _results, queue, out = setup
    panel.set_checked_profiles(["i-mini"])  # needs an imatrix: a ~50 s llama-imatrix run
    panel.kl_box.setChecked(False)
    ids = panel.start()
    assert ids is not None and "imatrix" in ids
    imatrix_id = ids["imatrix"]
    imatrix_job = queue.job(imatrix_id)
    # The tool is running once it has printed something (its first chunk takes seconds).
    with qtbot.waitSignal(queue.jobOutput, timeout=30_000,
                          check_params_cb=lambda job_id, _text: job_id == imatrix_id):
        pass
    assert queue.running_job_id() == imatrix_id
    panel.table.selectRow(0)
    with qtbot.waitSignal(panel.runFinished, timeout=15_000) as finished:
        panel.cancel_selected()
    assert finished.args[0] == 2  # the imatrix and the quantize that needed it
    assert queue.outcome(imatrix_id).status is JobStatus.CANCELLED
    assert queue.outcome(ids["i-mini:quantize"]).status is JobStatus.SKIPPED
    assert not imatrix_job.output_path.exists()
    assert not imatrix_job.partial_output().exists()
    assert not list(out.glob("*.gguf*"))
    assert panel.table.item(0, 1).text() == "cancelled"
    assert not panel.has_running_jobs()


def test_close_while_running_cancels_and_waits(qtbot, setup) -> None:
    panel, _results, queue, _out = setup
    panel.set_checked_profiles(["i-mini"])
    panel.kl_box.setChecked(False)
    with qtbot.waitSignal(queue.jobStarted, timeout=10_000):
        panel.start()
    assert panel.has_running_jobs()
    started = time.monotonic()
    assert panel.cancel_all_and_wait(10_000)
    assert time.monotonic() - started < 10
    assert not panel.has_running_jobs()
    assert queue.running_job_id() is None


def test_start_is_refused_with_a_reason(qtbot) -> None:
    panel = RunPanel(JobQueue())
    qtbot.addWidget(panel)
    assert not panel.start_button.isEnabled()
    with qtbot.waitSignal(panel.startRefused, timeout=1000) as refused:
        panel.start()
    assert "open the full-precision" in refused.args[0]


def test_pipeline_for_reuses_a_cached_imatrix(tmp_path: Path, tiny_qwen2moe: Path) -> None:
    from apex_gui.core.jobs.calibration import combine_calibration, imatrix_cache_path

    model = open_model(tiny_qwen2moe)
    plans = (plan_from_profile(model, get_profile("i-mini")),
             plan_from_profile(model, get_profile("compact")))
    request = RunRequest(model=model, plans=plans, output_dir=tmp_path / "o",
                         kl_divergence=True)
    keys = [s.key for s in pipeline_for(request).steps]
    assert keys[:2] == ["imatrix", "reference"]
    assert keys[2:] == ["i-mini:quantize", "i-mini:kld", "compact:quantize", "compact:kld"]
    cached = imatrix_cache_path(model.path, combine_calibration(), 512, None)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"stand-in")
    pipeline = pipeline_for(request)
    assert "imatrix" not in [s.key for s in pipeline.steps]
    quantize = pipeline.step("i-mini:quantize").job
    assert quantize.imatrix == cached
    assert pipeline.step("compact:quantize").job.imatrix is None
    assert quantize.output_path.name == "tiny-qwen2moe-APEX-I-Mini.gguf"


def test_install_panels_wires_the_main_window(qtbot, tiny_qwen2moe: Path, run_store,
                                              llama_tools, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from apex_gui.core.fit.device_spec import parse_device_spec
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels

    window = MainWindow(probe_hardware=False)
    qtbot.addWidget(window)
    panels = install_panels(window, store=run_store,
                            queue=JobQueue(llama_tools, run_store), probe_hardware=False)
    titles = [window.center_tabs.tabText(i) for i in range(window.center_tabs.count())]
    panel_titles = ["Hardware && tiers", "Run", "Results"]
    assert [t for t in titles if t in panel_titles] == panel_titles
    panels.hardware.set_manual_devices("RTX 4090")
    with qtbot.waitSignal(panels.hardware.recommendationChanged, timeout=20_000,
                          check_params_cb=lambda rec: rec is not None):
        window.open_model_file(tiny_qwen2moe)
    assert panels.run.start_button.isEnabled()
    assert panels.results.rows and panels.results.rows[0].kind == "reference"

    window.center_tabs.setCurrentWidget(panels.hardware)
    row = [panels.hardware.table.item(r, 0).text().removeprefix("★ ")
           for r in range(panels.hardware.table.rowCount())].index("Compact")
    panels.hardware.table.selectRow(row)
    with qtbot.waitSignal(window.planChanged, timeout=5000):
        panels.hardware.apply_button.click()
    assert window.current_plan.profile.key == "compact"
    assert window.center_tabs.currentIndex() == 0  # back on the heatmap
    assert parse_device_spec("RTX 4090")  # the manual device the fit used

    # Closing while a job runs asks, then cancels and waits.
    panels.run.set_checked_profiles(["i-mini"])
    panels.run.kl_box.setChecked(False)
    panels.run.output_dir.edit.setText(str(tmp_path / "out"))
    with qtbot.waitSignal(panels.queue.jobStarted, timeout=10_000):
        panels.run.start()
    asked: list[str] = []
    monkeypatch.setattr(window, "confirm", lambda title, text: asked.append(title) or False)
    assert not window.close() and panels.run.has_running_jobs()
    monkeypatch.setattr(window, "confirm", lambda title, text: asked.append(title) or True)
    assert window.close()
    assert asked == ["Jobs are running", "Jobs are running"]
    assert not panels.run.has_running_jobs()
