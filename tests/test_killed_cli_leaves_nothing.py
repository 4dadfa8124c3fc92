"""A SIGKILLed CLI takes its tool with it and leaves nothing the next command does not clean;
two runs writing one output never mix their files (two real CLI processes, a real child)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from fakes import cli, fifo, make_stand_in_tools, types_file

from apex_gui.core.jobs.run_store import RunStore

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(name + "."))


def _quantize(model: Path, output: Path, tools: Path, folder: Path, **env: str
              ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli("quantize", str(model), "--tensor-type-file", str(types_file(folder)),
            "-o", str(output), "-t", "1", "--llama-cpp-dir", str(tools)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env})


def test_sigkill_of_the_cli_kills_its_tool_and_the_next_command_cleans_up(
        tiny_qwen2moe: Path, tmp_path: Path) -> None:
    tools = make_stand_in_tools(tmp_path / "bin")
    started, go = fifo(tmp_path / "started"), fifo(tmp_path / "go")
    output = tmp_path / "q.gguf"
    run = _quantize(tiny_qwen2moe, output, tools, tmp_path,
                    APEX_STANDIN_STARTED=str(started), APEX_STANDIN_GO=str(go))
    child_pid = int(started.read_text())  # blocks until the tool has written half its file
    child = psutil.Process(child_pid)
    try:
        assert _leftovers(tmp_path, "q.gguf"), "the tool should be writing a partial file"
        run.send_signal(signal.SIGKILL)  # the CLI gets no chance to clean up
        run.communicate(timeout=30)
        child.wait(timeout=10)  # PR_SET_PDEATHSIG: the tool dies with the CLI
    finally:
        if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            child.kill()
    record = RunStore().runs(kind="quantize")[0]
    assert record.status == "running"  # nobody recorded its end: the next command will

    # The next command (another quantize, to another output) marks the row interrupted and
    # removes the dead run's partial file and lock.
    other = _quantize(tiny_qwen2moe, tmp_path / "other.gguf", tools, tmp_path)
    _, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert _leftovers(tmp_path, "q.gguf") == []
    assert not output.exists()
    interrupted = RunStore().get(record.id)
    assert interrupted is not None and interrupted.status == "interrupted"
    assert "stopped before this run ended" in interrupted.message


def test_two_runs_writing_one_output_never_mix_their_files(tiny_qwen2moe: Path,
                                                           tmp_path: Path) -> None:
    tools = make_stand_in_tools(tmp_path / "bin")
    started, go = fifo(tmp_path / "started"), fifo(tmp_path / "go")
    output = tmp_path / "same.gguf"
    first = _quantize(tiny_qwen2moe, output, tools, tmp_path,
                      APEX_STANDIN_STARTED=str(started), APEX_STANDIN_GO=str(go))
    child = psutil.Process(int(started.read_text()))
    second = None
    try:
        # While the first run's tool is half-way, a second run asks for the same output.
        second = _quantize(tiny_qwen2moe, output, tools, tmp_path)
        _, second_err = second.communicate(timeout=60)
        assert second.returncode == 1, second_err
        assert f"another run (process {first.pid}) is writing {output}" in second_err
        assert "check the disk" not in second_err
    finally:
        with open(go, "w"):
            pass  # let the first run's tool finish
        _, first_err = first.communicate(timeout=60)
        if second is not None and second.poll() is None:
            second.kill()
            second.wait()
        child.wait(timeout=10)
    assert first.returncode == 0, first_err
    assert output.read_bytes() == tiny_qwen2moe.read_bytes()  # one run's whole file
    assert _leftovers(tmp_path, "same.gguf") == []  # no partial file, no lock
