"""Run history in SQLite (``data_dir()/runs.sqlite``): every job, its log and its results.

Results survive a restart and can be compared later (the window's comparison table, a CLI
``--json`` dump). Each thread gets its own long-lived connection (WAL, synchronous=NORMAL),
so the store is used from the GUI thread and from workers without sharing a connection and
without an fsync per write.

The file can be damaged, locked by another program or on a read-only disk. Commands that
only read it (``card``, ``recommend``) open it read-only (:meth:`RunStore.for_reading`); the
window opens it with :func:`~apex_gui.core.jobs.history_recovery.open_history`, which always
gives a store and says what it did: a damaged file is moved aside and a new one started, an
unwritable one is copied into memory for the session. Nothing is deleted. A hand-broken row
reads as an empty run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from apex_gui.core.files.outputs import clean_abandoned
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
#: The columns a record is read from, by name (a table of another shape is not ours).
_COLUMNS = ("id, kind, title, spec, argv, output, started, ended, status, exit_code, message, "
            "log, results, pipeline")
#: Seconds a write waits for another process's write to end.
BUSY_TIMEOUT_S = 10.0


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
    """The run history cannot be read or written; the message names the database and the fix.

    ``cause`` is SQLite's name for the error (``SQLITE_NOTADB``...), or ``SCHEMA`` for a
    database that is not a run history, or ``OS`` for a folder that cannot be made.
    """

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause

    @property
    def damaged(self) -> bool:
        """The file is not a readable run history (moving it aside and starting anew helps)."""
        return self.cause.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT", "SCHEMA"))

    @property
    def locked(self) -> bool:
        return self.cause.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _failure(path: Path, error: sqlite3.Error) -> RunStoreError:
    """The one line a user reads for a SQLite error on ``path``: what is wrong and what to do."""
    cause = getattr(error, "sqlite_errorname", "") or ""
    detail = str(error)
    if cause.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        text = (f"the run history {path} is damaged ({detail}): move it away (mv {path} "
                f"{path}.damaged) and a new one is started; the window does this by itself")
    elif cause.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        text = (f"the run history {path} is locked by another program ({detail}): let it "
                "finish or close it, then run again")
    elif cause.startswith("SQLITE_FULL"):
        text = f"the disk of the run history {path} is full ({detail}): free some space"
    elif cause.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        text = (f"the run history {path} cannot be written ({detail}): make the file and its "
                "folder writable, or point APEX_STUDIO_DATA_DIR at another folder")
    else:
        text = (f"the run history {path} failed ({detail}): if its disk is full, free some "
                "space; if the file is damaged, move it away and a new one is started")
    return RunStoreError(text, cause)


def default_store_path() -> Path:
    return data_dir() / "runs.sqlite"


def _clip_log(log: str) -> str:
    if len(log) <= MAX_LOG_CHARS:
        return log
    half = MAX_LOG_CHARS // 2
    return log[:half] + f"\n[... {len(log) - 2 * half} characters left out ...]\n" + log[-half:]


class RunStore:
    """The run history database."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._busy_timeout_s = busy_timeout_s
        self._uri: str | None = None  # a read-only open (for_reading)
        # In memory (session_copy): one connection for every thread, taken in turn.
        self._shared: sqlite3.Connection | None = None
        self._shared_lock = threading.RLock()
        #: Writes are refused with this line (a store opened for reading only).
        self.read_only_reason: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunStoreError(f"cannot create the folder of the run history {self.path} "
                                f"({error.strerror or error}); check the data folder "
                                "(APEX_STUDIO_DATA_DIR)", "OS") from None
        try:
            with self._connect() as db:
                _check_shape(db, self.path, create=True)
        except RunStoreError:
            self.close()  # the file may be moved aside next: nothing may hold it open
            raise

    @classmethod
    def for_reading(cls, path: str | os.PathLike[str] | None = None, *,
                    busy_timeout_s: float = BUSY_TIMEOUT_S) -> RunStore:
        """The history opened read-only (a read-only file, folder or disk is fine); an empty
        one when there is none yet. Writes raise :class:`RunStoreError`."""
        store = cls.__new__(cls)
        store._init_without_file(path, busy_timeout_s)
        store.read_only_reason = "it was opened for reading only"
        if not store.path.is_file():
            store._shared = _memory_database()
            return store
        store._uri = _read_only_uri(store.path)
        try:
            try:
                store._check_columns()
            except RunStoreError as error:
                if error.cause != "SQLITE_CANTOPEN":
                    raise
                # A WAL database on a read-only disk cannot make its shared-memory file:
                # read it as an unchanging file (what is only in its -wal file is not seen).
                store.close()
                store._uri = _read_only_uri(store.path, immutable=True)
                store._check_columns()
        except RunStoreError:
            store.close()
            raise
        return store

    @classmethod
    def session_copy(cls, path: str | os.PathLike[str] | None = None, *,
                     busy_timeout_s: float = BUSY_TIMEOUT_S) -> RunStore:
        """A store in memory holding what can be read of the history at ``path`` (nothing
        when it cannot be read): for a session whose history cannot be written."""
        store = cls.__new__(cls)
        store._init_without_file(path, busy_timeout_s)
        memory = _memory_database()
        try:
            source = cls.for_reading(store.path, busy_timeout_s=busy_timeout_s)
            try:
                with source._connect() as db:
                    rows = db.execute(f"SELECT {_COLUMNS} FROM runs ORDER BY id").fetchall()
                    owners = db.execute("SELECT run_id, pid, created FROM run_owners").fetchall()
            finally:
                source.close()
            with memory:
                memory.executemany(f"INSERT INTO runs ({_COLUMNS}) VALUES "
                                   f"({', '.join('?' * 14)})", rows)
                memory.executemany("INSERT INTO run_owners VALUES (?, ?, ?)", owners)
        except (RunStoreError, sqlite3.Error):
            pass  # nothing readable: the session starts with an empty history
        store._shared = memory
        return store

    def _init_without_file(self, path: str | os.PathLike[str] | None,
                           busy_timeout_s: float) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._local = threading.local()
        self._connections = []
        self._lock = threading.Lock()
        self._busy_timeout_s = busy_timeout_s
        self._uri = None
        self._shared = None
        self._shared_lock = threading.RLock()
        self.read_only_reason = None

    @property
    def in_memory(self) -> bool:
        """True for a session copy: what is recorded now is gone when the store closes."""
        return self._shared is not None and self.read_only_reason is None

    def _check_columns(self) -> None:
        with self._connect() as db:
            _check_shape(db, self.path)

    def _open_connection(self) -> sqlite3.Connection:
        if self._uri is not None:
            return sqlite3.connect(self._uri, uri=True, timeout=self._busy_timeout_s,
                                   check_same_thread=False)
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error:
            db.close()  # a file left open keeps its disk busy (and its lock held)
            raise
        return db

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One long-lived connection per thread in WAL mode with synchronous=NORMAL: a commit
        # then appends to the log without an fsync, where a fresh connection per call paid a
        # checkpoint and fsyncs on close (60-400 ms a write on a slow disk, on the GUI thread).
        try:
            if self._shared is not None:
                with self._shared_lock, self._shared as shared:
                    yield shared
                return
            db = getattr(self._local, "db", None)
            if db is None:
                db = self._open_connection()
                self._local.db = db
                with self._lock:
                    self._connections.append(db)
            with db:  # commits, or rolls back on error
                yield db
        except sqlite3.Error as error:
            # A full disk is the usual cause (the data folder often shares it with the quants).
            raise _failure(self.path, error) from None

    def _writable(self) -> None:
        if self.read_only_reason is not None:
            raise RunStoreError(f"the run history {self.path} cannot record runs: "
                                f"{self.read_only_reason}", "SQLITE_READONLY")

    def close(self) -> None:
        """Close every connection this store opened (each thread's)."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
        if self._shared is not None:
            with self._shared_lock:
                self._shared.close()

    def start(self, kind: str, title: str, spec: dict[str, Any], argv: list[str],
              output: str | None, pipeline: str | None = None) -> int:
        """Record a run as started; returns its id."""
        self._writable()
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
        self._writable()
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET ended = ?, status = ?, exit_code = ?, message = ?, log = ?, "
                "results = ? WHERE id = ?",
                (time.time(), status, exit_code, message, _clip_log(log),
                 json.dumps(results, default=str), run_id))

    def get(self, run_id: int) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _record(row) if row else None

    def runs(self, kind: str | None = None, status: str | None = None,
             limit: int = 100) -> list[RunRecord]:
        """Most recent first."""
        query, args = f"SELECT {_COLUMNS} FROM runs", []
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
            rows = db.execute(f"SELECT {_COLUMNS} FROM runs WHERE status = 'succeeded' "
                              "ORDER BY id ASC")
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
        for output in {output for _, _, output in gone if isinstance(output, str) and output}:
            clean_abandoned(output)
        return len(gone)


def _check_shape(db: sqlite3.Connection, path: Path, create: bool = False) -> None:
    """The tables are those of a run history (created first when ``create`` and missing), or
    a :class:`RunStoreError` saying the file is damaged.

    Creating only what is missing means an open needs no write lock, so another program's
    long write does not keep the window from starting.
    """
    try:
        if create:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in
                      db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version != SCHEMA_VERSION or not {"runs", "run_owners"} <= tables:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute(f"SELECT {_COLUMNS} FROM runs LIMIT 0")
        db.execute("SELECT run_id, pid, created FROM run_owners LIMIT 0")
    except sqlite3.OperationalError as error:
        if "no such" not in str(error):
            raise
        raise RunStoreError(
            f"the run history {path} is damaged ({error}: it is not APEX Studio's run "
            f"history): move it away (mv {path} {path}.damaged) and a new one is started; "
            "the window does this by itself", "SCHEMA") from None


def _memory_database() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return db


def _read_only_uri(path: Path, immutable: bool = False) -> str:
    quoted = urllib.parse.quote(str(path.absolute()))
    return f"file:{quoted}?{'immutable=1' if immutable else 'mode=ro'}"


def _interrupted_message(pid: int | None) -> str:
    owner = f" (process {pid})" if pid is not None else ""
    return (f"interrupted: APEX Studio{owner} stopped before this run ended (killed or "
            "crashed); its partial output was removed")


def _this_process() -> tuple[int, float]:
    process = psutil.Process()
    return process.pid, process.create_time()


def _process_alive(pid: int, created: float) -> bool:
    """The same process (a recycled pid has another start time) and still running."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - created) < 1.0 and \
            process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError, ValueError):
        return False  # gone, or an owner row broken by hand


