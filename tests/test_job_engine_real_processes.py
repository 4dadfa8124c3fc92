"""Acceptance checks for the job engine (issue 4) with real processes and real disks.

A full disk (a real tmpfs filled up, skipped where mounting is not permitted), a polite cancel
that has to kill a child ignoring SIGTERM (a real Python process, in the runner and in the Qt
queue), a tool killed from outside while the command line runs it, the progress bar in a real
terminal (a pty), the ``--json`` outputs, the bundled texts, and the run history across a
crash of the process that wrote it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pty
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.evaluations import ReferenceLogitsJob, reference_logits_problem
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobStatus, run_job
from apex_gui.core.jobs.specs import JobError, ToolJob, JobVerdict
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from apex_gui.core.units import format_size

REPO = Path(__file__).resolve().parents[1]
APEX_STUDIO = Path(sys.executable).with_name("apex-studio")
PAGE = 4096


def command(*argv: str) -> int:
    from apex_gui.commands import pipeline as jobs

    parser = argparse.ArgumentParser(prog="apex-studio")
    jobs.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def words(n: int, seed: int = 0) -> str:
    vocabulary = ("the quick brown fox jumps over a lazy dog while experts route tokens "
                  "through mixture layers of a small model").split()
    rng = random.Random(seed)
    return " ".join(rng.choice(vocabulary) for _ in range(n)) + "\n"


# --- a small real disk ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs: writes past it fail with ENOSPC, as on a full disk."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def leave_free(folder: Path, nbytes: int) -> None:
    """Fill ``folder``'s disk so that about ``nbytes`` (rounded to pages) stay free."""
    free = shutil.disk_usage(folder).free
    filler = free - (nbytes + PAGE - 1) // PAGE * PAGE
    assert filler >= 0, f"the disk has only {free} bytes free"
    with open(folder / "filler.bin", "wb") as handle:
        handle.write(b"\0" * filler)
    assert shutil.disk_usage(folder).free <= nbytes + PAGE


def test_free_space_is_checked_against_the_plans_exact_size(small_disk, tiny_qwen2moe,
                                                            llama_tools):
    plan = plan_from_profile(open_model(tiny_qwen2moe), get_profile("quality"))
    output = small_disk / "quality.gguf"
    job = QuantizeJob.from_plan(plan, output, options=RunOptions(threads=2))
    predicted = job.predicted_bytes
    assert predicted == plan.total_bytes()

    # One page short of the exact size: refused before anything is written.
    leave_free(small_disk, predicted - PAGE)
    with pytest.raises(JobError) as refused:
        job.check()
    assert f"needs {format_size(predicted)}" in str(refused.value)
    assert str(small_disk) in str(refused.value) and "free some space" in str(refused.value)
    refusal = run_job(job, llama_tools, RunStore())
    assert refusal.status is JobStatus.FAILED and refusal.exit_code is None
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]

    # The exact size (and not a byte of margin beyond the page) is enough: it is exact.
    (small_disk / "filler.bin").unlink()
    leave_free(small_disk, predicted)
    outcome = run_job(job, llama_tools, RunStore())
    assert outcome.succeeded, outcome.message
    assert output.stat().st_size == predicted


def test_disk_full_while_quantizing_leaves_no_partial_file(small_disk, tiny_qwen2moe,
                                                           llama_tools):
    """No plan size to check against: llama-quantize itself runs out of space mid-write."""
    leave_free(small_disk, 256 * 1024)
    output = small_disk / "q4.gguf"
    job = QuantizeJob(source=tiny_qwen2moe, output_path=output, base_type="Q4_K_M", options=RunOptions(threads=2))
    outcome = run_job(job, llama_tools, RunStore())
    assert outcome.status is JobStatus.FAILED and outcome.exit_code == 1
    assert f"the disk holding {small_disk} is full" in outcome.message
    assert "free some space or choose another output folder" in outcome.message
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]
    record = RunStore().get(outcome.run_id)  # type: ignore[arg-type]
    assert record is not None and record.status == "failed" and "is full" in record.message


