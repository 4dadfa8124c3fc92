"""The measurement's scratch folder: removed on every stop, and by the next run when a
killed one could not.

A sensitivity run writes quantized copies of the model (as large as the model itself for a
calibration probe) into ``$TMPDIR/apex-sensitivity-*/``. The folder goes when the run ends,
fails, is cancelled or gets SIGTERM; SIGKILL (or a power cut) leaves it, so each folder
records its owner (process id, the process's start time, the host) and the next run removes
the folders whose owner is gone. The folder's name carries the process id and start time
too, so one killed before its owner record was written is judged the same way; a folder
from before owners were recorded is removed once nothing has touched it for an hour.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apex_gui.core.files.outputs import clean_abandoned

SCRATCH_PREFIX = "apex-sensitivity-"
OWNER_FILE = "owner.json"
#: A folder without an owner record counts as abandoned after this long untouched.
UNOWNED_STALE_S = 3600.0
#: ``apex-sensitivity-PID-TICKS-random``: the owner in the name itself.
_OWNER_IN_NAME = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)-(\d+)-")


class WorkCancelled(Exception):
    """A long in-process step (writing a sample or shards, a read-back) saw the cancel."""


def stop_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise WorkCancelled()


def scratch_root(work_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where scratch folders go: ``work_dir`` if given, else the temporary folder."""
    return Path(work_dir) if work_dir else Path(tempfile.gettempdir())


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown:
    with the id it tells a live owner from a new process that reused the id."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, ticks: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    except OSError:
        return False
    if ticks is not None:
        now = _start_ticks(pid)
        if now is not None and now != ticks:
            return False  # the id now belongs to another process
    return True


def is_stale(folder: Path, now: float | None = None) -> bool:
    """Whether ``folder`` belongs to a run that can no longer clean it up."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        pid = int(owner["pid"])
        host = str(owner.get("host", ""))
        ticks = owner.get("start_ticks")
    except (OSError, ValueError, KeyError, TypeError):
        # No readable record (the run was killed before writing it): the name says whose.
        named = _OWNER_IN_NAME.match(folder.name)
        if named is not None:
            pid, start = int(named.group(1)), named.group(2)
            return not _alive(pid, start if start != "0" else None)
        try:
            age = (now or time.time()) - folder.stat().st_mtime
        except OSError:
            return False
        return age > UNOWNED_STALE_S
    if host and host != socket.gethostname():
        return False  # a shared temporary folder: another machine's run
    return not _alive(pid, str(ticks) if ticks is not None else None)


def remove_stale(root: Path) -> list[Path]:
    """Remove the scratch folders of dead runs under ``root``, and the lock and temporary
    files each left on its output; returns the folders removed."""
    removed: list[Path] = []
    try:
        candidates = sorted(root.glob(SCRATCH_PREFIX + "*"))
    except OSError:
        return removed
    for folder in candidates:
        if folder.is_dir() and not folder.is_symlink() and is_stale(folder):
            output = _owner(folder).get("output")
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(output, str) and output:
                clean_abandoned(output)  # only when no live run holds its lock
            if not folder.exists():
                removed.append(folder)
    return removed


def _owner(folder: Path) -> dict[str, object]:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


@contextmanager
def scratch_folder(work_dir: str | os.PathLike[str] | None = None,
                   output: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh scratch folder with its owner (and the output the run will write, whose lock
    a killed run leaves) recorded, removed however the block ends; stale folders of dead
    runs are removed first."""
    root = scratch_root(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    ticks = _start_ticks(os.getpid())
    owner = {"pid": os.getpid(), "start_ticks": ticks, "host": socket.gethostname(),
             "started": time.time(), "output": os.path.abspath(output) if output else ""}
    folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{ticks or 0}-",
                                   dir=root))
    try:
        # Whole or absent, never half written: a killed run's record must still read.
        record = folder / f".{OWNER_FILE}.tmp"
        record.write_text(json.dumps(owner), encoding="utf-8")
        os.replace(record, folder / OWNER_FILE)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
