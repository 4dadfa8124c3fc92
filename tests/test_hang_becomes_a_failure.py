"""A hung test fails within minutes with every thread's stack, instead of stalling CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_options() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def test_the_default_run_has_a_per_test_timeout_that_works_on_a_stuck_main_thread() -> None:
    options = pytest_options()
    assert 0 < options["timeout"] <= 180
    # A signal-based timeout never fires while the main thread waits inside C (a Qt lock).
    assert options["timeout_method"] == "thread"


@pytest.mark.parametrize("processes", [[], ["-n", "1"]], ids=["one process", "xdist worker"])
def test_a_deadlocked_test_is_reported_with_the_stacks_of_its_threads(tmp_path: Path,
                                                                      processes: list[str]) -> None:
    # The suite's own conftest, so that its hooks are what is tested (make test runs workers).
    shutil.copy(ROOT / "tests" / "timeout_stacks.py", tmp_path)
    (tmp_path / "conftest.py").write_text("from timeout_stacks import (pytest_configure, "
                                          "pytest_handlecrashitem, pytest_timeout_set_timer)\n")
    (tmp_path / "test_stuck.py").write_text(
        "import threading\n"
        "def test_waits_for_a_lock_nobody_releases():\n"
        "    lock = threading.Lock()\n"
        "    lock.acquire()\n"
        "    helper = threading.Thread(target=lock.acquire, name='helper-waiting', daemon=True)\n"
        "    helper.start()\n"
        "    lock.acquire()\n")
    options = pytest_options()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *processes, "-o", "timeout=3",
         "-o", f"timeout_method={options['timeout_method']}", str(tmp_path / "test_stuck.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "Timeout" in output
    assert "helper-waiting" in output and "test_waits_for_a_lock_nobody_releases" in output
