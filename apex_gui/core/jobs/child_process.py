"""A tool's process as the runner and the Qt queue start and stop it.

Each tool runs in a process group of its own: a tool that is a shell wrapper around the real
binary left that binary running when only the wrapper got SIGTERM (and the pipe open, so the
run never ended). Signals go to the whole group. The group also keeps a terminal's Ctrl-C
away from the tool: the command line stops it itself and removes its partial output.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Sequence
from typing import Any

import psutil

from apex_gui.core.files.outputs import child_dies_with_parent


def own_group_options() -> dict[str, Any]:
    """``subprocess.Popen`` keywords: a new process group (POSIX), and SIGKILL for the tool
    when this process dies (Linux)."""
    if os.name != "posix":
        return {}
    return {"start_new_session": True, "preexec_fn": child_dies_with_parent()}


def own_group_command(argv: Sequence[str]) -> tuple[str, list[str], bool]:
    """(program, arguments, in its own group) that start ``argv`` for QProcess, which can
    set neither the parent-death signal nor the process group from Python.

    util-linux's ``setpriv`` sets the death signal, then ``setsid`` makes the process a
    group leader; both execute the next program in the same process, so the process Qt
    sees is the tool itself. Elsewhere: as given, in this process's group.
    """
    if not sys.platform.startswith("linux"):
        return argv[0], list(argv[1:]), False
    setpriv, setsid = shutil.which("setpriv"), shutil.which("setsid")
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    if setsid:
        prefix += [setsid, "--"]
    if not prefix:
        return argv[0], list(argv[1:]), False
    return prefix[0], [*prefix[1:], *argv], setsid is not None


def signal_group(pid: int, number: int) -> bool:
    """Send ``number`` to the process group led by ``pid``; False when none is left."""
    try:
        os.killpg(pid, number)
    except (ProcessLookupError, PermissionError, OSError):
        return False
    return True


def group_alive(pid: int) -> bool:
    return signal_group(pid, 0)


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by the process ``pid`` and everything it started (None once it
    is gone)."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system
        for child in process.children(recursive=True):
            try:
                child_times = child.cpu_times()
            except psutil.Error:
                continue
            total += child_times.user + child_times.system
        return total
    except psutil.Error:
        return None


SIGKILL = int(getattr(signal, "SIGKILL", 9))
SIGTERM = int(signal.SIGTERM)
