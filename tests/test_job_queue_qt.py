"""The Qt job queue (QProcess) with the real tools: signals, cancel, dependencies, failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_gui.core.jobs.pipeline import EvaluationOptions, Pipeline, build_pipeline
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobStatus
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.qt.job_queue import JobQueue

pytestmark = pytest.mark.gui


@pytest.fixture
def queue(qtbot, llama_tools):
    jobs = JobQueue(llama_tools, RunStore(), terminate_timeout_s=2.0)
    yield jobs
    jobs.shutdown()


def collect(queue: JobQueue) -> dict[str, list]:
    events: dict[str, list] = {"started": [], "progress": [], "finished": [], "output": []}
    queue.jobStarted.connect(lambda i: events["started"].append(i))
    queue.jobProgress.connect(lambda i, p, eta: events["progress"].append((i, p.fraction, eta)))
    queue.jobFinished.connect(lambda i, o: events["finished"].append((i, o)))
    queue.jobOutput.connect(lambda i, text: events["output"].append(text))
    return events


def test_a_quantize_job_runs_with_progress_and_all_done(qtbot, queue, tiny_qwen2moe, tmp_path):
    events = collect(queue)
    output = tmp_path / "q.gguf"
    job_id = queue.add(QuantizeJob(source=tiny_qwen2moe, output_path=output, base_type="Q4_K_M",
                                   options=RunOptions(threads=2)))
    with qtbot.waitSignal(queue.allFinished, timeout=30_000) as done:
        pass
    assert done.args == [0]
    assert events["started"] == [job_id]
    outcome = queue.outcome(job_id)
    assert outcome is not None and outcome.succeeded and outcome.exit_code == 0, outcome
    assert output.is_file() and not Path(str(output) + ".partial").exists()
    assert events["progress"][-1][1] == 1.0
    assert "quant size" in "".join(events["output"])
    assert RunStore().get(outcome.run_id).status == "succeeded"  # type: ignore[union-attr]


def test_cancelling_the_running_job_terminates_it_and_leaves_no_output(qtbot, queue, deep_model,
                                                                       tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    job_id = queue.add(QuantizeJob(source=deep_model, output_path=folder / "c.gguf",
                                   base_type="Q4_K_M", options=RunOptions(threads=2)))
    queue.jobProgress.connect(lambda i, p, eta: queue.cancel(i))
    with qtbot.waitSignal(queue.jobFinished, timeout=30_000) as finished:
        pass
    assert finished.args[0] == job_id
    outcome = finished.args[1]
    assert outcome.status is JobStatus.CANCELLED
    assert list(folder.iterdir()) == []
    qtbot.waitUntil(lambda: not queue.is_busy(), timeout=5_000)


def test_a_failed_step_skips_its_dependants_and_says_why(qtbot, queue, tiny_qwen2moe, tmp_path):
    """The imatrix step fails on a too-short text; the quantize that needs it never runs."""
    short = tmp_path / "short.txt"
    short.write_text("far too short\n")
    imatrix = ImatrixJob(model=tiny_qwen2moe, calibration=short, output_path=tmp_path / "i.gguf",
                         context=128, options=RunOptions(threads=2))
    quantize = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "q.gguf",
                           base_type="Q4_K_M", imatrix=imatrix.output_path, options=RunOptions(threads=2))
    events = collect(queue)
    ids = queue.add_pipeline(Pipeline.from_jobs([("imatrix", imatrix), ("quantize", quantize)]))
    with qtbot.waitSignal(queue.allFinished, timeout=30_000) as done:
        pass
    assert done.args == [2]
    by_id = dict(events["finished"])
    assert by_id[ids["imatrix"]].status is JobStatus.FAILED
    assert "too short" in by_id[ids["imatrix"]].message
    skipped = by_id[ids["quantize"]]
    assert skipped.status is JobStatus.SKIPPED and "too short" in skipped.message
    assert not (tmp_path / "q.gguf").exists()


def test_a_missing_tool_ends_the_job_with_the_fix(qtbot, tiny_qwen2moe, tmp_path, tools_hidden):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    queue = JobQueue(LlamaTools(empty), RunStore())
    job_id = queue.add(QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "q.gguf",
                                   base_type="Q4_K_M"))
    with qtbot.waitSignal(queue.jobFinished, timeout=10_000) as finished:
        pass
    assert finished.args[0] == job_id
    assert finished.args[1].status is JobStatus.FAILED
    assert "llama-quantize was not found" in finished.args[1].message
    queue.shutdown()


def test_imatrix_quantize_and_kl_divergence_pipeline_in_the_queue(qtbot, queue, tiny_qwen2moe,
                                                                  tmp_path, text_words):
    text = tmp_path / "text.txt"
    text.write_text(text_words(500))
    imatrix = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=tmp_path / "i.gguf",
                         context=128, chunks=2, options=RunOptions(threads=2))
    quantize = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "q.gguf",
                           base_type="Q4_K_M", imatrix=imatrix.output_path, options=RunOptions(threads=2),
                           profile="q4")
    options = EvaluationOptions(reference=tiny_qwen2moe, text=text, context=128, chunks=4)
    ids = queue.add_pipeline(build_pipeline([quantize], imatrix, options))
    with qtbot.waitSignal(queue.allFinished, timeout=60_000) as done:
        pass
    assert done.args == [0], {k: queue.outcome(i).message for k, i in ids.items()}
    kld = queue.outcome(ids["q4:kld"])
    assert kld is not None and kld.results["kld_mean"] >= 0.0 and "kld_p999" in kld.results


def test_a_tool_killed_from_outside_fails_with_the_cause(qtbot, queue, deep_model, tmp_path):
    import signal

    import psutil

    folder = tmp_path / "out"
    folder.mkdir()

    def kill_the_tool(job_id: int, text: str) -> None:
        for child in psutil.Process().children():
            if child.name() == "llama-quantize":
                child.send_signal(signal.SIGKILL)

    queue.jobOutput.connect(kill_the_tool)
    queue.add(QuantizeJob(source=deep_model, output_path=folder / "k.gguf", base_type="Q4_K_M",
                          options=RunOptions(threads=2)))
    with qtbot.waitSignal(queue.jobFinished, timeout=30_000) as finished:
        pass
    outcome = finished.args[1]
    # Qt reports the signal as the crashed process's exit code; the queue keeps it as -N,
    # as the headless runner does, and names it.
    assert outcome.status is JobStatus.FAILED and outcome.exit_code == -signal.SIGKILL
    assert "stopped from outside by SIGKILL" in outcome.message and "memory" in outcome.message
    assert list(folder.iterdir()) == []
