"""Sizing the uniform baselines with a hung llama-quantize: a cancel stops it at once (the
window's Ctrl+Q waited up to 120 s per type, six types, for the dry runs)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.baselines import BaselineCancelled, BaselineError, baselines
from apex_gui.core.jobs.tools import LlamaTools
from fakes import hung_tool, pid_file


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_cancel_stops_a_hung_dry_run_and_its_process(tiny_qwen2moe: Path,
                                                       tmp_path: Path) -> None:
    folder = tmp_path / "tools"
    hung_tool(folder, "llama-quantize")
    started = threading.Event()

    def cancelled() -> bool:  # true once the stand-in has really started
        if pid_file(folder, "llama-quantize").exists():
            started.set()
        return started.is_set()

    with pytest.raises(BaselineCancelled):
        baselines(open_model(tiny_qwen2moe), tools=LlamaTools(folder), cancelled=cancelled)
    pid = int(pid_file(folder, "llama-quantize").read_text())
    assert _gone(pid)


def test_a_hung_dry_run_times_out_with_a_message(tiny_qwen2moe: Path, tmp_path: Path) -> None:
    from apex_gui.core.jobs.baselines import baseline_plan

    folder = tmp_path / "tools"
    hung_tool(folder, "llama-quantize")
    with pytest.raises(BaselineError, match="took over 1 s"):
        baseline_plan(open_model(tiny_qwen2moe), "Q4_K_M", LlamaTools(folder), timeout=1.0)
    assert _gone(int(pid_file(folder, "llama-quantize").read_text()))
