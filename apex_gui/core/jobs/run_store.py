"""Run history in SQLite (``data_dir()/runs.sqlite``): every job, its log and its results.

Results survive a restart and can be compared later (the window's comparison table, a CLI
``--json`` dump). Each thread gets its own long-lived connection (WAL, synchronous=NORMAL),
so the store is used from the GUI thread and from workers without sharing a connection and
without an fsync per write.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apex_gui.core.settings import data_dir

SCHEMA_VERSION = 1
#: Logs above this size keep their head and tail: a 700-tensor quantize log is ~150 KB,
#: a runaway tool could print far more.
MAX_LOG_CHARS = 4_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    spec TEXT NOT NULL,
    argv TEXT NOT NULL DEFAULT '[]',
    output TEXT,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    message TEXT NOT NULL DEFAULT '',
    log TEXT NOT NULL DEFAULT '',
    results TEXT NOT NULL DEFAULT '{}',
    pipeline TEXT
);
CREATE TABLE IF NOT EXISTS run_owners (
    run_id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_output ON runs(output);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
"""


@dataclass(frozen=True)
class RunRecord:
    """One recorded run."""

    id: int
    kind: str
    title: str
    spec: dict[str, Any]
    argv: list[str]
    output: str | None
    started: float
    ended: float | None
    status: str
    exit_code: int | None
    message: str
    log: str
    results: dict[str, Any]
    pipeline: str | None

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    @property
    def rpc_workers(self) -> tuple[str, ...]:
        """The llama.cpp RPC workers (``host:port``) the run was split across; () when local."""
        return tuple(self.spec.get("rpc_workers") or ())


class RunStoreError(RuntimeError):
    """The run history cannot be read or written; the message names the database and the fix."""


def default_store_path() -> Path:
    return data_dir() / "runs.sqlite"


def _clip_log(log: str) -> str:
    if len(log) <= MAX_LOG_CHARS:
        return log
    half = MAX_LOG_CHARS // 2
    return log[:half] + f"\n[... {len(log) - 2 * half} characters left out ...]\n" + log[-half:]


class RunStore:
    """The run history database."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunStoreError(f"cannot create the folder of the run history {self.path} "
                                f"({error.strerror or error}); check the data folder "
                                "(APEX_STUDIO_DATA_DIR)") from None
        with self._connect() as db:
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One long-lived connection per thread in WAL mode with synchronous=NORMAL: a commit
        # then appends to the log without an fsync, where a fresh connection per call paid a
        # checkpoint and fsyncs on close (60-400 ms a write on a slow disk, on the GUI thread).
        try:
            db = getattr(self._local, "db", None)
            if db is None:
                db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                self._local.db = db
                with self._lock:
                    self._connections.append(db)
            with db:  # commits, or rolls back on error
                yield db
        except sqlite3.Error as error:
            # A full disk is the usual cause (the data folder often shares it with the quants).
            raise RunStoreError(
                f"the run history {self.path} failed ({error}): if its disk is full, free some "
                "space; if the file is damaged, move it away and a new one is started") from None

    def close(self) -> None:
        """Close every connection this store opened (each thread's)."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    def start(self, kind: str, title: str, spec: dict[str, Any], argv: list[str],
              output: str | None, pipeline: str | None = None) -> int:
        """Record a run as started; returns its id."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, title, spec, argv, output, started, status, pipeline) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                (kind, title, json.dumps(spec), json.dumps(argv), output, time.time(), pipeline))
            run_id = int(cursor.lastrowid or 0)
            # Which process runs it: a window opened while a CLI run goes on must not call
            # that run interrupted (see mark_interrupted).
            pid, created = _this_process()
            db.execute("INSERT OR REPLACE INTO run_owners (run_id, pid, created) VALUES (?, ?, ?)",
                       (run_id, pid, created))
            return run_id

    def finish(self, run_id: int, status: str, exit_code: int | None, message: str, log: str,
               results: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET ended = ?, status = ?, exit_code = ?, message = ?, log = ?, "
                "results = ? WHERE id = ?",
                (time.time(), status, exit_code, message, _clip_log(log),
                 json.dumps(results, default=str), run_id))

    def get(self, run_id: int) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _record(row) if row else None

    def runs(self, kind: str | None = None, status: str | None = None,
             limit: int = 100) -> list[RunRecord]:
        """Most recent first."""
        query, args = "SELECT * FROM runs", []
        clauses = []
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._connect() as db:
            return [_record(row) for row in db.execute(query, args)]

    def results_for(self, model: str | os.PathLike[str]) -> dict[str, Any]:
        """Every successful result about ``model`` merged, newest winning (for a comparison)."""
        target = os.path.abspath(model)
        merged: dict[str, Any] = {}
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE status = 'succeeded' ORDER BY id ASC")
            for row in rows:
                record = _record(row)
                about = record.spec.get("model") or record.spec.get("output_path")
                if about and os.path.abspath(about) == target:
                    merged.update(record.results)
        return merged

    def mark_interrupted(self) -> int:
        """Runs left 'running' by a process that is gone (a crash, a kill); returns how many.

        A run whose owning process is still alive (another window, a CLI pipeline) is left
        as it is: it will record its own end.
        """
        with self._connect() as db:
            rows = db.execute(
                "SELECT runs.id, run_owners.pid, run_owners.created, runs.output FROM runs "
                "LEFT JOIN run_owners ON run_owners.run_id = runs.id "
                "WHERE runs.status = 'running'").fetchall()
            gone = [(run_id, pid, output) for run_id, pid, created, output in rows
                    if pid is None or not _process_alive(pid, created)]
            db.executemany(
                "UPDATE runs SET status = 'interrupted', ended = COALESCE(ended, ?), message = "
                "? WHERE id = ?",
                [(time.time(), _interrupted_message(pid), run_id) for run_id, pid, _ in gone])
        # What the dead runs were writing: their partial files and locks go too (unless a
        # live run has taken that output since; clean_abandoned checks the lock).
        from apex_gui.core.files.outputs import clean_abandoned

        for output in {output for _, _, output in gone if output}:
            clean_abandoned(output)
        return len(gone)


def _interrupted_message(pid: int | None) -> str:
    owner = f" (process {pid})" if pid is not None else ""
    return (f"interrupted: APEX Studio{owner} stopped before this run ended (killed or "
            "crashed); its partial output was removed")


def _this_process() -> tuple[int, float]:
    import psutil

    process = psutil.Process()
    return process.pid, process.create_time()


def _process_alive(pid: int, created: float) -> bool:
    """The same process (a recycled pid has another start time) and still running."""
    import psutil

    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - created) < 1.0 and \
            process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _record(row: tuple[Any, ...]) -> RunRecord:
    (run_id, kind, title, spec, argv, output, started, ended, status, exit_code, message,
     log, results, pipeline) = row
    return RunRecord(run_id, kind, title, json.loads(spec), json.loads(argv), output, started,
                     ended, status, exit_code, message, log, json.loads(results), pipeline)
