"""Tools that hang, print without end, abort on a failed check, hide behind a shell wrapper,
or wait on an RPC worker that never answers: every wait is bounded, every stop reaches the
tool, memory stays bounded and the message names the cause (issue 20's campaign findings).

Stand-in tools (tests/fakes.py) play the hostile tool; the stalled worker is a real socket
that accepts connections and never answers, in front of the real llama-imatrix.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.monitor import LOG_HEAD_CHARS, LOG_TAIL_CHARS, RunLimits
from apex_gui.core.jobs.quantize import ImatrixJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobStatus, run_job
from apex_gui.core.jobs.specs import partial_path
from apex_gui.core.jobs.tools import LlamaTools
from fakes import (aborting_tool, calls, cli, cli_from_a_terminal, copying_quantize,
                   endless_tool, hung_tool, pid_file, shell_wrapped)

ALL_X86_VARIANTS = ("alderlake", "cannonlake", "cascadelake", "cooperlake", "haswell", "icelake",
                    "ivybridge", "piledriver", "sandybridge", "sapphirerapids", "skylakex",
                    "sse42", "x64", "zen4")


def wait_for_pid(path: Path, timeout: float = 60.0) -> int:
    """The pid a stand-in wrote once it runs (a condition polled, not a sleep for a result)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared: the stand-in tool did not start")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def text(tmp_path: Path, text_words) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(text_words(500))
    return path


# --- #12: a deterministic abort is not retried on every CPU variant ---------------------------


def test_a_failed_ggml_assert_runs_once_and_the_message_shows_it(tmp_path, tiny_qwen2moe,
                                                                  text):
    """A 1,000-layer model made llama.cpp abort on GGML_ASSERT(n_layer <= 512); it was run on
    all 14 CPU variants (15 failed rows, 40 s) and blamed on the build."""
    folder = tmp_path / "bin"
    aborting_tool(folder, variants=ALL_X86_VARIANTS)
    store = RunStore(tmp_path / "runs.sqlite")
    outcome = run_job(PerplexityJob(model=tiny_qwen2moe, text=text, context=128),
                      LlamaTools(folder), store)
    assert outcome.status is JobStatus.FAILED
    assert len(calls(folder)) == 1 and len(store.runs()) == 1
    assert outcome.signal_number == signal.SIGABRT
    message = outcome.message
    assert "GGML_ASSERT(hparams.n_layer_all > 0 && hparams.n_layer_all <= LLAMA_MAX_LAYERS)" \
        in message and "llama-model.cpp:1330" in message
    assert "every CPU" in message and "rebuild" not in message and "ran it again" not in message
    store.close()


# --- #4: a hung tool does not hang the tools check, nor the window closing --------------------


def test_a_hung_quantize_or_perplexity_ends_the_tools_check_with_the_cause(tmp_path):
    from apex_gui.core.jobs.tools_check import run_tools_check

    folder = tmp_path / "quantize-hangs"
    hung_tool(folder, "llama-quantize")
    report = run_tools_check(LlamaTools(folder), time_limit_s=3)
    quantize = next(c for c in report.checks if c.tool == "llama-quantize")
    assert not quantize.working and "did not finish within 3 s" in quantize.detail
    assert gone(int(pid_file(folder, "llama-quantize").read_text()))

    folder = tmp_path / "perplexity-hangs"
    copying_quantize(folder)
    hung_tool(folder, "llama-perplexity")
    report = run_tools_check(LlamaTools(folder), time_limit_s=3)
    perplexity = next(c for c in report.checks if c.tool == "llama-perplexity")
    assert not perplexity.working and "did not finish within 3 s" in perplexity.detail
    assert gone(int(pid_file(folder, "llama-perplexity").read_text()))


def test_tools_check_on_the_command_line_takes_a_time_limit(tmp_path, capsys):
    from apex_gui.cli import main

    folder = tmp_path / "bin"
    hung_tool(folder, "llama-quantize")
    code = main(["tools", "--check", "--llama-cpp-dir", str(folder), "--time-limit", "2"])
    out = capsys.readouterr().out
    assert code == 1
    line = next(ln for ln in out.splitlines() if ln.startswith("llama-quantize"))
    assert "BROKEN" in line and "did not finish within 2 s" in line
    assert gone(int(pid_file(folder, "llama-quantize").read_text()))
    assert main(["tools", "--check", "--time-limit", "nan"]) == 2
    assert "--time-limit nan is not a number of seconds" in capsys.readouterr().err


@pytest.mark.gui
def test_closing_the_window_stops_a_hung_tools_check(qtbot, tmp_path):
    """Ctrl+Q during a check on a hung tool: the window stayed alive (84 s and counting)."""
    from apex_gui.core.settings import load_settings
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.tools_banner import install_tools_check

    folder = tmp_path / "bin"
    hung_tool(folder, "llama-quantize")
    window = MainWindow(load_settings(), probe_hardware=False)
    window.show()
    install_tools_check(window, LlamaTools(folder))
    pid = wait_for_pid(pid_file(folder, "llama-quantize"))
    assert window.close()
    assert not window.workers.busy  # the check returned: nothing is left to wait for
    qtbot.waitUntil(lambda: gone(pid), timeout=20_000)
    window.deleteLater()


