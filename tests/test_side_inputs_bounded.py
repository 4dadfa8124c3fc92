"""Every side input (calibration text, plan file, imatrix, task files, profiles) must be a
regular file under a size cap: a FIFO, a device or a huge file is refused in one line, at
once, without reading it (each case runs in a real process with a deadline: a hang fails)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from fakes import cli

from apex_gui.core.files.inputs import InputFileError, read_bounded_bytes, read_bounded_text

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


def refused(args: list[str], *words: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], done.stderr
    return lines[0]


@pytest.fixture
def pipe(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    return path


def test_a_fifo_or_device_as_calibration_text_is_refused(tiny_qwen2moe: Path, tmp_path: Path,
                                                         pipe: Path) -> None:
    out = str(tmp_path / "i.gguf")
    refused(["imatrix", str(tiny_qwen2moe), "--calibration", str(pipe), "-o", out],
            "--calibration", str(pipe), "pipe (FIFO)")
    # /dev/zero grew to 6.5 GB of memory in 8 s when it was read whole.
    refused(["imatrix", str(tiny_qwen2moe), "--calibration", "/dev/zero", "-o", out],
            "--calibration /dev/zero", "a device")
    refused(["quantize", str(tiny_qwen2moe), "--profile", "i-quality", "--imatrix", "auto",
             "--calibration", str(pipe), "-o", out], "--calibration", "pipe (FIFO)")


def test_a_huge_calibration_file_is_refused_before_it_is_read(tiny_qwen2moe: Path,
                                                              tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as handle:
        handle.truncate(3 * 2**30)  # sparse: 3 GiB on paper, nothing on disk
    refused(["imatrix", str(tiny_qwen2moe), "--calibration", str(huge), "-o",
             str(tmp_path / "i.gguf")], str(huge), "more than the")


def test_a_fifo_as_plan_imatrix_or_tensor_type_file_is_refused(tiny_qwen2moe: Path,
                                                               tmp_path: Path, pipe: Path) -> None:
    refused(["estimate", str(tiny_qwen2moe), "--plan", str(pipe)], "--plan", "pipe (FIFO)")
    out = str(tmp_path / "q.gguf")
    refused(["quantize", str(tiny_qwen2moe), "--profile", "i-quality", "--imatrix", str(pipe),
             "-o", out], "--imatrix", "pipe (FIFO)")
    refused(["quantize", str(tiny_qwen2moe), "--tensor-type-file", str(pipe), "-o", out],
            "--tensor-type-file", "pipe (FIFO)")
    refused(["plan", str(tiny_qwen2moe), "--profile", "quality", "--imatrix", str(pipe)],
            "--imatrix", "pipe (FIFO)")


def test_eval_task_files_must_be_regular_files(tiny_qwen2moe: Path, pipe: Path) -> None:
    for flag in ("--ppl", "--hellaswag", "--winogrande", "--mc"):
        refused(["eval", str(tiny_qwen2moe), flag, str(pipe)], flag, "pipe (FIFO)")


def test_a_fifo_in_the_profiles_folder_is_skipped_with_one_line(tiny_qwen2moe: Path) -> None:
    folder = Path(os.environ["APEX_STUDIO_CONFIG_DIR"]) / "profiles"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "stuck.toml")
    done = subprocess.run(cli("plan", str(tiny_qwen2moe), "--profile", "quality"),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    # Only the warnings: `plan` without -o also prints its size and command on stderr.
    assert [line for line in done.stderr.splitlines() if line.startswith("apex-studio ")] == [
        f"apex-studio plan: warning: skipped profile {folder / 'stuck.toml'} is a pipe (FIFO), "
        "not a regular file; give a regular file"]


def test_bounded_reads_stop_at_the_cap(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_bytes(b"x" * 100)
    assert read_bounded_bytes(text, "--x", 100) == b"x" * 100
    with pytest.raises(InputFileError, match=r"--x .*t\.txt is 100 B, more than"):
        read_bounded_bytes(text, "--x", 99)
    text.write_bytes(b"ok \xff here")
    with pytest.raises(InputFileError, match=r"not UTF-8 text \(byte 3 is 0xff\)"):
        read_bounded_text(text, "--x", 100)
    with pytest.raises(InputFileError, match="is a folder"):
        read_bounded_bytes(tmp_path, "--x", 100)


def test_the_windows_calibration_path_is_bounded_too(pipe: Path) -> None:
    """The Run panel combines calibration files in core: a FIFO is refused, not read."""
    from apex_gui.core.jobs.calibration import CalibrationError, combine_calibration

    with pytest.raises(CalibrationError, match=r"calibration file .*pipe\.txt is a pipe \(FIFO\)"):
        combine_calibration([pipe])
    with pytest.raises(CalibrationError, match=r"/dev/zero is a device"):
        combine_calibration(["/dev/zero"])
