"""Failures of the places APEX Studio writes to (a damaged run database, a full or read-only
data folder) end in one line naming the place and the fix, never a traceback, and leave no
temporary file behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import refused




def test_a_damaged_run_database_is_named(tiny_qwen2moe: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    database = Path(os.environ["APEX_STUDIO_DATA_DIR"]) / "runs.sqlite"
    database.write_bytes(b"this is not a database" * 100)
    refused(capsys, ["card", str(tiny_qwen2moe)], str(database), "move it away")
    refused(capsys, ["quantize", str(tiny_qwen2moe), "--profile", "quality", "-o",
                     str(tmp_path / "q.gguf")], str(database), "move it away")


@pytest.fixture
def data_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The data folder on its own 1 MiB tmpfs (root ignores permission bits; a mount does not)."""
    folder = tmp_path / "data"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    monkeypatch.setenv("APEX_STUDIO_DATA_DIR", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _fill(folder: Path) -> None:
    with open(folder / "filler.bin", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def test_a_full_data_folder_is_one_line_and_leaves_no_temporary_file(
        data_mount: Path, tiny_qwen2moe: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (data_mount / "plans").mkdir()
    _fill(data_mount)
    refused(capsys, ["quantize", str(tiny_qwen2moe), "--profile", "quality", "-o",
                     str(tmp_path / "q.gguf")], str(data_mount / "plans"), "free some space")
    assert list((data_mount / "plans").iterdir()) == []
    assert not (tmp_path / "q.gguf").exists()


def test_a_read_only_data_folder_is_one_line(data_mount: Path, tiny_qwen2moe: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(data_mount)], check=True)
    refused(capsys, ["quantize", str(tiny_qwen2moe), "--profile", "quality", "-o",
                     str(tmp_path / "q.gguf")], str(data_mount))
    # card only reads the history: a read-only one is read (here, an empty one).
    refused(capsys, ["card", str(tiny_qwen2moe)], "no measured APEX quant")
