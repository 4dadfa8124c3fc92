"""A window (any process holding the Qt job queue) that is SIGKILLed takes its tool along."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from fakes import fifo, make_stand_in_tools

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG is Linux's")

QUEUE_PROCESS = textwrap.dedent('''
    import sys
    from pathlib import Path
    from PySide6.QtCore import QCoreApplication
    from apex_gui.core.jobs.quantize import QuantizeJob
    from apex_gui.core.jobs.tools import LlamaTools
    from apex_gui.qt.job_queue import JobQueue

    app = QCoreApplication([])
    tools, model, output = (Path(a) for a in sys.argv[1:4])
    queue = JobQueue(LlamaTools(tools))
    queue.add(QuantizeJob(source=model, output_path=output, base_type="Q4_K_M"))
    app.exec()
''')


def test_sigkill_of_the_window_process_kills_its_tool(tiny_qwen2moe: Path, tmp_path: Path):
    tools = make_stand_in_tools(tmp_path / "bin")
    started, go = fifo(tmp_path / "started"), fifo(tmp_path / "go")
    env = {**os.environ, "APEX_STANDIN_STARTED": str(started), "APEX_STANDIN_GO": str(go),
           "QT_QPA_PLATFORM": "offscreen"}
    window = subprocess.Popen([sys.executable, "-c", QUEUE_PROCESS, str(tools),
                               str(tiny_qwen2moe), str(tmp_path / "q.gguf")], env=env)
    tool = psutil.Process(int(started.read_text()))  # blocks until the tool is mid-write
    try:
        assert tool.name() == "llama-quantize" or "llama-quantize" in " ".join(tool.cmdline())
        window.send_signal(signal.SIGKILL)  # no close handler, no queue shutdown
        window.wait(timeout=30)
        tool.wait(timeout=10)  # raises TimeoutExpired when the tool outlived its window
    finally:
        if tool.is_running() and tool.status() != psutil.STATUS_ZOMBIE:
            tool.kill()
    assert not tool.is_running() or tool.status() == psutil.STATUS_ZOMBIE
