"""A tool that crashes on this CPU class is run again without the crashing path.

Driven by stand-in tools (tests/fakes.py) that crash the way llama.cpp's AMX path does on
AMX / AVX-512 Xeons, so these tests pass or fail the same on every CPU.
"""

from __future__ import annotations

import signal

import pytest

from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobStatus, run_job
from apex_gui.core.jobs.tools import LlamaTools
from fakes import calls, copying_quantize, crashing_perplexity


@pytest.fixture
def text(tmp_path, text_words):
    path = tmp_path / "text.txt"
    path.write_text(text_words(500))
    return path


def _job(model, text) -> PerplexityJob:
    return PerplexityJob(model=model, text=text, context=128, chunks=2,
                         options=RunOptions(threads=2))


def test_a_crash_without_no_repack_is_retried_once_and_recorded(tmp_path, tiny_qwen2moe, text):
    folder = tmp_path / "bin"
    crashing_perplexity(folder)
    store = RunStore(tmp_path / "runs.db")
    seen: list[str] = []
    outcome = run_job(_job(tiny_qwen2moe, text), LlamaTools(folder), store, on_output=seen.append)
    assert outcome.status is JobStatus.SUCCEEDED, outcome.message
    assert outcome.results["ppl"] == pytest.approx(279.2694)
    assert outcome.job.options.no_repack
    note = outcome.results["crash_retry"]
    assert "SIGSEGV" in note and "--no-repack" in note and "sapphirerapids" not in note
    assert "[APEX Studio] llama-perplexity crashed (SIGSEGV" in "".join(seen)
    argument_lines = calls(folder)
    assert len(argument_lines) == 2
    assert "--no-repack" not in argument_lines[0] and "--no-repack" in argument_lines[1]
    crashed, retried = sorted(store.runs(), key=lambda record: record.id)
    assert crashed.status == "failed" and "crashed (SIGSEGV (11))" in crashed.message
    assert retried.status == "succeeded" and "--no-repack" in retried.argv
    assert retried.results["crash_retry"] == note and "--no-repack" in retried.message
    store.close()


def test_without_crash_retry_the_crash_is_the_outcome(tmp_path, tiny_qwen2moe, text):
    folder = tmp_path / "bin"
    crashing_perplexity(folder)
    outcome = run_job(_job(tiny_qwen2moe, text), LlamaTools(folder), crash_retry=False)
    assert outcome.status is JobStatus.FAILED
    assert outcome.signal_number == signal.SIGSEGV
    assert "crashed (SIGSEGV (11))" in outcome.message
    assert len(calls(folder)) == 1


def test_no_repack_setting_passes_the_flag_from_the_first_run(tmp_path, tiny_qwen2moe, text):
    folder = tmp_path / "bin"
    crashing_perplexity(folder)
    outcome = run_job(_job(tiny_qwen2moe, text), LlamaTools(folder, options=RunOptions(no_repack=True)))
    assert outcome.succeeded and "crash_retry" not in outcome.results
    assert [("--no-repack" in line) for line in calls(folder)] == [True]


def test_a_crashing_cpu_variant_is_skipped_for_the_next_best(tmp_path, tiny_qwen2moe, text):
    folder = tmp_path / "bin"
    crashing_perplexity(folder, mode="variant", signal="SIGILL",
                        variants=("haswell", "sapphirerapids", "x64"))
    outcome = run_job(_job(tiny_qwen2moe, text), LlamaTools(folder))
    assert outcome.status is JobStatus.SUCCEEDED, outcome.message
    assert outcome.job.options.skip_cpu_variants == ("sapphirerapids",)
    assert "SIGILL" in outcome.results["crash_retry"]
    assert "sapphirerapids" in outcome.results["crash_retry"]
    # First run as built, then --no-repack (still the crashing variant), then without it.
    assert len(calls(folder)) == 3


def test_a_tool_that_always_crashes_fails_after_the_fallbacks(tmp_path, tiny_qwen2moe, text):
    folder = tmp_path / "bin"
    crashing_perplexity(folder, mode="always")
    outcome = run_job(_job(tiny_qwen2moe, text), LlamaTools(folder))
    assert outcome.status is JobStatus.FAILED
    assert "crashed (SIGSEGV (11))" in outcome.message
    assert "ran it again without repacking" in outcome.message
    assert len(calls(folder)) == 2


def test_quantize_has_no_repack_flag_and_is_not_changed(tmp_path, tiny_qwen2moe):
    folder = tmp_path / "bin"
    copying_quantize(folder)
    job = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "q.gguf", base_type="Q4_K_M")
    assert job.without_repack() is job
    argv = job.with_options(RunOptions(no_repack=True)).argv(LlamaTools(folder))
    assert "--no-repack" not in argv


