"""No writer overwrites its source, an existing file (without --force), or writes into a
folder, a read-only place or under a name a tool would read as an option."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fakes import cli, make_stand_in_tools, types_file

from apex_gui.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_refusal(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], err


@pytest.fixture
def model(tiny_qwen3moe: Path, tmp_path: Path) -> Path:
    """A private copy: the tests try hard to overwrite it."""
    copy = tmp_path / "m.gguf"
    shutil.copyfile(tiny_qwen3moe, copy)
    return copy


def _aliases(model: Path, tmp_path: Path) -> list[Path]:
    link = tmp_path / "link.gguf"
    link.symlink_to(model)
    hard = tmp_path / "hard.gguf"
    os.link(model, hard)
    sub = tmp_path / "sub"
    sub.mkdir(exist_ok=True)
    return [model, link, hard, sub / ".." / model.name, Path(str(tmp_path) + "//" + model.name)]


@pytest.mark.parametrize("command", ["plan", "card", "quantize", "imatrix"])
def test_every_writer_refuses_the_source_by_any_name(command: str, model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(model)
    extra = {"plan": ["--profile", "quality"], "card": [],
             "quantize": ["--profile", "quality"], "imatrix": []}[command]
    for alias in _aliases(model, tmp_path):
        # --force too: replacing an existing file is allowed, replacing the source never.
        code, _, err = run(capsys, command, str(model), *extra, "-o", str(alias), "--force")
        one_line_refusal(code, err, str(alias), "source model", "never written")
    assert digest(model) == before


def test_existing_outputs_are_kept_without_force(model: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "plan.txt"
    target.write_text("mine\n")
    code, _, err = run(capsys, "plan", str(model), "--profile", "quality", "-o", str(target))
    one_line_refusal(code, err, str(target), "already exists", "--force")
    assert target.read_text() == "mine\n"
    code, out, err = run(capsys, "plan", str(model), "--profile", "quality", "-o", str(target),
                         "--force")
    assert code == 0, err
    assert "token_embd" in target.read_text() and not list(tmp_path.glob("plan.txt.*"))

    other = tmp_path / "other.gguf"
    shutil.copyfile(model, other)
    before = digest(other)
    for args in (["synth", "tiny-qwen2moe"], ["twin", "qwen3-30b-a3b"],
                 ["quantize", str(model), "--profile", "quality"],
                 ["imatrix", str(model)]):
        code, _, err = run(capsys, *args, "-o", str(other))
        one_line_refusal(code, err, "already exists", "--force")
    assert digest(other) == before  # the twin once replaced a model with a sparse 797 GB file
    code, _, err = run(capsys, "synth", "tiny-qwen2moe", "-o", str(other), "--force")
    assert code == 0 and digest(other) != before, err


@pytest.mark.parametrize("args", [
    ["plan", "{model}", "--profile", "quality"], ["card", "{model}"],
    ["synth", "tiny-qwen2moe"], ["twin", "qwen3-30b-a3b"],
    ["quantize", "{model}", "--profile", "quality"], ["imatrix", "{model}"]])
def test_an_output_that_is_a_folder_is_refused_in_one_line(
        args: list[str], model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    filled = [a.format(model=model) for a in args]
    code, _, err = run(capsys, *filled, "-o", str(folder), "--force")
    one_line_refusal(code, err, str(folder), "is a folder")
    assert list(folder.iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".partial", ".tmp", ".lock")]
    from apex_gui.core.jobs.run_store import RunStore

    assert RunStore().runs(status="running") == []


def _read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder
    # root ignores permission bits: a read-only mount is read-only for root too.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.decode().strip()}")
    return folder


@pytest.mark.parametrize("args", [
    ["plan", "{model}", "--profile", "quality"], ["card", "{model}"],
    ["synth", "tiny-qwen2moe"], ["twin", "qwen3-30b-a3b"]])
def test_a_read_only_folder_is_refused_in_one_line(args: list[str], model: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = _read_only_folder(tmp_path)
    try:
        filled = [a.format(model=model) for a in args]
        code, _, err = run(capsys, *filled, "-o", str(folder / "x.out"))
        one_line_refusal(code, err, "cannot write to the folder", str(folder))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=False)


def test_a_source_named_like_an_option_reaches_the_tool_as_a_path(
        model: Path, tmp_path: Path) -> None:
    tools = make_stand_in_tools(tmp_path / "bin")
    odd = tmp_path / "--help.gguf"
    shutil.copyfile(model, odd)
    argv_file = tmp_path / "argv.json"
    done = subprocess.run(
        cli("quantize", "./--help.gguf", "--tensor-type-file", str(types_file(tmp_path)),
            "-o", "./-q.gguf", "-t", "1", "--llama-cpp-dir", str(tools)),
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "APEX_STANDIN_ARGV": str(argv_file)})
    assert done.returncode == 0, done.stderr
    argv = json.loads(argv_file.read_text())
    positional = argv[-4:-2]  # SOURCE OUT (then TYPE THREADS)
    assert positional[0] == str(odd)
    assert not any(a.startswith("-") for a in positional) and positional[1].endswith(".partial")
    assert (tmp_path / "-q.gguf").read_bytes() == model.read_bytes()


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_eval_names_a_folder_pipe_or_device_in_one_line(kind: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "folder":
        target, words = tmp_path, ("is a folder",)
    elif kind == "fifo":
        target = tmp_path / "pipe.gguf"
        os.mkfifo(target)
        words = ("pipe or a device",)
    else:
        target, words = Path("/dev/zero"), ("pipe or a device",)
    code, _, err = run(capsys, "eval", str(target))
    one_line_refusal(code, err, str(target), *words)
    assert "does not exist" not in err
