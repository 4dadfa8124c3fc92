"""The file-safety core: temporary names unique to a run, a lock on the final name, and a
completeness check another writer cannot fool."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from apex_gui.core.files.outputs import (FileIdentity, OutputBusyError, OutputLock, check_complete,
                                         claim_output, gguf_extent_problem, move_into_place,
                                         stale_files, temporary_name, write_text_output)


def test_temporary_names_are_unique_and_cleanup_takes_only_its_own(tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"  # the test's own folder holds the isolated settings too
    tmp_path.mkdir()
    output = tmp_path / "q.gguf"
    first, second = temporary_name(output), temporary_name(output)
    assert first != second and first.name.startswith("q.gguf.") and first.suffix == ".partial"
    mine = [first, tmp_path / "q.gguf.partial", tmp_path / "q.gguf.tmp"]
    others = [temporary_name(tmp_path / "q.gguf.v2.gguf"), tmp_path / "q.gguf.notes.txt",
              tmp_path / "q.gguf"]
    for path in mine + others:
        path.write_bytes(b"x")
    assert sorted(stale_files(output)) == sorted(mine)
    claim_output(output).release()  # taking the lock removes what dead runs left
    assert sorted(p for p in tmp_path.iterdir()) == sorted(others)


def test_the_lock_is_exclusive_and_leaves_no_file(tmp_path: Path) -> None:
    output = tmp_path / "q.gguf"
    held = OutputLock(output).acquire()
    with pytest.raises(OutputBusyError, match=rf"another run \(process {os.getpid()}\) is writing"):
        OutputLock(output).acquire()
    held.release()
    assert not (tmp_path / "q.gguf.lock").exists()
    with OutputLock(output) as again:
        assert again.held


def test_a_gguf_another_writer_appended_to_is_not_complete(tiny_qwen2moe: Path,
                                                           tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(tiny_qwen2moe, copy)
    assert gguf_extent_problem(copy) is None
    with open(copy, "ab") as handle:
        handle.write(b"\0" * 4096)
    assert "more than its header describes" in (gguf_extent_problem(copy) or "")


def test_a_file_changed_during_or_after_its_check_is_not_renamed(tmp_path: Path) -> None:
    written, output = tmp_path / "w.partial", tmp_path / "w.bin"
    written.write_bytes(b"complete")

    def check_while_another_writes(path: Path) -> str | None:
        with open(path, "ab") as handle:
            handle.write(b" and more")
        return None

    problem, seen = check_complete(written, check_while_another_writes)
    assert problem is not None and "changed while it was being checked" in problem

    problem, seen = check_complete(written, lambda path: None)
    assert problem is None and seen == FileIdentity.of(written)
    written.write_bytes(b"replaced by someone else")
    assert "changed after it was checked" in (move_into_place(written, output, seen) or "")
    assert not output.exists()
    problem, seen = check_complete(written, lambda path: None)
    assert seen is not None and move_into_place(written, output, seen) is None
    assert output.read_bytes() == b"replaced by someone else" and not written.exists()


def test_text_outputs_never_replace_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    target = tmp_path / "plan.txt"
    write_text_output(target, "first\n")
    with pytest.raises(ValueError, match="already exists"):
        write_text_output(target, "second\n")
    write_text_output(target, "second\n", force=True)
    assert target.read_text() == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.txt"]
