"""The fault campaign's cases for the job runner's surfaces (issue 20, findings 3, 4, 5, 12):
hostile tools and RPC workers. ``benchmarks/fault_campaign.py`` runs them as its group
``hostile_tools`` (``--groups hostile_tools`` alone).

Each case runs the real job engine (the CLI in a process of its own, or ``run_job`` in this
one where a limit must be shorter than a user's) against a stand-in tool from tests/fakes.py
that hangs, prints without end, aborts on a failed GGML_ASSERT or sits behind a shell
wrapper, or against an RPC worker that never answers (a silent socket, and a real rpc-server
stopped with SIGSTOP). The CLI's peak memory during endless output goes to the notes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from fakes import (aborting_tool, calls, copying_quantize, endless_tool, hung_tool, pid_file,
                   shell_wrapped)

from apex_gui.core.jobs.monitor import RunLimits
from apex_gui.core.jobs.quantize import ImatrixJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.runner import JobStatus, run_job
from apex_gui.core.jobs.tools import LlamaTools

#: The most resident memory the CLI may reach while a tool prints without end.
HOSTILE_MEMORY_LIMIT_MB = 400
#: Seconds a hostile tool is left to print before the CLI is stopped and its memory read.
HOSTILE_RUN_S = 6.0


def _wait_for_pid(path: Path, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    return None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def hostile_tools_cases(campaign: Any, deadline_s: float) -> None:
    """Hung, endless, aborting and wrapped tools, and stalled RPC workers; ``campaign`` is
    fault_campaign's Campaign (its folders, run, judge and tally)."""
    tally = campaign.tally
    folder = campaign.folder()
    model = campaign.model_in(folder)
    text = folder / "text.txt"
    text.write_text("experts route tokens through the layers of a small model " * 80)

    # 4: a hung llama-quantize, then a hung llama-perplexity, under tools --check.
    for hung in ("llama-quantize", "llama-perplexity"):
        tools = folder / f"hung-{hung}"
        if hung == "llama-perplexity":
            copying_quantize(tools)
        hung_tool(tools, hung)
        campaign.run(f"tools --check with a hung {hung}",
                     ["tools", "--check", "--llama-cpp-dir", str(tools), "--time-limit", "3"],
                     folder, keep=[model], expect=1)
        pid = _wait_for_pid(pid_file(tools, hung), 1.0)
        if pid is not None and not _gone(pid):
            tally.bad("hangs", f"tools --check with a hung {hung}", "the tool ran on")
            os.kill(pid, signal.SIGKILL)

    # 12: a failed GGML_ASSERT on a portable build with 14 CPU variants: one run, named.
    tools = folder / "aborting"
    aborting_tool(tools, variants=("alderlake", "cannonlake", "cascadelake", "cooperlake",
                                   "haswell", "icelake", "ivybridge", "piledriver",
                                   "sandybridge", "sapphirerapids", "skylakex", "sse42",
                                   "x64", "zen4"))
    done = campaign.run("eval on a tool that aborts on GGML_ASSERT",
                        ["eval", "m.gguf", "--ppl", "text.txt", "--ctx", "128",
                         "--llama-cpp-dir", str(tools)], folder, keep=[model], expect=1)
    if len(calls(tools)) != 1:
        tally.bad("wrong_exit", "a GGML_ASSERT abort", f"run {len(calls(tools))} times")
    if done is not None and "GGML_ASSERT" not in done.stdout + done.stderr:
        tally.bad("wrong_exit", "a GGML_ASSERT abort", "the assert is not in the message")

    # 5: endless output (lines, then one endless line), directly and behind a shell
    # wrapper; stopped by SIGTERM or SIGINT; the CLI's memory read before the stop.
    for wrapped, newline, stop in ((False, True, signal.SIGTERM),
                                   (False, False, signal.SIGTERM),
                                   (True, True, signal.SIGTERM), (True, True, signal.SIGINT)):
        name = (f"{signal.Signals(stop).name} during endless output"
                f"{' without line breaks' if not newline else ''}"
                f"{' behind a shell wrapper' if wrapped else ''}")
        tools = folder / f"endless-{campaign.case_number}-{wrapped}-{newline}-{int(stop)}"
        tool = endless_tool(tools, newline=newline)
        if wrapped:
            shell_wrapped(tool)
        tally.cases += 1
        cli = subprocess.Popen([sys.executable, "-m", "apex_gui.cli", "eval", "m.gguf",
                                "--ppl", "text.txt", "--ctx", "128", "--llama-cpp-dir",
                                str(tools)], cwd=folder, env=campaign.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pid = _wait_for_pid(pid_file(tools, "llama-perplexity"), deadline_s)
        peak = 0.0
        if pid is not None:
            deadline = time.monotonic() + HOSTILE_RUN_S
            while time.monotonic() < deadline and cli.poll() is None:
                peak = max(peak, psutil.Process(cli.pid).memory_info().rss / 2**20)
                time.sleep(0.25)
        cli.send_signal(stop)
        try:
            _, err = cli.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            cli.kill()
            _, err = cli.communicate()
            tally.bad("hangs", name, "the command did not stop")
        else:
            campaign.judge(name, err, cli.returncode, 130, {}, folder)
        tally.notes.append(f"memory: {name}: the CLI peaked at {peak:.0f} MB")
        if peak > HOSTILE_MEMORY_LIMIT_MB:
            tally.bad("wrong_exit", name, f"memory grew to {peak:.0f} MB")
        if pid is not None and not _gone(pid):
            tally.bad("hangs", name, "the tool ran on")
            os.kill(pid, signal.SIGKILL)

    # 3: RPC workers that never answer: a silent socket, then a real rpc-server stopped
    # with SIGSTOP; the CLI refuses them at its probe, and a run that meets one mid-way is
    # stopped by the stall watch (run here with a 3 s watch instead of the user's minutes).
    real = LlamaTools()
    if not real.locate("imatrix").found:
        tally.notes.append("skipped: stalled RPC workers (no llama.cpp tools)")
        return
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    silent = f"127.0.0.1:{listener.getsockname()[1]}"
    workers = [("a silent RPC worker", silent, None)]
    stopped_server = None
    if real.locate("rpc-server").found:
        from apex_gui.core.fit.rpc_local import LocalRpcWorker

        stopped_server = LocalRpcWorker(real, threads=1).start()
        assert stopped_server.process is not None
        os.kill(stopped_server.process.pid, signal.SIGSTOP)
        workers.append(("an rpc-server stopped with SIGSTOP", stopped_server.worker.endpoint,
                        stopped_server))
    try:
        for what, endpoint, _server in workers:
            campaign.run(f"imatrix --rpc to {what}",
                         ["imatrix", "m.gguf", "-o", "i.gguf", "--rpc", endpoint,
                          "--imatrix-ctx", "128", "--calibration", "text.txt"],
                         folder, keep=[model], expect=2)
            tally.cases += 1
            name = f"an imatrix run meeting {what}"
            job = ImatrixJob(model=model, calibration=text, output_path=folder / "i.gguf",
                             context=128, options=RunOptions(threads=1,
                                                             rpc_workers=(endpoint,)))
            started = time.monotonic()
            outcome = run_job(job, real, limits=RunLimits(rpc_stall_s=3))
            if time.monotonic() - started > deadline_s:
                tally.bad("hangs", name)
            if outcome.status is not JobStatus.FAILED or endpoint not in outcome.message:
                tally.bad("wrong_exit", name, outcome.message[:160])
            campaign.judge(name, "", 1, 1, {}, folder)
    finally:
        listener.close()
        if stopped_server is not None and stopped_server.process is not None:
            os.kill(stopped_server.process.pid, signal.SIGCONT)
            stopped_server.stop()