# --- apex-studio tools --check -----------------------------------------------------------------


def test_tools_check_finds_a_crashing_repack_path_and_remembers_it(tmp_path):
    from apex_gui.core.settings import Settings
    from apex_gui.core.jobs.tools_check import run_tools_check
    from apex_gui.core.jobs.tools_findings import known_check

    folder = tmp_path / "bin"
    copying_quantize(folder)
    crashing_perplexity(folder)
    tools = LlamaTools(folder)
    report = run_tools_check(tools)
    assert report.ok and report.repack_broken, report.summary()
    perplexity = next(c for c in report.checks if c.tool == "llama-perplexity")
    assert "only with --no-repack" in perplexity.detail and "SIGSEGV" in perplexity.detail
    assert "--no-repack" in report.summary()
    assert known_check(LlamaTools(folder)) == report
    # Every later run of this build on this CPU keeps weights as stored from the start.
    assert LlamaTools.for_settings(Settings(llama_cpp_dir=str(folder))).run_options().no_repack
    elsewhere = LlamaTools.for_settings(Settings(llama_cpp_dir=str(tmp_path / "other")))
    assert not elsewhere.run_options().no_repack


def test_tools_check_names_a_broken_tool_and_its_fix_on_the_command_line(tmp_path, capsys):
    from apex_gui.cli import main

    folder = tmp_path / "bin"
    copying_quantize(folder)
    crashing_perplexity(folder, mode="always")
    code = main(["tools", "--check", "--llama-cpp-dir", str(folder)])
    out = capsys.readouterr().out
    assert code == 1
    line = next(ln for ln in out.splitlines() if ln.startswith("llama-perplexity"))
    assert "BROKEN" in line and "SIGSEGV" in line and "even with --no-repack" in line
    assert "fix: rebuild the tools" in out
    assert "llama-perplexity is broken on this CPU" in out


SAPPHIRE_RAPIDS_FLAGS = frozenset(
    "sse4_2 avx f16c fma avx2 bmi2 avx512f avx512vbmi avx512_vnni avx512_bf16 amx_tile "
    "amx_int8 avx_vnni".split())
ALL_X86_VARIANTS = ("alderlake", "cannonlake", "cascadelake", "cooperlake", "haswell", "icelake",
                    "ivybridge", "piledriver", "sandybridge", "sapphirerapids", "skylakex",
                    "sse42", "x64", "zen4")


@pytest.mark.parametrize(("flags", "available", "expected"), [
    (SAPPHIRE_RAPIDS_FLAGS, ALL_X86_VARIANTS, "sapphirerapids"),
    (SAPPHIRE_RAPIDS_FLAGS, tuple(v for v in ALL_X86_VARIANTS if v != "sapphirerapids"), "zen4"),
    (frozenset("sse4_2 avx f16c fma avx2 bmi2".split()), ALL_X86_VARIANTS, "haswell"),
    (frozenset("sse4_2 avx f16c fma avx2 bmi2 avx_vnni".split()), ALL_X86_VARIANTS, "alderlake"),
    (frozenset(), ALL_X86_VARIANTS, "x64"),
    (SAPPHIRE_RAPIDS_FLAGS, (), None),
])
def test_the_variant_ggml_loads_is_predicted_from_the_cpu_flags(flags, available, expected):
    from apex_gui.core.jobs.tools import expected_cpu_variant

    assert expected_cpu_variant(available, flags) == expected


@pytest.mark.gui
def test_the_qt_queue_retries_a_crash_without_repacking_and_says_so(qtbot, tmp_path,
                                                                     tiny_qwen2moe, text):
    from apex_gui.qt.job_queue import JobQueue

    folder = tmp_path / "bin"
    crashing_perplexity(folder)
    store = RunStore(tmp_path / "runs.db")
    queue = JobQueue(LlamaTools(folder), store)
    started: list[int] = []
    output: list[str] = []
    queue.jobStarted.connect(started.append)
    queue.jobOutput.connect(lambda _job_id, chunk: output.append(chunk))
    with qtbot.waitSignal(queue.allFinished, timeout=60_000) as done:
        job_id = queue.add(_job(tiny_qwen2moe, text))
    assert done.args == [0]
    outcome = queue.outcome(job_id)
    assert outcome is not None and outcome.succeeded, outcome
    assert outcome.results["ppl"] == pytest.approx(279.2694)
    assert "SIGSEGV" in outcome.results["crash_retry"]
    assert started == [job_id]  # one job for the user, however many runs it took
    assert "[APEX Studio] llama-perplexity crashed (SIGSEGV" in "".join(output)
    assert [("--no-repack" in line) for line in calls(folder)] == [False, True]
    assert sorted(r.status for r in store.runs()) == ["failed", "succeeded"]
    queue.shutdown()
    store.close()
