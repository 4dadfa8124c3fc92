"""A damaged, locked or read-only run history (issue 20, finding 2 and two minor findings):
the window starts and says what is wrong and what was done, nothing is deleted, commands that
only read the history read it, and a hand-broken row reads as an empty run."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from apex_gui.core.jobs.history_recovery import open_history
from apex_gui.core.jobs.run_store import RunStore, RunStoreError
from fakes import record, refused


def history_path() -> Path:
    return Path(os.environ["APEX_STUDIO_DATA_DIR"]) / "runs.sqlite"


def quant_rows(store: RunStore, model: Path, folder: Path) -> Path:
    """One measured Compact quant of ``model``, as a pipeline records it."""
    quant = folder / f"{model.stem}-APEX-Compact.gguf"
    quant.write_bytes(b"q" * 1000)
    record(store, "quantize", {"source": str(model), "output_path": str(quant),
                               "profile": "compact"}, {"output_bytes": 1000}, output=str(quant))
    record(store, "kl-divergence", {"model": str(quant), "context": 512}, {"kld_mean": 0.0469})
    return quant


# --- damaged ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"hello\n", b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_damaged_history_is_moved_aside_and_a_new_one_started(content: bytes) -> None:
    path = history_path()
    path.write_bytes(content)
    opened = open_history(path)
    asides = list(path.parent.glob("runs.sqlite.damaged-*"))
    assert len(asides) == 1 and asides[0].read_bytes() == content  # nothing lost
    assert opened.notice is not None and str(asides[0]) in opened.notice
    assert "damaged" in opened.notice and "new" in opened.notice
    run_id = opened.store.start("quantize", "q", {"a": 1}, [], None)
    assert opened.store.get(run_id).spec == {"a": 1}  # type: ignore[union-attr]
    opened.store.close()
    assert open_history(path).notice is None  # the new one is fine next time


def test_another_programs_database_is_moved_aside_too() -> None:
    path = history_path()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (x INTEGER)")
        db.execute("INSERT INTO runs VALUES (7)")
    db.close()
    opened = open_history(path)
    assert opened.notice is not None and "damaged" in opened.notice
    aside = next(path.parent.glob("runs.sqlite.damaged-*"))
    with sqlite3.connect(aside) as db:
        assert db.execute("SELECT x FROM runs").fetchall() == [(7,)]
    db.close()
    opened.store.close()


def test_the_cli_says_one_line_about_a_damaged_history(
        tiny_qwen2moe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = history_path()
    path.write_bytes(b"hello\n")
    refused(capsys, ["quantize", str(tiny_qwen2moe), "--profile", "quality", "-o",
                     str(tmp_path / "q.gguf")], str(path), "damaged", "move it away")
    assert path.read_bytes() == b"hello\n"  # the CLI leaves it to the user (or the window)


# --- locked ---------------------------------------------------------------------------------


def test_a_history_locked_by_another_program_is_read_for_the_session(tmp_path: Path) -> None:
    path = history_path()
    store = RunStore(path)
    record(store, "quantize", {"output_path": "/x.gguf"}, {"output_bytes": 1})
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = DELETE")  # so that a lock keeps readers out too
    db.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        opened = open_history(path, busy_timeout_s=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert opened.notice is not None and "locked" in opened.notice
    assert "memory" in opened.notice and "gone when the window closes" in opened.notice
    assert opened.store.in_memory
    opened.store.start("quantize", "q", {}, [], None)  # the session records its runs
    with sqlite3.connect(path) as db:  # and the file is as it was
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)
    db.close()


def test_a_long_write_elsewhere_does_not_keep_the_history_from_opening() -> None:
    path = history_path()
    RunStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer in WAL mode: readers go on
    try:
        opened = open_history(path, busy_timeout_s=0.2)
        assert opened.notice is None
        with pytest.raises(RunStoreError, match="locked by another program"):
            opened.store.start("quantize", "q", {}, [], None)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    opened.store.start("quantize", "q", {}, [], None)
    opened.store.close()


# --- read-only --------------------------------------------------------------------------------


@pytest.fixture
def read_only_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   tiny_qwen2moe: Path) -> Iterator[tuple[Path, Path]]:
    """A data folder whose history holds one measured quant, then made read-only: a read-only
    tmpfs for root (which ignores permission bits), else the permission bits."""
    folder = tmp_path / "data"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no mount command here (root ignores permission bits)")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted = True
    monkeypatch.setenv("APEX_STUDIO_DATA_DIR", str(folder))
    store = RunStore(folder / "runs.sqlite")
    quant = quant_rows(store, tiny_qwen2moe, tmp_path)
    store.close()
    try:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            (folder / "runs.sqlite").chmod(0o444)
            folder.chmod(0o555)
        yield folder / "runs.sqlite", quant
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_card_reads_a_read_only_history(read_only_data: tuple[Path, Path], tiny_qwen2moe: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from apex_gui.cli import main

    code = main(["card", str(tiny_qwen2moe)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "APEX Compact" in captured.out and "0.0469" in captured.out


def test_a_read_only_history_is_shown_and_the_session_kept_in_memory(
        read_only_data: tuple[Path, Path]) -> None:
    path, quant = read_only_data
    before = path.read_bytes()
    opened = open_history(path)
    assert opened.notice is not None and "cannot be written" in opened.notice
    assert "its runs are shown" in opened.notice and "memory" in opened.notice
    assert any(r.spec.get("output_path") == str(quant) for r in opened.store.runs())
    run_id = opened.store.start("quantize", "new", {}, [], None)
    opened.store.finish(run_id, "succeeded", 0, "ok", "", {})
    assert opened.store.get(run_id).status == "succeeded"  # type: ignore[union-attr]
    assert path.read_bytes() == before


def test_a_store_opened_for_reading_refuses_to_record(tmp_path: Path) -> None:
    RunStore(tmp_path / "runs.sqlite").close()
    store = RunStore.for_reading(tmp_path / "runs.sqlite")
    with pytest.raises(RunStoreError, match="reading only"):
        store.start("quantize", "q", {}, [], None)
    store.close()
    assert RunStore.for_reading(tmp_path / "none" / "runs.sqlite").runs() == []
    assert not (tmp_path / "none").exists()


# --- a hand-broken row --------------------------------------------------------------------


@pytest.mark.parametrize("column,value", [("spec", "{oops"), ("results", "[]"),
                                          ("argv", "null"), ("started", "yesterday"),
                                          ("spec", '"a string"')])
def test_a_hand_broken_row_reads_as_an_empty_run(tmp_path: Path, column: str,
                                                 value: str) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    good = record(store, "quantize", {"output_path": "/q.gguf"}, {"output_bytes": 5})
    bad = record(store, "quantize", {"output_path": "/q.gguf"}, {"output_bytes": 7})
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, bad))
    db.close()
    records = {r.id: r for r in store.runs()}
    assert records[good].results == {"output_bytes": 5}
    assert "damaged" in records[bad].message and column in records[bad].message
    assert store.results_for("/q.gguf") == ({"output_bytes": 5} if column in ("spec", "results")
                                            else {"output_bytes": 7})
    store.close()


def test_card_with_a_hand_broken_row_names_no_json_error(
        tiny_qwen2moe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from apex_gui.cli import main

    store = RunStore()
    quant_rows(store, tiny_qwen2moe, tmp_path)
    broken = record(store, "kl-divergence", {"model": "/elsewhere.gguf"}, {"kld_mean": 1.0})
    store.close()
    with sqlite3.connect(history_path()) as db:
        db.execute("UPDATE runs SET spec = '{not json', results = 'x' WHERE id = ?", (broken,))
    db.close()
    code = main(["card", str(tiny_qwen2moe)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "APEX Compact" in captured.out and "Expecting" not in captured.err
    with sqlite3.connect(history_path()) as db:  # the row stays in the file as it was
        assert db.execute("SELECT spec FROM runs WHERE id = ?", (broken,)).fetchone() == \
            ("{not json",)
    db.close()


def test_a_hand_broken_running_row_is_marked_interrupted(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.start("quantize", "q", {}, [], str(tmp_path / "q.gguf"))
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.execute("UPDATE runs SET output = 5 WHERE id = ?", (run_id,))
        db.execute("UPDATE run_owners SET pid = 'abc', created = 'yesterday'")
    db.close()
    assert store.mark_interrupted() == 1
    assert store.get(run_id).status == "interrupted"  # type: ignore[union-attr]
    store.close()