def _record(row: tuple[Any, ...]) -> RunRecord:
    """A row as a record; a field broken by hand (not JSON, a wrong type) reads as empty and
    the message says so, so one bad row neither stops a listing nor adds wrong results."""
    (run_id, kind, title, spec, argv, output, started, ended, status, exit_code, message,
     log, results, pipeline) = row
    broken: list[str] = []
    spec_value = _json_field(spec, dict, "spec", broken)
    argv_value = _json_field(argv, list, "argv", broken)
    results_value = _json_field(results, dict, "results", broken)
    if not isinstance(started, (int, float)):
        broken.append("started")
        started = 0.0
    if ended is not None and not isinstance(ended, (int, float)):
        broken.append("ended")
        ended = None
    if exit_code is not None and not isinstance(exit_code, int):
        broken.append("exit_code")
        exit_code = None
    texts = [_text(value) for value in (kind, title, status, message, log)]
    if broken:
        texts[3] = (f"this run's record is damaged ({', '.join(broken)} unreadable) and is "
                    f"left out of comparisons. {texts[3]}").strip()
    return RunRecord(int(run_id), texts[0], texts[1], spec_value, argv_value,
                     None if output is None else _text(output), float(started),
                     None if ended is None else float(ended), texts[2], exit_code, texts[3],
                     texts[4], results_value, None if pipeline is None else _text(pipeline))


def _json_field(text: Any, kind: type, name: str, broken: list[str]) -> Any:
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        value = None
    if isinstance(value, kind):
        return value
    broken.append(name)
    return kind()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)
