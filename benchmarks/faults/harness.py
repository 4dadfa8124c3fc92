"""What every case of the fault campaign shares: a private home, the measured run of one
fresh process, the judgement, and a tally per surface.

A case runs ``apex-studio`` (or a short Python script, or the window up to its event loop) in
a fresh process with a deadline, in a folder of its own, with settings, data, cache and
``TMPDIR`` inside the campaign's folder, and is judged on:

- tracebacks: "Traceback" on stderr (every failure must be one line naming the fix);
- hangs: the deadline passed (the process group is then killed);
- leftovers: ``*.partial``, ``*.tmp``, ``*.lock`` or a hidden ``.*.part`` in the case's
  folder or the data folder, or anything in the private ``TMPDIR`` (``apex-*`` scratch
  folders), once the case (and, for kills, the next command) ended;
- sources changed: a file the case must not write has other bytes afterwards;
- wrong exit: the exit code is not the one the case should end with (2 for refusals);
- memory: the peak resident size of the case's process and the children it waited for
  (sampled), over :data:`MEMORY_LIMIT_MB` counts as unbounded.

Groups of cases register with :func:`group` under the surface they attack; the table has
one row per surface.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0
LEFTOVER_SUFFIXES = (".partial", ".tmp", ".lock")
#: A case whose processes grew past this is counted as unbounded memory.
MEMORY_LIMIT_MB = 1500
#: ... and is stopped at this size: the campaign must not take the machine's memory with it.
MEMORY_KILL_MB = 3000
#: What a case keeps of each output stream (a tool that prints without end must not fill
#: the campaign's memory instead).
KEEP_OUTPUT_CHARS = 200_000

COLUMNS = ("cases", "tracebacks", "hangs", "leftovers", "sources_changed", "wrong_exit",
           "over_memory")


@dataclass
class Tally:
    """The counts of one surface (or of all of them, :func:`total`)."""

    cases: int = 0
    tracebacks: int = 0
    hangs: int = 0
    leftovers: int = 0
    sources_changed: int = 0
    wrong_exit: int = 0
    over_memory: int = 0
    peak_mb: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def bad(self, column: str, case: str, detail: str = "") -> None:
        setattr(self, column, getattr(self, column) + 1)
        self.notes.append(f"{column}: {case} {detail}".rstrip())

    @property
    def failures(self) -> int:
        return sum(getattr(self, column) for column in COLUMNS[1:])


def total(tallies: dict[str, Tally]) -> Tally:
    whole = Tally()
    for tally in tallies.values():
        for column in COLUMNS:
            setattr(whole, column, getattr(whole, column) + getattr(tally, column))
        whole.peak_mb = max(whole.peak_mb, tally.peak_mb)
        whole.seconds += tally.seconds
        whole.notes += tally.notes
    return whole


@dataclass
class Finished:
    """One process that ran to its end (``returncode`` None: killed at the deadline or past
    :data:`MEMORY_KILL_MB`)."""

    returncode: int | None
    stdout: str
    stderr: str
    peak_mb: float
    seconds: float
    left_running: bool = False  # a process it started ran on after it ended


def _drain(stream, kept: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Read ``stream`` to its end, keeping its last KEEP_OUTPUT_CHARS characters."""
    tail = ""
    for chunk in iter(lambda: stream.read(65536), ""):
        tail = (tail + chunk)[-KEEP_OUTPUT_CHARS:]
    kept.append(tail)


def run_measured(argv: Sequence[str], *, cwd: Path, env: dict[str, str], deadline: float,
                 stdin: int | None = subprocess.DEVNULL) -> Finished:
    """Run ``argv`` in its own process group until it ends or ``deadline`` seconds pass
    (then the group is killed), sampling the resident memory of its whole process tree.

    Sampled, not ``wait4``'s ``ru_maxrss``: that one starts from the campaign's own size (the
    child is a copy of it until exec), which would hide every case under it."""
    started = time.monotonic()
    process = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=stdin,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               errors="replace", start_new_session=True)
    outputs: dict[str, list[str]] = {"out": [], "err": []}
    threads = [threading.Thread(target=_drain, args=(process.stdout, outputs["out"]), daemon=True),
               threading.Thread(target=_drain, args=(process.stderr, outputs["err"]), daemon=True)]
    peak = [0]
    ended = threading.Event()  # set by the sampler too, when it stopped the case for memory
    threads.append(threading.Thread(target=_sample_memory, args=(process.pid, peak, ended),
                                    daemon=True))
    for thread in threads:
        thread.start()
    try:
        process.wait(timeout=deadline)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process.pid)
        process.wait()
    timed_out = timed_out or peak[0] > MEMORY_KILL_MB << 20
    ended.set()
    orphans = _group_alive(process.pid)
    _kill_group(process.pid)  # what it started and left behind goes with it
    for thread in threads:
        thread.join(timeout=10)
    return Finished(None if timed_out else process.returncode,
                    "".join(outputs["out"]), "".join(outputs["err"]),
                    peak[0] / 2**20, time.monotonic() - started, orphans and not timed_out)


