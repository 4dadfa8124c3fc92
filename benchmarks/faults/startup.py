"""The window's start-up inputs and the CLI's view of them (issue 20; section of the inputs
engineer): a hand-edited settings.json, a damaged, locked or read-only run history, tools
folders that are not tool folders, and RPC workers typed into the settings.

Window cases start the real window (``window_start.py``) and quit it: it must start, show
what it worked around, and end. CLI cases run a command that reads the same input.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

from faults.harness import Campaign, group

#: Wrong-typed or out-of-range values (finding 11: 7 of 16 such edits crashed the window).
SETTINGS_EDITS = [
    '{"theme": "neon"}', '{"theme": null}', '{"context_length": "x"}', '{"context_length": -5}',
    '{"context_length": 1e400}', '{"context_length": NaN}', '{"rpc_workers": 5}',
    '{"rpc_workers": "h:\\u00b2"}', '{"threads": "abc"}', '{"threads": -3}',
    '{"threads": 1e9}', '{"kv_cache_type": "zzz"}', '{"recent_files": "abc"}',
    '{"recent_files": [1, 2]}', '{"manual_devices": 5}', '{"llama_cpp_dir": 5}',
    '{"output_dir": []}', '{"llama_no_repack": "yes"}', '[1, 2]', '{not json', '"x"',
    "[" * 100_000,
]
#: The ones the window starts on in a quick run (each start takes seconds).
WINDOW_EDITS = ['{"theme": "neon"}', '{"context_length": "x"}', '{"rpc_workers": 5}',
                '{"rpc_workers": "h:\\u00b2"}', '{"manual_devices": 5}', '{"llama_cpp_dir": 5}',
                '{"kv_cache_type": "zzz"}', '{"context_length": 1e400}', "[" * 100_000]


def _types_file(folder: Path) -> Path:
    path = folder / "types.txt"
    path.write_text("ffn_down_exps=q8_0\n")
    return path


@group("settings")
def settings_values(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    _types_file(folder)
    quantize = ["quantize", "m.gguf", "--tensor-type-file", "types.txt", "-o", "q.gguf",
                "--llama-cpp-dir", str(c.stand_in), "--force"]
    for text in SETTINGS_EDITS:
        with c.settings_file(text):
            shown = text if len(text) < 40 else text[:20] + "..."
            c.run(f"quantize with settings {shown}", quantize, folder, keep=[model], expect=0)
    for text in SETTINGS_EDITS if c.full else WINDOW_EDITS:
        with c.settings_file(text):
            shown = text if len(text) < 40 else text[:20] + "..."
            c.run_window(f"window with settings {shown}", folder, model)


@group("settings")
def settings_file_kinds(c: Campaign) -> None:
    """A settings.json that is a FIFO (a read would block), a folder, or 2 MB of spaces."""
    folder = c.folder()
    model = c.model_in(folder)
    path = c.home / "config" / "settings.json"
    for kind in ("fifo", "folder", "huge"):
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "folder":
            path.mkdir()
        else:
            path.write_text(" " * (2 << 20))
        try:
            c.run(f"tools with settings.json as a {kind}", ["tools"], folder, expect=None,
                  deadline=60)
            c.run_window(f"window with settings.json as a {kind}", folder, model)
        finally:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


def _history_in(folder: Path, kind: str) -> Path:
    """A data folder in ``folder`` whose runs.sqlite is ``kind``; returns the data folder."""
    data = folder / f"data-{kind}"
    data.mkdir()
    history = data / "runs.sqlite"
    if kind == "text":
        history.write_text("hello\n")
    elif kind == "garbage-sqlite":
        history.write_bytes(b"SQLite format 3\x00" + b"\xff" * 8000)
    elif kind == "other-program":
        with sqlite3.connect(history) as db:
            db.execute("CREATE TABLE runs (x INTEGER)")
        db.close()
    elif kind == "folder":
        history.mkdir()
    elif kind == "broken-row":
        from apex_gui.core.jobs.run_store import RunStore

        store = RunStore(history)
        run_id = store.start("quantize", "q", {"output_path": str(folder / "q.gguf")}, [], None)
        store.finish(run_id, "succeeded", 0, "ok", "", {"output_bytes": 1})
        store.close()
        with sqlite3.connect(history) as db:
            db.execute("UPDATE runs SET spec = '{oops', results = '[]'")
        db.close()
    return data


@group("run history")
def run_history(c: Campaign) -> None:
    for kind in ("text", "garbage-sqlite", "other-program", "folder", "broken-row"):
        folder = c.folder()
        model = c.model_in(folder)
        _types_file(folder)
        data = _history_in(folder, kind)
        env = {"APEX_STUDIO_DATA_DIR": str(data)}
        fine = kind == "broken-row"
        c.run(f"quantize on a {kind} history", ["quantize", "m.gguf", "--tensor-type-file",
                                                "types.txt", "-o", "q.gguf", "-t", "1",
                                                "--llama-cpp-dir", str(c.stand_in)],
              folder, keep=[model], env=env, expect=0 if fine else 2)
        c.run(f"card on a {kind} history", ["card", "m.gguf"], folder, keep=[model], env=env)
        c.run(f"recommend on a {kind} history", ["recommend", "m.gguf", "--vram", "24GB"],
              folder, keep=[model], env=env, expect=0)
        done = c.run_window(f"window on a {kind} history", folder, model, env=env)
        if done is not None and not fine and "notice: " not in done.stdout:
            c.tally.bad("wrong_exit", f"window on a {kind} history", "no notice shown")


@group("run history")
def run_history_locked_or_read_only(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    data = folder / "data"
    data.mkdir()
    env = {"APEX_STUDIO_DATA_DIR": str(data)}
    from apex_gui.core.jobs.run_store import RunStore

    RunStore(data / "runs.sqlite").close()
    if c.full:  # a lock held for good: each open waits for it (10 s) before working around it
        with sqlite3.connect(data / "runs.sqlite") as db:
            db.execute("PRAGMA journal_mode = DELETE")
        db.close()
        holder = sqlite3.connect(data / "runs.sqlite", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            c.run_window("window on a locked history", folder, model, env=env, deadline=90)
            c.run("card on a locked history", ["card", "m.gguf"], folder, env=env,
                  deadline=90)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    if os.geteuid() != 0:
        data.chmod(0o555)
        (data / "runs.sqlite").chmod(0o444)
        mounted = False
    else:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data)],
                                 capture_output=True).returncode == 0
        if not mounted:
            return
        RunStore(data / "runs.sqlite").close()
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
    try:
        c.run_window("window on a read-only history", folder, model, env=env)
        c.run("recommend on a read-only history", ["recommend", "m.gguf", "--vram", "24GB"],
              folder, env=env, expect=0)
        c.run("card on a read-only history", ["card", "m.gguf"], folder, env=env)
    finally:
        if mounted:
            subprocess.run(["umount", str(data)], check=False)
        else:
            data.chmod(0o755)


@group("tools folders")
def tools_folders(c: Campaign) -> None:
    """Settings > llama.cpp tools folder (and --llama-cpp-dir) that is no tools folder."""
    folder = c.folder()
    model = c.model_in(folder)
    _types_file(folder)
    (folder / "a-file").write_text("x")
    os.mkfifo(folder / "a-fifo")
    not_executable = folder / "not-executable"
    not_executable.mkdir()
    (not_executable / "llama-quantize").write_text("#!/bin/sh\nexit 0\n")
    wrong = folder / "wrong-program"
    wrong.mkdir()
    (wrong / "llama-quantize").write_text("#!/bin/sh\necho 'this is not llama.cpp'\nexit 3\n")
    (wrong / "llama-quantize").chmod(0o755)
    for name in ("missing", "a-file", "a-fifo", "not-executable", "wrong-program"):
        where = str(folder / name)
        c.run(f"quantize --llama-cpp-dir {name}", ["quantize", "m.gguf", "--tensor-type-file",
                                                   "types.txt", "-o", "q.gguf",
                                                   "--llama-cpp-dir", where], folder,
              keep=[model], expect=None)
        with c.settings_file(json.dumps({"llama_cpp_dir": where})):
            c.run(f"tools with the tools folder {name}", ["tools"], folder, expect=None)
            c.run_window(f"window with the tools folder {name}", folder, model)


@group("rpc workers")
def rpc_workers_in_settings(c: Campaign) -> None:
    """The window probes the workers of the settings at start, then quits."""
    import socket

    folder = c.folder()
    model = c.model_in(folder)
    with socket.socket() as silent:  # accepts, never answers: a busy or stalled worker
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        for workers in ("h:\u00b2", "nosuchhost.invalid:50052", "127.0.0.1:1",
                        f"127.0.0.1:{port}", "[::1]:50052", "10.0.0.1:50052," * 17):
            with c.settings_file(json.dumps({"rpc_workers": workers})):
                c.run_window(f"window with rpc_workers {workers[:30]!r}", folder, model)
