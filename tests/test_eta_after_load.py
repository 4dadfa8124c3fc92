"""The ETA is measured from the first progress report: model loading is not a per-chunk cost."""

from __future__ import annotations

from pathlib import Path

from apex_gui.core.jobs.quantize import ImatrixJob
from apex_gui.core.jobs.monitor import JobMonitor


def test_eta_ignores_the_time_spent_loading_before_the_first_chunk(tmp_path: Path) -> None:
    now = [0.0]
    job = ImatrixJob(model=tmp_path / "m.gguf", calibration=tmp_path / "c.txt",
                     output_path=tmp_path / "i.gguf")
    monitor = JobMonitor(job, clock=lambda: now[0])
    monitor.feed_text("compute_imatrix: computing over 100 chunks, n_ctx=512, batch_size=2048, n_seq=4\n")
    now[0] = 60.0  # a minute of loading before the first chunk
    monitor.feed_text("[1]277.86,")
    assert monitor.progress.fraction == 0.01
    first = monitor.eta_seconds()
    now[0] = 61.0  # then one chunk a second
    monitor.feed_text("[2]279.27,")
    assert monitor.progress.fraction == 0.02
    eta = monitor.eta_seconds()
    assert first is None  # no rate yet from one report
    assert eta is not None and abs(eta - 98.0) < 1e-6  # 98 chunks left at 1 s each (was 2,940 s)