# --- #5: endless output, and signals through a shell wrapper ----------------------------------


@pytest.mark.parametrize("newline", [True, False], ids=["lines", "one-endless-line"])
def test_endless_output_keeps_a_bounded_log(tmp_path, tiny_qwen2moe, text, newline):
    """A tool printing without end grew the CLI to 11.4 GB in 45 s."""
    folder = tmp_path / "bin"
    endless_tool(folder, newline=newline)
    cancel = threading.Event()
    seen = [0]
    enough = 3 * (LOG_HEAD_CHARS + LOG_TAIL_CHARS)

    def on_output(piece: str) -> None:
        seen[0] += len(piece)
        if seen[0] > enough:
            cancel.set()

    outcome = run_job(PerplexityJob(model=tiny_qwen2moe, text=text, context=128),
                      LlamaTools(folder), on_output=on_output, cancel=cancel)
    assert outcome.status is JobStatus.CANCELLED
    assert seen[0] > enough
    assert len(outcome.log) < LOG_HEAD_CHARS + LOG_TAIL_CHARS + 200
    assert "characters of output left out here" in outcome.log
    assert gone(int(pid_file(folder, "llama-perplexity").read_text()))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_cli_stops_a_tool_behind_a_shell_wrapper(tmp_path, tiny_qwen2moe,
                                                                 text, stop):
    """The wrapper got the signal, the tool it started ran on and held the output open: the
    command never ended."""
    folder = tmp_path / "bin"
    shell_wrapped(endless_tool(folder))
    command = subprocess.Popen(
        cli_from_a_terminal("eval", str(tiny_qwen2moe), "--ppl", str(text), "--ctx", "128",
                            "--llama-cpp-dir", str(folder)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tool = 0
    try:
        tool = wait_for_pid(pid_file(folder, "llama-perplexity"))
        command.send_signal(stop)
        _, err = command.communicate(timeout=60)
        assert command.returncode == 130, err.decode()
        assert b"stopped by a signal" in err or b"interrupted" in err, err.decode()
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
        if tool and not gone(tool):
            os.kill(tool, signal.SIGKILL)
            pytest.fail("the tool behind the wrapper was left running")


# --- #3: a stalled RPC worker ------------------------------------------------------------------


@pytest.fixture
def silent_worker() -> Iterator[str]:
    """An RPC endpoint that accepts connections and never answers (an rpc-server stopped
    with kill -STOP looks like this from outside)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_a_stalled_rpc_worker_stops_the_run_and_is_named(tmp_path, tiny_qwen2moe, text,
                                                        silent_worker, llama_tools):
    """imatrix --rpc against a stopped rpc-server hung for good, with no output at all."""
    output = tmp_path / "imatrix.gguf"
    job = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=output, context=128,
                     options=RunOptions(threads=1, rpc_workers=(silent_worker,)))
    store = RunStore(tmp_path / "runs.sqlite")
    outcome = run_job(job, llama_tools, store, limits=RunLimits(rpc_stall_s=2))
    assert outcome.status is JobStatus.FAILED
    assert f"the RPC worker {silent_worker}" in outcome.message
    assert "does not answer" in outcome.message and "restart that worker" in outcome.message
    assert "ran it again" not in outcome.message
    assert not output.exists() and not partial_path(output).exists()
    assert store.get(outcome.run_id).status == "failed"
    store.close()


@pytest.mark.gui
def test_the_window_queue_stops_a_run_stalled_on_an_rpc_worker(qtbot, tmp_path, tiny_qwen2moe,
                                                               text, silent_worker,
                                                               llama_tools):
    from apex_gui.qt.job_queue import JobQueue

    queue = JobQueue(llama_tools, limits=RunLimits(rpc_stall_s=2))
    job = PerplexityJob(model=tiny_qwen2moe, text=text, context=128,
                        options=RunOptions(threads=1, rpc_workers=(silent_worker,)))
    with qtbot.waitSignal(queue.jobFinished, timeout=120_000) as finished:
        queue.add(job)
    outcome = finished.args[1]
    assert outcome.status is JobStatus.FAILED, outcome.message
    assert silent_worker in outcome.message and "does not answer" in outcome.message
    queue.shutdown()


# --- the pieces, on their own ------------------------------------------------------------------


def test_the_stall_watch_counts_output_and_cpu_as_life() -> None:
    from apex_gui.core.jobs.monitor import StallWatch

    now = [100.0]
    watch = StallWatch(30, clock=lambda: now[0])
    watch.cpu(1.0)
    now[0] += 20
    watch.cpu(1.01)  # a thread waking up: not work
    assert not watch.stalled()
    now[0] += 10
    assert watch.stalled() and watch.idle_seconds() == 30
    watch.activity()  # a line of output
    assert not watch.stalled()
    now[0] += 29
    watch.cpu(2.0)  # computing
    now[0] += 29
    assert not watch.stalled()


def test_a_log_keeps_its_head_and_tail_and_a_line_is_cut() -> None:
    from apex_gui.core.jobs.monitor import BoundedText
    from apex_gui.core.jobs.parsers import LineSplitter

    log = BoundedText(head=10, tail=20)
    for index in range(1000):
        log.add(f"{index:09d}\n")
    text = log.text()
    assert text.startswith("000000000\n") and text.endswith("000000998\n000000999\n")
    assert "9970 characters of output left out here" in text
    splitter = LineSplitter(max_line=100)
    pieces = [line for _ in range(50) for line in splitter.feed("x" * 64)]
    assert pieces and all(len(piece) == 100 for piece in pieces)
    assert len(splitter.pending) <= 100


def test_the_abort_line_is_read_from_recorded_output() -> None:
    from apex_gui.core.jobs.crashes import parse_abort_line

    logs = Path(__file__).parent / "logs"
    assert parse_abort_line((logs / "ggml_assert_layers.log").read_text()) == (
        "llama-model.cpp:1330: GGML_ASSERT(hparams.n_layer_all > 0 && "
        "hparams.n_layer_all <= LLAMA_MAX_LAYERS) failed")
    thrown = ("terminate called after throwing an instance of 'std::runtime_error'\n"
              "  what():  unknown model architecture: 'foo'\nAborted\n")
    assert parse_abort_line(thrown) == ("uncaught std::runtime_error: unknown model "
                                        "architecture: 'foo'")
    for name in ("perplexity.log", "kld.log", "rpc_worker_lost.log", "quantize_q4km.log"):
        assert parse_abort_line((logs / name).read_text()) is None, name


def test_long_lines_are_cut_once_for_the_log_pane() -> None:
    """The log pane shows output as it comes; a line without end is cut at the limit, with one
    note, however the pieces fall."""
    from apex_gui.core.jobs.monitor import cut_long_lines

    assert cut_long_lines("short\nlines\n", 0, limit=10) == ("short\nlines\n", 0)
    shown, open_line = cut_long_lines("abcdefghijkl", 0, limit=10)
    assert shown.startswith("abcdefghij [APEX Studio: line longer than") and open_line == 12
    # The same line goes on in later pieces: nothing more is shown, no second note.
    assert cut_long_lines("mnop", open_line, limit=10) == ("", 16)
    # Its end, and the next line, come through again.
    assert cut_long_lines("qr\nnext\n", 16, limit=10) == ("\nnext\n", 0)
    # A piece that ends exactly at the limit is whole; the next character gets the note.
    assert cut_long_lines("0123456789", 0, limit=10) == ("0123456789", 10)
    assert cut_long_lines("x", 10, limit=10)[0].startswith(" [APEX Studio")


@pytest.mark.gui
@pytest.mark.parametrize("newline", [True, False], ids=["lines", "one-endless-line"])
def test_the_run_panel_keeps_a_bounded_log_of_endless_output(qtbot, tmp_path, tiny_qwen2moe,
                                                             text, newline) -> None:
    """A tool printing without end grew the Run tab's log pane and its copy of the log
    without limit (the CLI's log was bounded, the window's was not)."""
    from apex_gui.core.gguf.model import open_model
    from apex_gui.qt.job_queue import JobQueue
    from apex_gui.views.run.run_panel import RunPanel
    from apex_gui.views.run.run_queue_rows import LOG_HEAD_CHARS as HEAD
    from apex_gui.views.run.run_queue_rows import LOG_TAIL_CHARS as TAIL
    from apex_gui.views.run.run_queue_rows import VIEW_CHARS

    folder = tmp_path / "bin"
    endless_tool(folder, newline=newline)
    queue = JobQueue(LlamaTools(folder))
    panel = RunPanel(queue, open_model(tiny_qwen2moe))
    qtbot.addWidget(panel)
    seen = [0]
    enough = 2 * (VIEW_CHARS + HEAD + TAIL)
    queue.jobOutput.connect(lambda _job, piece: seen.__setitem__(0, seen[0] + len(piece)))
    with qtbot.waitSignal(queue.jobStarted, timeout=30_000) as started:
        queue.add(PerplexityJob(model=tiny_qwen2moe, text=text, context=128))
    job_id = started.args[0]
    panel.table.selectRow(panel._rows[job_id])
    qtbot.waitUntil(lambda: seen[0] > enough, timeout=120_000)
    with qtbot.waitSignal(queue.allFinished, timeout=30_000):
        queue.cancel_all()
    shown = panel.log_view.toPlainText()
    assert len(shown) <= VIEW_CHARS + 1000
    assert ("line longer than 256 KiB cut here" in shown) != newline
    kept = panel._logs[job_id].text()
    assert len(kept) <= HEAD + TAIL + 1000
    assert gone(int(pid_file(folder, "llama-perplexity").read_text()))
    queue.shutdown(5000)
