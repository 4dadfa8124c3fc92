"""One source of every job's tool flags: settings, command-line flags and the stored tools
check decide them once, and the command line, the window's queue and the probes pass them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from apex_gui.core.jobs.evaluations import KLDivergenceJob, PerplexityJob
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions, rpc_args
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import prepare_run
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.jobs.tools_check import run_tools_check
from apex_gui.core.settings import Settings, save_settings
from fakes import calls, copying_quantize, crashing_perplexity, make_stand_in_tools

PACKAGE = Path(__file__).resolve().parents[1] / "apex_gui"


def test_settings_and_flags_make_the_options_flags_win() -> None:
    settings = Settings(threads=3, llama_no_repack=False)
    assert RunOptions.for_settings(settings) == RunOptions(threads=3)
    chosen = RunOptions.for_settings(settings, threads=7, no_repack=True, rpc_workers=("h:1",))
    assert chosen == RunOptions(threads=7, no_repack=True, rpc_workers=("h:1",))
    assert RunOptions.for_settings(Settings(threads=2, llama_no_repack=True)).no_repack
    # A hand-edited settings file with a wrong type gives the tool's default, not an error.
    assert RunOptions.for_settings(Settings(threads="abc")).threads == 0  # type: ignore[arg-type]


def test_a_jobs_own_choices_win_over_the_standing_options() -> None:
    standing = RunOptions(threads=4, no_repack=True, skip_cpu_variants=("zen4",),
                          rpc_workers=("a:1",))
    mine = RunOptions(threads=2, skip_cpu_variants=("icelake",), rpc_workers=("b:2",))
    merged = mine.over(standing)
    assert merged == RunOptions(threads=2, no_repack=True, skip_cpu_variants=("icelake", "zen4"),
                                rpc_workers=("b:2",))
    assert RunOptions().over(standing) == standing
    assert standing.for_tool("quantize").rpc_workers == ()
    assert standing.for_tool("perplexity") == standing


def test_each_tool_gets_the_flags_it_takes() -> None:
    options = RunOptions(threads=2, no_repack=True, rpc_workers=("a:1", "b:2"))
    assert options.tool_args("perplexity") == ["-t", "2", "--no-repack", "--rpc", "a:1,b:2"]
    assert options.tool_args("bench") == ["-t", "2", "--repack", "0", "--rpc", "a:1,b:2"]
    assert options.tool_args("completion") == ["-t", "2", "--no-repack"]
    assert options.tool_args("quantize") == []  # its threads are its last positional argument
    assert rpc_args(()) == []


def test_a_stored_finding_reaches_a_job_started_after_the_tools_were_set_up(tmp_path) -> None:
    folder = tmp_path / "bin"
    copying_quantize(folder)
    crashing_perplexity(folder)
    tools = LlamaTools.for_settings(Settings(llama_cpp_dir=str(folder), threads=2))
    assert not tools.run_options().no_repack  # never checked yet
    report = run_tools_check(LlamaTools(folder))  # stores the finding
    assert report.repack_broken
    job = PerplexityJob(model=tmp_path / "m.gguf", text=tmp_path / "t.txt")
    started = tools.run_options()
    assert started == RunOptions(threads=2, no_repack=True)
    assert job.with_options(job.options.over(started)).argv(tools)[-3:] == ["-t", "2",
                                                                            "--no-repack"]
    assert not tools.plain().run_options().no_repack  # the check itself judges the build


def test_prepare_run_records_the_options_the_job_ran_with(tmp_path, tiny_qwen2moe) -> None:
    folder = tmp_path / "bin"
    copying_quantize(folder)
    tools = LlamaTools(folder, options=RunOptions(threads=3, rpc_workers=("h:1",)))
    store = RunStore(tmp_path / "runs.sqlite")
    job = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "q.gguf", base_type="Q4_K_M")
    prepared = prepare_run(job, tools, store)
    try:
        assert prepared.job.options == RunOptions(threads=3)  # quantize takes no --rpc
        assert prepared.argv[-1] == "3"
        record = store.get(prepared.run_id)
        assert record.spec["threads"] == 3 and record.rpc_workers == ()
    finally:
        prepared.lock.release()
        store.close()


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


@pytest.mark.parametrize("flag", ["--rpc", "--no-repack", "--repack"])
def test_run_option_flags_are_written_in_one_place(flag: str) -> None:
    """A second module spelling out one of these flags would be a second home for it (the
    command line's own option definitions are not tool flags)."""
    homes = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                   if flag in _string_constants(path)
                   and path.parent.name != "commands")
    assert homes == ["core/jobs/run_options.py"], homes


