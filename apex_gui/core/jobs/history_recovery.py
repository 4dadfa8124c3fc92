"""The window's run history, whatever state its file is in.

A damaged file (not a database, malformed, another program's tables) is moved aside and a
new one started; one that is locked, read-only or on a full disk is read into memory for the
session. Nothing is deleted, and the one paragraph returned says what was done.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.jobs.run_store import (BUSY_TIMEOUT_S, RunStore, RunStoreError,
                                          default_store_path)

__all__ = ["OpenedHistory", "open_history"]


@dataclass(frozen=True)
class OpenedHistory:
    """The window's run history and, when the file could not be used as it is, what was done."""

    store: RunStore
    notice: str | None = None  # one paragraph: what is wrong, what was done, what to do


def open_history(path: str | os.PathLike[str] | None = None, *,
                 busy_timeout_s: float = BUSY_TIMEOUT_S) -> OpenedHistory:
    """Open the history for a window session, whatever state the file is in (never raises).

    * usable: opened, and runs a dead process left "running" are marked interrupted;
    * damaged (not a database, malformed, another program's tables): the file is moved aside
      (``runs.sqlite.damaged-DATE-TIME``, its -wal/-shm with it) and a new one started;
    * locked, read-only, on a full disk, or damaged and not movable: what can be read is
      copied into memory; the session shows past runs and records new ones until it ends.
    """
    target = Path(path) if path is not None else default_store_path()
    try:
        return OpenedHistory(_opened(target, busy_timeout_s))
    except RunStoreError as error:
        failure = error
    if failure.damaged:
        try:
            aside = _move_aside(target)
        except OSError as move_error:
            failure = RunStoreError(f"{failure} (moving it aside failed: "
                                    f"{move_error.strerror or move_error})", failure.cause)
        else:
            try:
                store = _opened(target, busy_timeout_s)
            except RunStoreError as error:
                failure = error
            else:
                return OpenedHistory(store, (
                    f"The run history {target.name} was damaged ({_detail(failure)}). It was "
                    f"moved to {aside} (nothing was deleted) and a new, empty history was "
                    "started: past runs are not listed, new ones are recorded as usual."))
    store = RunStore.session_copy(target, busy_timeout_s=busy_timeout_s)
    shown = store.runs(limit=1)
    return OpenedHistory(store, (
        f"The run history {target} cannot be used as it is: {failure} For this session "
        f"{'its runs are shown and ' if shown else ''}new runs are recorded in memory only: "
        "they are gone when the window closes."))


def _opened(path: Path, busy_timeout_s: float) -> RunStore:
    store = RunStore(path, busy_timeout_s=busy_timeout_s)
    try:
        store.mark_interrupted()
    except RunStoreError:
        store.close()
        raise
    return store


def _detail(error: RunStoreError) -> str:
    text = str(error)
    return text[text.find("(") + 1:text.find(")")] if "(" in text else error.cause


def _move_aside(path: Path) -> Path:
    """Rename the history and its -wal/-shm files to ``NAME.damaged-DATE-TIME``; the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{number}")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, aside.with_name(aside.name + suffix))
    return aside