def test_a_truncated_imatrix_is_never_kept(small_disk, tiny_qwen2moe, llama_tools, tmp_path):
    """llama-imatrix exits 0 when its final write fails: the file must not pass as complete."""
    text = tmp_path / "calibration.txt"
    text.write_text(words(600))
    leave_free(small_disk, 8 * 1024)
    output = small_disk / "imatrix.gguf"
    job = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=output, context=128,
                     chunks=2, options=RunOptions(threads=2))
    outcome = run_job(job, llama_tools, RunStore())
    assert outcome.exit_code == 0  # the tool did not notice
    assert outcome.status is JobStatus.FAILED
    assert "imatrix.gguf is incomplete" in outcome.message and "is full" in outcome.message
    assert outcome.results == {}
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]


def test_truncated_reference_logits_are_not_cached(small_disk, tiny_qwen2moe, llama_tools,
                                                   tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(words(800))
    leave_free(small_disk, 64 * 1024)
    output = small_disk / "reference.kld"
    job = ReferenceLogitsJob(model=tiny_qwen2moe, text=text, output_path=output, context=128,
                             chunks=4, options=RunOptions(threads=2))
    outcome = run_job(job, llama_tools, RunStore())
    assert outcome.exit_code == 0 and outcome.status is JobStatus.FAILED
    assert "reference.kld is incomplete (truncated:" in outcome.message
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]

    # With room, the same job writes a file whose size matches its header exactly.
    (small_disk / "filler.bin").unlink()
    complete = run_job(job, llama_tools, RunStore())
    assert complete.succeeded, complete.message
    assert reference_logits_problem(output) is None
    with open(output, "r+b") as handle:
        handle.truncate(output.stat().st_size - 1)
    assert "truncated" in (reference_logits_problem(output) or "")


def test_a_full_data_folder_refuses_the_run_with_the_database_named(small_disk, tiny_qwen2moe,
                                                                     llama_tools, tmp_path):
    store = RunStore(small_disk / "runs.sqlite")
    leave_free(small_disk, 0)
    output = tmp_path / "q.gguf"
    outcome = run_job(QuantizeJob(source=tiny_qwen2moe, output_path=output, base_type="Q4_K_M",
                                  options=RunOptions(threads=2)), llama_tools, store)
    store.close()
    assert outcome.status is JobStatus.FAILED and outcome.exit_code is None
    assert f"the run history {small_disk / 'runs.sqlite'} failed" in outcome.message
    assert "disk is full" in outcome.message and "free some space" in outcome.message
    assert not output.exists()


# --- polite cancel against a child that ignores SIGTERM ---------------------------------------

STUBBORN_CHILD = r"""
import signal, sys, time

def refuse(signum, frame):
    print("ignoring SIGTERM", flush=True)

signal.signal(signal.SIGTERM, refuse)
with open(sys.argv[1], "wb") as handle:
    handle.write(b"half a model")
print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.02)
"""


@dataclass(frozen=True, kw_only=True)
class StubbornJob(ToolJob):
    """A real process that writes its partial output, then ignores SIGTERM."""

    tool: ClassVar[str] = "python"
    kind: ClassVar[str] = "stubborn"

    output_path: Path

    def output(self) -> Path:
        return self.output_path

    def args(self) -> list[str]:
        return ["-c", STUBBORN_CHILD, str(self.partial_output())]

    def argv(self, tools) -> list[str]:
        return [sys.executable, *self.args()]

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        return JobVerdict(exit_code == 0, f"exit {exit_code}")


def test_runner_kills_a_child_that_ignores_terminate(tmp_path, llama_tools):
    cancel = threading.Event()
    output = tmp_path / "stubborn.gguf"
    seen: list[str] = []

    def on_output(text: str) -> None:
        seen.append(text)
        if "ready" in "".join(seen):
            cancel.set()

    outcome = run_job(StubbornJob(output_path=output), llama_tools, RunStore(),
                      on_output=on_output, cancel=cancel, terminate_timeout=0.5)
    assert outcome.status is JobStatus.CANCELLED
    assert "ignoring SIGTERM" in outcome.log  # terminate came first ...
    assert outcome.exit_code == -signal.SIGKILL  # ... and kill ended it
    assert not output.exists() and not Path(str(output) + ".partial").exists()
    assert RunStore().get(outcome.run_id).status == "cancelled"  # type: ignore[union-attr]


