"""The test suite on a busy machine: the README's test command (``make test``) N times in a
row with busy-loop processes beside it, each run's duration and outcome.

A suite that passes on a quiet machine can hang or flake on a loaded one (issue 20: a GUI /
worker deadlock, a tool's log losing lines at exit). This runs it the way that machine was:
two processes spinning on the CPU for the whole session (on a 2-core machine, the suite gets
about a third of it).

Usage::

    .venv/bin/python benchmarks/busy_suite.py                 # make test, 3 times, 2 busy loops
    .venv/bin/python benchmarks/busy_suite.py --runs 1 --pytest-args "tests/test_settings_file.py -q"
    APEX_BUSY_PYTEST_ARGS="-x tests/test_jobs.py" .venv/bin/python benchmarks/busy_suite.py

``--pytest-args`` (or ``APEX_BUSY_PYTEST_ARGS``) runs ``python -m pytest ARGS`` (offscreen)
instead of ``make test``: a short selection to try the script, or to hunt one flaky test.
Each run's whole output is kept in ``--log-dir`` (default: a new ``apex-busy-suite-*``
folder in the temporary directory, printed at the end). Exit code 0 when every run passed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|errors?|skipped|deselected).*?) in "
                     r"([\d.]+)s", re.MULTILINE)
BUSY_LOOP = "while True:\n    pass\n"


@dataclass(frozen=True)
class SuiteRun:
    number: int
    seconds: float
    exit_code: int
    summary: str  # pytest's last line, e.g. "973 passed, 1 failed, 12 deselected"
    log: Path

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def suite_command(pytest_args: str | None) -> list[str]:
    """``make test``, or ``python -m pytest ARGS`` when a selection is given."""
    if pytest_args:
        return [sys.executable, "-m", "pytest", *shlex.split(pytest_args)]
    return ["make", "test"]


def start_busy_loops(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)]


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def run_suite(number: int, command: list[str], log_dir: Path) -> SuiteRun:
    log = log_dir / f"run-{number}.log"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    text = log.read_text(encoding="utf-8", errors="replace")
    found = SUMMARY.findall(text)
    summary = found[-1][0] if found else f"no pytest summary (exit code {done.returncode})"
    return SuiteRun(number, seconds, done.returncode, summary, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="how many runs in a row (3)")
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside (2)")
    parser.add_argument("--pytest-args", default=os.environ.get("APEX_BUSY_PYTEST_ARGS"),
                        help="run `python -m pytest ARGS` instead of `make test`")
    parser.add_argument("--log-dir", type=Path, help="where each run's output is kept")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.busy < 0:
        parser.error("--runs must be at least 1 and --busy at least 0")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="apex-busy-suite-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    command = suite_command(args.pytest_args)
    print(f"{shlex.join(command)}: {args.runs} run(s) with {args.busy} busy loop(s) on "
          f"{os.cpu_count()} CPU(s)", flush=True)
    runs: list[SuiteRun] = []
    busy = start_busy_loops(args.busy)
    try:
        for number in range(1, args.runs + 1):
            run = run_suite(number, command, log_dir)
            runs.append(run)
            print(f"run {number}: {'passed' if run.passed else 'FAILED'} in "
                  f"{run.seconds / 60:.1f} min ({run.seconds:.0f} s): {run.summary}",
                  flush=True)
    finally:
        stop(busy)
    passed = sum(run.passed for run in runs)
    print(f"{passed} of {len(runs)} run(s) passed; durations "
          f"{', '.join(f'{run.seconds:.0f} s' for run in runs)}; logs in {log_dir}")
    return 0 if passed == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
