"""A hung test's thread stacks survive the parallel run (pytest-xdist).

pytest-timeout's "thread" method writes every thread's stack to the terminal and ends the
process. In an xdist worker that terminal goes nowhere: the run only says "worker 'gw0'
crashed while running TEST". Here each worker's timer first writes the stacks to a file that
the controller attaches to that crash report, so a hang in `make test` still fails with the
stacks of its threads (issue 20).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import pytest

STACKS_DIR_ENV = "APEX_TEST_STACKS_DIR"


def stacks_file(nodeid: str) -> Path | None:
    folder = os.environ.get(STACKS_DIR_ENV)
    if not folder:
        return None
    return Path(folder) / (hashlib.sha1(nodeid.encode()).hexdigest() + ".txt")


def thread_stacks() -> str:
    """Every thread's name and stack but the calling timer's, as pytest-timeout prints them."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    me = threading.get_ident()
    parts = []
    for ident, frame in sys._current_frames().items():
        if ident != me:
            parts.append(f"~~~ Stack of {names.get(ident, '<unknown>')} ({ident}) ~~~\n"
                         + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


def pytest_configure(config: pytest.Config) -> None:
    # The controller makes the folder; workers start after this and inherit the variable.
    if os.environ.get("PYTEST_XDIST_WORKER") is None and STACKS_DIR_ENV not in os.environ:
        folder = tempfile.mkdtemp(prefix="apex-test-stacks-")
        os.environ[STACKS_DIR_ENV] = folder
        config.add_cleanup(lambda: (shutil.rmtree(folder, ignore_errors=True),
                                    os.environ.pop(STACKS_DIR_ENV, None)))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """In a worker, the thread timer writes the stacks to the file before pytest-timeout's
    own handler prints them and ends the process (elsewhere pytest-timeout does it all)."""
    path = stacks_file(item.nodeid)
    if os.environ.get("PYTEST_XDIST_WORKER") is None or path is None \
            or settings.method != "thread":
        return None
    import pytest_timeout

    def on_timeout() -> None:
        try:
            path.write_text(f"Timeout ({settings.timeout:g} s) in {item.nodeid}\n"
                            + thread_stacks(), encoding="utf-8")
        finally:
            pytest_timeout.timeout_timer(item, settings)  # prints, then os._exit(1)

    timer = threading.Timer(settings.timeout, on_timeout)
    timer.name = f"timeout {item.nodeid}"

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # pytest-timeout's cancel hook calls this
    timer.start()
    return True


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched) -> None:
    path = stacks_file(crashitem)
    if path is not None and path.exists():
        report.longrepr = f"{report.longrepr}\n{path.read_text(encoding='utf-8')}"