@pytest.mark.gui
def test_qt_queue_kills_a_child_that_ignores_terminate(qtbot, tmp_path, llama_tools):
    from apex_gui.qt.job_queue import JobQueue

    queue = JobQueue(llama_tools, RunStore(), terminate_timeout_s=0.5)
    output = tmp_path / "stubborn.gguf"
    job_id = queue.add(StubbornJob(output_path=output))
    seen: list[str] = []

    def on_output(i: int, text: str) -> None:
        seen.append(text)
        if "ready" in "".join(seen):
            queue.cancel(i)

    queue.jobOutput.connect(on_output)
    with qtbot.waitSignal(queue.jobFinished, timeout=30_000) as finished:
        pass
    outcome = finished.args[1]
    assert finished.args[0] == job_id and outcome.status is JobStatus.CANCELLED
    assert "ignoring SIGTERM" in outcome.log and outcome.exit_code == -signal.SIGKILL
    assert not output.exists() and not Path(str(output) + ".partial").exists()
    queue.shutdown()


@pytest.mark.gui
def test_qt_queue_shutdown_stops_a_child_that_ignores_terminate(qtbot, tmp_path, llama_tools,
                                                                 tiny_qwen2moe):
    import gc

    from apex_gui.qt.job_queue import JobQueue

    queue = JobQueue(llama_tools, RunStore(), terminate_timeout_s=30.0)
    output = tmp_path / "stubborn.gguf"
    job_id = queue.add(StubbornJob(output_path=output))
    with qtbot.waitSignal(queue.jobOutput, timeout=30_000,
                          check_params_cb=lambda i, text: "ready" in text):
        pass
    queue.shutdown(timeout_ms=500)  # closing the window: wait briefly, then kill
    outcome = queue.outcome(job_id)
    assert outcome is not None and outcome.status is JobStatus.CANCELLED
    assert not queue.is_busy()
    assert not output.exists() and not Path(str(output) + ".partial").exists()

    # The app goes on after a panel's queue was shut down and collected: this used to crash
    # the interpreter in the next event loop (the killed process's deferred deletion).
    del queue
    gc.collect()
    after = JobQueue(llama_tools, RunStore())
    after.add(QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "after.gguf",
                          base_type="Q4_K_M", options=RunOptions(threads=2)))
    with qtbot.waitSignal(after.allFinished, timeout=30_000) as done:
        pass
    assert done.args == [0] and (tmp_path / "after.gguf").is_file()
    after.shutdown()


# --- the command line --------------------------------------------------------------------------


def _types_file(tmp_path: Path) -> Path:
    types = tmp_path / "types.txt"
    types.write_text("^blk\\.0\\.ffn_up_exps\\.weight$=q5_k\n")
    return types