@pytest.mark.gui
def test_a_kl_step_from_the_window_carries_the_stored_no_repack_and_runs_once(
        qtbot: QtBot, tmp_path: Path, tiny_qwen2moe: Path) -> None:
    """The window's queue is set up before its tools check ends; the KL step started after
    the check stored "repacking crashes here" must pass --no-repack from its first run (it
    crashed with SIGILL and was run again: two run rows, one failed)."""
    from gui_prompts import close_window

    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels
    from apex_gui.views.window.tools_banner import install_tools_check

    folder = make_stand_in_tools(tmp_path / "bin")  # a quantize that takes a plan's flags
    crashing_perplexity(folder, signal="SIGILL")
    settings = Settings(llama_cpp_dir=str(folder), threads=2)
    save_settings(settings)
    store = RunStore(tmp_path / "runs.sqlite")
    window = MainWindow(settings, probe_hardware=False)
    try:
        panels = install_panels(window, store=store, probe_hardware=False)
        banner = install_tools_check(window, panels.queue.tools)  # as the app does
        qtbot.waitUntil(lambda: banner.report is not None, timeout=60_000)
        assert banner.report.repack_broken, banner.report.summary()
        checked = len(calls(folder))
        with qtbot.waitSignal(window.modelLoadFinished, timeout=20_000):
            window.open_model_file(tiny_qwen2moe)
        panels.run.set_checked_profiles(["compact"])
        panels.run.kl_box.setChecked(True)
        panels.run.output_dir.edit.setText(str(tmp_path / "out"))
        with qtbot.waitSignal(panels.queue.allFinished, timeout=120_000):
            ids = panels.run.start()
        assert ids is not None and "compact:kld" in ids
        kld = [r for r in store.runs() if r.kind == "kl-divergence"]
        assert len(kld) == 1, [(r.status, r.message) for r in kld]
        assert kld[0].status == "succeeded", kld[0].message
        assert "--no-repack" in kld[0].argv and "crash_retry" not in kld[0].results
        # Every perplexity run the window started kept weights as stored from its first run.
        started = calls(folder)[checked:]
        assert started and all("--no-repack" in line for line in started), started
    finally:
        close_window(window)
        store.close()


def test_kl_job_description_round_trips_its_options(tmp_path) -> None:
    from apex_gui.core.jobs.pipeline import job_from_dict

    job = KLDivergenceJob(model=tmp_path / "q.gguf", reference_logits=tmp_path / "r.kld",
                          options=RunOptions(threads=2, no_repack=True,
                                             skip_cpu_variants=("zen4",)))
    spec = job.to_dict()
    assert spec["no_repack"] is True and spec["threads"] == 2 and "options" not in spec
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}
    assert job_from_dict(as_json) == job


def _job_classes() -> list[type]:
    from apex_gui.core.jobs.pipeline import JOB_TYPES
    from apex_gui.core.quality.job import SensitivityJob

    return [*JOB_TYPES.values(), SensitivityJob]


def test_job_classes_share_one_skeleton() -> None:
    """What a job reads and writes, the checks of those files and the title are declared,
    not written again in each job class (they were, nine times)."""
    from dataclasses import fields

    from apex_gui.core.jobs.quantize import QuantizeJob

    allowed = {QuantizeJob: {"title"}}  # "quantize A -> B (profile)": a shape of its own
    for cls in _job_classes():
        written = {name for name in ("inputs", "output", "check", "title", "argv")
                   if name in cls.__dict__} - allowed.get(cls, set())
        if cls.kind == "sensitivity":
            written.discard("argv")  # this interpreter runs it, not a llama.cpp tool
        assert not written, f"{cls.__name__} writes its own {sorted(written)}"
        names = {f.name for f in fields(cls)}
        assert cls.reads and all(read.field in names for read in cls.reads), cls
        assert not cls.writes or cls.writes in names, cls
