"""A mistyped sub-command is refused as one, with the command it was probably meant to be,
not handed to the window's parser; ``inspect`` sizes a small file in MB (issue 22, #11:
"unrecognized arguments" for ``quantise``, the window's help with exit 0 for ``convert
--help``, "0.00 GB" for a 2 MB file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apex_gui.cli import main as cli_main
from apex_gui.cli import unknown_command


def test_a_mistyped_command_is_named_with_its_likely_meaning(tmp_path: Path) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-m", "apex_gui", "quantise", "x.gguf"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("apex-studio: error: unknown command 'quantise' (did you "
                                   "mean quantize?); see apex-studio --help")
    assert "unrecognized arguments" not in done.stderr and done.stdout == ""


def test_help_of_an_unknown_command_is_not_the_windows_help(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["frobnicate", "--help"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "APEX Studio window" not in err
    assert "unknown command 'frobnicate'; the commands are inspect, " in err
    assert err.count("\n") == 1


def test_a_file_to_open_is_still_the_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel").write_bytes(b"GGUF")
    for argv in (["model.gguf"], ["models/qwen"], ["mymodel"], ["--theme", "dark"], []):
        assert unknown_command(argv) is None, argv
    assert unknown_command(["inspect", "x.gguf"]) is None
    assert "did you mean inspect?" in (unknown_command(["inspct"]) or "")


def test_inspect_sizes_a_small_file_in_mb(tiny_qwen2moe: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inspect", str(tiny_qwen2moe)]) == 0
    out = capsys.readouterr().out
    size_line = next(line for line in out.splitlines() if line.strip().startswith("size"))
    assert " MB (" in size_line and "0.00 GB" not in out, size_line