def test_cli_reports_a_tool_killed_from_outside(deep_model, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    process = subprocess.Popen(
        [str(APEX_STUDIO), "quantize", str(deep_model), "--tensor-type-file",
         str(_types_file(tmp_path)), "--type", "Q4_K_M", "-o", str(folder / "k.gguf"), "-t", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    cli = psutil.Process(process.pid)
    while killed is None and process.poll() is None:
        for child in cli.children(recursive=True):
            if child.name() == "llama-quantize":
                child.send_signal(signal.SIGKILL)
                killed = child.pid
                break
    out, err = process.communicate(timeout=60)
    assert killed is not None, "llama-quantize ended before it could be killed"
    assert process.returncode == 1, err
    assert "stopped from outside by SIGKILL" in err and "no output was kept" in err
    assert re.search(r"^quantize\s+failed", out, re.M)
    assert list(folder.iterdir()) == []


def test_cli_draws_a_progress_bar_in_a_terminal(deep_model, tmp_path):
    master, slave = pty.openpty()
    output = tmp_path / "q.gguf"
    process = subprocess.Popen(
        [str(APEX_STUDIO), "quantize", str(deep_model), "--tensor-type-file",
         str(_types_file(tmp_path)), "--type", "Q4_K_M", "-o", str(output), "-t", "2"],
        stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal has gone
            break
        if not data:
            break
        received += data
    os.close(master)
    table = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0
    screen = received.decode("utf-8", "replace")
    bars = re.findall(r"\r  \[([#-]{24})\]\s+(\d+)% tensor (\d+)/(\d+)", screen)
    assert bars, screen[-2000:]
    assert bars[-1][0] == "#" * 24 and bars[-1][1] == "100"
    assert bars[-1][2] == bars[-1][3]  # the last tensor
    assert "ok (" in screen and "quantized to" in screen
    assert re.search(r"^quantize\s+succeeded", table, re.M) and "\r" not in table


def test_cli_without_a_terminal_prints_plain_lines(tiny_qwen2moe, tmp_path, capfd):
    code = command("quantize", str(tiny_qwen2moe), "--tensor-type-file",
                   str(_types_file(tmp_path)), "--type", "Q4_K_M", "-o",
                   str(tmp_path / "q.gguf"), "-t", "2")
    captured = capfd.readouterr()
    assert code == 0 and "\r" not in captured.err
    assert captured.err.startswith("> quantize: ") and "ok (" in captured.err


def test_cli_names_a_step_refused_before_it_started(tiny_qwen2moe, tmp_path, capfd):
    # Writing over the source is refused before anything runs: one line, exit 2 (bad input),
    # through the real entry point.
    from apex_gui.cli import main

    before = tiny_qwen2moe.read_bytes()
    code = main(["quantize", str(tiny_qwen2moe), "--tensor-type-file",
                 str(_types_file(tmp_path)), "--type", "Q4_K_M", "-o", str(tiny_qwen2moe)])
    err = capfd.readouterr().err
    assert code == 2
    assert re.search(r"-o .* is the source model .*never written", err)
    assert tiny_qwen2moe.read_bytes() == before


def test_cli_imatrix_json_with_the_bundled_calibration_set(tiny_qwen2moe, tmp_path, capsys):
    from apex_gui.core.jobs.calibration import bundled_calibration_files

    output = tmp_path / "imatrix.gguf"
    code = command("imatrix", str(tiny_qwen2moe), "-o", str(output), "--imatrix-ctx", "128",
                   "--imatrix-chunks", "2", "-t", "2", "--json")
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["step"] for r in rows] == ["imatrix"]
    row = rows[0]
    assert row["status"] == "succeeded" and row["output"] == str(output) and output.is_file()
    assert row["results"]["chunks"] == 2 and row["results"]["output_bytes"] == \
        output.stat().st_size
    used = Path(row["job"]["calibration"]).read_text(encoding="utf-8")
    for part in bundled_calibration_files():
        assert part.read_text(encoding="utf-8").strip()[:500] in used
    assert row["run_id"] == RunStore().runs(kind="imatrix")[0].id


def test_cli_eval_without_ppl_uses_the_bundled_quick_text(tiny_qwen2moe, capsys):
    code = command("eval", str(tiny_qwen2moe), "--ctx", "128", "--chunks", "2", "-t", "2",
                   "--json")
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["kind"] for r in rows] == ["perplexity"]
    text = Path(rows[0]["job"]["text"])
    assert text.read_bytes() == (REPO / "resources" / "eval" / "quick_eval.txt").read_bytes()
    assert rows[0]["results"]["ppl"] > 1.0 and rows[0]["results"]["ppl_error"] > 0.0


def _record_eval_module():
    spec = importlib.util.spec_from_file_location("record_eval", REPO / "tests" / "logs" /
                                                  "record_eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_eval_benchmarks_and_speed_as_json(tiny_qwen2moe, tmp_path, capsys):
    """HellaSwag, Winogrande and multiple choice on data files in the formats the recorded
    logs came from (the recorder's own writers), plus llama-bench, through the real tool."""
    recorder = _record_eval_module()
    rng = random.Random(0)
    recorder.write_hellaswag(tmp_path / "hellaswag.txt", 12, rng)
    recorder.write_winogrande(tmp_path / "winogrande.csv", 110, rng)
    recorder.write_multiple_choice(tmp_path / "mc.bin", 110, rng)
    code = command("eval", str(tiny_qwen2moe), "--hellaswag", str(tmp_path / "hellaswag.txt"),
                   "--winogrande", str(tmp_path / "winogrande.csv"), "--mc",
                   str(tmp_path / "mc.bin"), "--bench", "--bench-prompt", "32", "--bench-gen",
                   "8", "--bench-reps", "1", "--ctx", "128", "-t", "2", "--json")
    captured = capsys.readouterr()
    rows = {r["kind"]: r for r in json.loads(captured.out)}
    assert code == 0, captured.err
    assert set(rows) == {"hellaswag", "winogrande", "multiple-choice", "bench"}
    hellaswag = rows["hellaswag"]["results"]
    assert hellaswag["hellaswag_tasks"] == 12 and 0.0 <= hellaswag["hellaswag"] <= 100.0
    # The loader drops the CSV header row, as in the recorded log (109 of 110 rows).
    assert rows["winogrande"]["results"]["winogrande_tasks"] == 109
    assert rows["multiple-choice"]["results"]["multiple_choice_tasks"] == 110
    bench = rows["bench"]["results"]
    assert bench["pp32"] > 0.0 and bench["tg8"] > 0.0
    # llama-bench names the backends it loaded: CPU, or the GPU ones `make gpu` put beside it
    # (the run itself is on the CPU here: --device none).
    assert bench["backends"] and set(bench["backends"].split(",")) <= {"CPU", "Vulkan", "CUDA",
                                                                        "BLAS", "RPC"}


# --- the run history across a crash -----------------------------------------------------------

CRASHING_WRITER = r"""
import os, signal, sys
from apex_gui.core.jobs.run_store import RunStore
store = RunStore()
done = store.start("perplexity", "perplexity m", {"kind": "perplexity", "model": "/m.gguf"},
                   ["llama-perplexity"], None)
store.finish(done, "succeeded", 0, "PPL 5.1", "log", {"ppl": 5.1})
running = store.start("quantize", "quantize m", {"kind": "quantize"}, ["llama-quantize"],
                      "/q.gguf")
print(done, running, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_run_history_survives_a_killed_app_and_marks_its_runs_interrupted():
    written = subprocess.run([sys.executable, "-c", CRASHING_WRITER], capture_output=True,
                             text=True, cwd=REPO)
    assert written.returncode == -signal.SIGKILL, written.stderr
    done, running = map(int, written.stdout.split())
    store = RunStore()  # the same data folder, a new process's view
    assert store.get(done).status == "succeeded"  # type: ignore[union-attr]
    assert store.results_for("/m.gguf") == {"ppl": 5.1}
    assert store.get(running).status == "running"  # type: ignore[union-attr]
    assert store.mark_interrupted() == 1
    record = store.get(running)
    assert record is not None and record.status == "interrupted"
    assert "stopped before this run ended" in record.message
    assert store.get(done).status == "succeeded"  # type: ignore[union-attr]
    assert store.mark_interrupted() == 0


# --- the bundled texts ---------------------------------------------------------------------------


def test_calibration_readme_matches_the_files_and_the_50k_token_estimate():
    folder = REPO / "resources" / "calibration"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+\.txt)` \| [\d.]+% \| ([\d,]+) \|", readme, re.M)
    assert len(rows) == 4
    sizes = {name: int(size.replace(",", "")) for name, size in rows}
    assert sizes == {name: (folder / name).stat().st_size for name in sizes}
    total = sum(sizes.values())
    assert f"**{total:,}**" in readme
    # bytes/4 is the README's stated estimate (real BPE vocabularies give more tokens).
    assert total // 4 >= 50_000


def test_cli_refuses_an_i_profile_without_an_imatrix(tiny_qwen2moe, tmp_path, capsys):
    """I-Quality on a 2-layer model plans no IQ type, so llama-quantize would not object:
    without the refusal the file would be plain Quality under the I-Quality name."""
    from apex_gui.cli import main

    output = tmp_path / "i-quality.gguf"
    code = main(["quantize", str(tiny_qwen2moe), "--profile", "i-quality", "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and not output.exists()
    assert "profile i-quality uses an importance matrix" in err and "--imatrix auto" in err


def test_cli_names_skipped_steps_in_the_terminal_log(tiny_qwen2moe, tmp_path, capfd):
    short = tmp_path / "short.txt"
    short.write_text("far too short\n")
    code = command("quantize", str(tiny_qwen2moe), "--tensor-type-file",
                   str(_types_file(tmp_path)), "--type", "Q4_K_M", "--imatrix", "auto",
                   "--calibration", str(short), "--imatrix-ctx", "128", "-o",
                   str(tmp_path / "q.gguf"))
    captured = capfd.readouterr()
    assert code == 1
    assert re.search(r"^> imatrix: .*\n  FAILED \(0\.0 s\): the calibration text .* is too short",
                     captured.err, re.M)
    assert re.search(r"^> quantize: .*\n  skipped \(0\.0 s\): not run: step 'imatrix' failed",
                     captured.err, re.M)
    assert re.search(r"^quantize\s+skipped", captured.out, re.M)


def test_cli_stopped_by_sigterm_stops_its_tool_and_keeps_no_partial_file(deep_model, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    process = subprocess.Popen(
        [str(APEX_STUDIO), "quantize", str(deep_model), "--tensor-type-file",
         str(_types_file(tmp_path)), "--type", "Q4_K_M", "-o", str(folder / "t.gguf"), "-t", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tool = None
    cli = psutil.Process(process.pid)
    while tool is None and process.poll() is None:
        tool = next((c for c in cli.children(recursive=True) if c.name() == "llama-quantize"),
                    None)
    assert tool is not None, "llama-quantize ended before the command could be stopped"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped by a signal" in err and re.search(r"^quantize\s+cancelled", out, re.M)
    assert not tool.is_running() or tool.status() == psutil.STATUS_ZOMBIE
    assert list(folder.iterdir()) == [], err
    assert RunStore().runs(kind="quantize")[0].status == "cancelled"


# --- results whose last lines the tool's logger dropped -----------------------------------------

LOGS = REPO / "tests" / "logs"


def _without_last_line(text: str, pattern: str) -> str:
    lines = text.splitlines(keepends=True)
    index = max(i for i, line in enumerate(lines) if re.search(pattern, line))
    return "".join(lines[:index])


def test_hellaswag_with_its_last_row_lost_is_rerun_not_scored(tiny_qwen2moe, tmp_path):
    from apex_gui.core.jobs.evaluations import HellaSwagJob

    job = HellaSwagJob(model=tiny_qwen2moe, data=tmp_path / "hs.txt")
    full = (LOGS / "hellaswag.log").read_text(encoding="utf-8")
    verdict = job.verdict(0, full)
    assert verdict.succeeded and verdict.results["hellaswag_tasks"] == 10
    cut = _without_last_line(full, r"^10\t")
    lost = job.verdict(0, cut)
    assert not lost.succeeded and lost.output_lost


def test_kl_divergence_with_its_tail_lost_is_rerun(tiny_qwen2moe, tmp_path):
    from apex_gui.core.jobs.evaluations import KLDivergenceJob

    job = KLDivergenceJob(model=tiny_qwen2moe, reference_logits=tmp_path / "r.kld", context=128)
    full = (LOGS / "kld.log").read_text(encoding="utf-8")
    verdict = job.verdict(0, full)
    assert verdict.succeeded
    assert {"kld_mean", "kld_max", "kld_p999", "kld_median", "same_top_p"} <= set(verdict.results)
    lost = job.verdict(0, _without_last_line(full, r"^Same top p"))
    assert not lost.succeeded and lost.output_lost


def test_kl_divergence_over_too_few_tokens_says_so(tiny_qwen2moe, tmp_path, llama_tools):
    """One chunk of 128 scores 63 tokens: llama-perplexity prints no statistics below 100."""
    from apex_gui.core.jobs.evaluations import KLDivergenceJob

    text = tmp_path / "text.txt"
    text.write_text(words(800))
    reference = run_job(ReferenceLogitsJob(model=tiny_qwen2moe, text=text, context=128, chunks=1,
                                           output_path=tmp_path / "ref.kld", options=RunOptions(threads=2)),
                        llama_tools)
    assert reference.succeeded, reference.message
    outcome = run_job(KLDivergenceJob(model=tiny_qwen2moe, reference_logits=tmp_path / "ref.kld",
                                      context=128, options=RunOptions(threads=2)), llama_tools)
    assert outcome.status is JobStatus.FAILED and outcome.attempts == 1
    assert "score only 63 tokens" in outcome.message and "--chunks" in outcome.message