#: Seconds between two memory samples: growth without bound shows, a blip may not.
SAMPLE_S = 0.05


def _sample_memory(pid: int, peak: list[int], ended: threading.Event) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not ended.is_set():
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total_rss = 0
        for member in tree:
            try:
                total_rss += member.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak[0] = max(peak[0], total_rss)
        if total_rss > MEMORY_KILL_MB << 20:
            _kill_group(pid)
            return
        ended.wait(SAMPLE_S)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


#: Files above this are fingerprinted by size, times and both ends (sparse shape twins hold
#: tens of GB of holes: reading them whole would take minutes per case).
WHOLE_DIGEST_BYTES = 64 << 20


def digest(path: Path) -> str | None:
    try:
        info = path.stat()
        if info.st_size <= WHOLE_DIGEST_BYTES:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        hasher = hashlib.sha256(f"{info.st_size} {info.st_mtime_ns} {info.st_ctime_ns}".encode())
        with open(path, "rb") as handle:
            hasher.update(handle.read(1 << 20))
            handle.seek(-(1 << 20), os.SEEK_END)
            hasher.update(handle.read())
        return hasher.hexdigest()
    except OSError:
        return None


def leftovers(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            name = path.name
            if name.endswith(LEFTOVER_SUFFIXES) or (name.startswith(".") and
                                                    name.endswith(".part")):
                found.append(path)
    return found


#: group name -> (surface, function); filled by :func:`group` as the modules are imported.
GROUPS: dict[str, tuple[str, Callable[[Campaign], None]]] = {}


def group(surface: str) -> Callable[[Callable[[Campaign], None]], Callable[[Campaign], None]]:
    """Register a group of cases under ``surface`` (a row of the table)."""
    def register(function: Callable[[Campaign], None]) -> Callable[[Campaign], None]:
        GROUPS[function.__name__] = (surface, function)
        return function
    return register


class Campaign:
    """The private home, the pristine model and the tallies; groups call :meth:`run`."""

    def __init__(self, work: Path, full: bool) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from fakes import make_stand_in_tools

        self.work, self.full = work, full
        self.tallies: dict[str, Tally] = {}
        self.surface = "other"
        self.commands_seen: set[str] = set()
        self.home = work / "home"
        self.tmp = work / "tmp"
        self.tmp.mkdir(parents=True)
        self.env = {**os.environ, "TMPDIR": str(self.tmp), "QT_QPA_PLATFORM": "offscreen",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        for name in ("CONFIG", "DATA", "CACHE"):
            folder = self.home / name.lower()
            folder.mkdir(parents=True, exist_ok=True)
            self.env[f"APEX_STUDIO_{name}_DIR"] = str(folder)
        from apex_gui.core.jobs.tools import LlamaTools

        self.real_tools = LlamaTools().locate("quantize").found
        # The stand-in's timing can be controlled (kills, two runs at once); it also stands
        # in for every tool run when llama.cpp is not installed.
        self.stand_in = make_stand_in_tools(work / "stand-in-bin")
        self.tools = None if self.real_tools else self.stand_in
        models = work / "models"
        models.mkdir()
        from apex_gui.core.fixtures.synthetic import TINY_QWEN3MOE, write_synthetic_model

        self.pristine = write_synthetic_model(models / "tiny-f16.gguf", TINY_QWEN3MOE)
        self.case_number = 0

    @property
    def tally(self) -> Tally:
        return self.tallies.setdefault(self.surface, Tally())

    # --- folders ------------------------------------------------------------------------------

    def folder(self) -> Path:
        self.case_number += 1
        folder = self.work / f"case-{self.case_number:04d}"
        folder.mkdir()
        return folder

    def model_in(self, folder: Path, name: str = "m.gguf") -> Path:
        target = folder / name
        shutil.copyfile(self.pristine, target)
        return target

    @contextmanager
    def settings_file(self, text: str | None) -> Iterator[Path]:
        """``settings.json`` holding ``text`` for the cases inside (removed after)."""
        path = self.home / "config" / "settings.json"
        if text is not None:
            path.write_text(text, encoding="utf-8")
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def tool_args(self, command: str) -> list[str]:
        if self.tools is not None and command in ("quantize", "pipeline", "imatrix", "eval"):
            return ["--llama-cpp-dir", str(self.tools)]
        return []

    # --- one case -----------------------------------------------------------------------------

    def run(self, name: str, args: Sequence[str], folder: Path, *, keep: Sequence[Path] = (),
            expect: int | None = 2, env: dict[str, str] | None = None,
            deadline: float = DEADLINE_S, settled: bool = True) -> Finished | None:
        """Run ``apex-studio ARGS`` in ``folder`` and judge it; ``keep``: files it must not
        change; ``settled``: no other run works in the folder, so temporary files there are
        leftovers. Returns the finished process (None for a hang)."""
        if args and not args[0].startswith("-"):
            self.commands_seen.add(args[0])
        argv = [sys.executable, "-m", "apex_gui.cli", *args, *self.tool_args(args[0])]
        return self.run_argv(name, argv, folder, keep=keep, expect=expect, env=env,
                             deadline=deadline, settled=settled)

    def run_python(self, name: str, code: str, folder: Path, **options) -> Finished | None:  # type: ignore[no-untyped-def]
        """Run a short Python program against the package (the Hub calls, a Qt-free path)."""
        return self.run_argv(name, [sys.executable, "-c", code], folder, **options)

    def run_window(self, name: str, folder: Path, model: Path | None = None, *,
                   expect: int | None = 0, **options) -> Finished | None:  # type: ignore[no-untyped-def]
        """Start the window as ``apex-studio [MODEL]`` does, let it open the model, close it
        as Ctrl+Q would; exit 0 once it has quit (see ``window_start.py``)."""
        self.commands_seen.add("(window)")
        argv = [sys.executable, str(Path(__file__).with_name("window_start.py"))]
        return self.run_argv(name, argv + ([str(model)] if model else []), folder,
                             expect=expect, **options)

    def run_argv(self, name: str, argv: Sequence[str], folder: Path, *,
                 keep: Sequence[Path] = (), expect: int | None = 2,
                 env: dict[str, str] | None = None, deadline: float = DEADLINE_S,
                 settled: bool = True) -> Finished | None:
        self.tally.cases += 1
        before = {path: digest(path) for path in keep}
        done = run_measured(argv, cwd=folder, env={**self.env, **(env or {})},
                            deadline=deadline)
        self.measure(name, done)
        if done.returncode is None and done.peak_mb > MEMORY_KILL_MB:
            self.clear_tmp()  # stopped for its memory (counted above), not a hang
            return None
        if done.returncode is None:
            self.tally.bad("hangs", name, f"(past {deadline:g} s)")
            self.clear_tmp()
            return None
        if done.left_running:
            self.tally.bad("hangs", name, "(a process it started ran on after it ended)")
        self.judge(name, done.stderr, done.returncode, expect, before, folder, settled)
        return done

    def measure(self, name: str, done: Finished) -> None:
        self.tally.peak_mb = max(self.tally.peak_mb, done.peak_mb)
        if done.peak_mb > MEMORY_LIMIT_MB:
            self.tally.bad("over_memory", name, f"{done.peak_mb:.0f} MB")

    def judge(self, name: str, stderr: str, code: int, expect: int | None,
              before: dict[Path, str | None], folder: Path, settled: bool = True) -> None:
        if "Traceback" in stderr:
            self.tally.bad("tracebacks", name, stderr.strip().splitlines()[-1][:160])
        if expect is not None and code != expect:
            self.tally.bad("wrong_exit", name, f"exit {code}, expected {expect}: "
                                               f"{stderr.strip()[-200:]}")
        for path, was in before.items():
            if digest(path) != was:
                self.tally.bad("sources_changed", name, str(path))
        if settled:
            self.check_leftovers(name, folder)

    def check_leftovers(self, name: str, *folders: Path) -> None:
        left = leftovers(*folders, self.home / "data") + self.tmp_entries()
        if left:
            self.tally.bad("leftovers", name, ", ".join(p.name for p in left[:3]))
            for path in left:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def tmp_entries(self) -> list[Path]:
        # Qt's runtime folder (XDG_RUNTIME_DIR unset) is Qt's, kept for the next window.
        return [p for p in self.tmp.iterdir() if not p.name.startswith("runtime-")]

    def clear_tmp(self) -> None:
        for path in self.tmp_entries():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # --- all of it ----------------------------------------------------------------------------

    def run_all(self, groups: Sequence[str] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Tally]:
        for name in groups or list(GROUPS):
            surface, function = GROUPS[name]
            self.surface = surface
            started = time.monotonic()
            cases = self.tally.cases
            function(self)
            self.tally.seconds += time.monotonic() - started
            if progress is not None:
                progress(f"{surface} / {name}: {self.tally.cases - cases} cases, "
                         f"{time.monotonic() - started:.0f} s")
        return self.tallies


def table(tallies: dict[str, Tally], tools: str, notes: int = 60) -> str:
    """One row per surface: cases, the failure counts, peak memory, time."""
    headers = ["surface", "cases", "tracebacks", "hangs", "leftovers", "sources", "exit",
               "memory", "peak MB", "s"]
    rows = []
    for surface, tally in [*tallies.items(), ("all", total(tallies))]:
        rows.append([surface, *(str(getattr(tally, c)) for c in COLUMNS),
                     f"{tally.peak_mb:.0f}", f"{tally.seconds:.0f}"])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join
    lines = [f"fault campaign ({tools}); sources: files changed that must not be, exit: wrong "
             f"exit codes, memory: cases over {MEMORY_LIMIT_MB} MB",
             line(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for row in rows:
        lines.append(line(c.ljust(w) if i == 0 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(row, widths))))
    every = total(tallies).notes
    lines += [f"  ! {note}" for note in every[:notes]]
    if len(every) > notes:
        lines.append(f"  ! ... and {len(every) - notes} more")
    return "\n".join(lines)
