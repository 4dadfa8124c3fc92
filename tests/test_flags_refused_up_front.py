"""Flags and headers a tool would choke on are refused before anything starts, each with one
line naming the flag (or file) and what to give instead, exit code 2."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from fakes import refused

from apex_gui.cli import main
from apex_gui.core.jobs.run_store import RunStore



@pytest.mark.parametrize("flags, words", [
    (["-t", "100000"], ["-t/--threads 100000", "from 1 to"]),
    (["-t", "0"], ["-t/--threads 0"]),
    (["-t", "-3"], ["-t/--threads -3"]),
    (["--imatrix-ctx", "0"], ["--imatrix-ctx 0"]),
    (["--imatrix-chunks", "0"], ["--imatrix-chunks 0"]),
    (["--imatrix", "/nonexistent/i.gguf"], ["--imatrix /nonexistent/i.gguf does not exist"]),
])
def test_quantize_flags(flags: list[str], words: list[str], tiny_qwen2moe: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    # quality needs no importance matrix: a wrong --imatrix path is still a mistake to name.
    refused(capsys, ["quantize", str(tiny_qwen2moe), "--profile", "quality", *flags,
                     "-o", str(tmp_path / "q.gguf")], *words)
    assert RunStore().runs() == []  # refused before anything was recorded


@pytest.mark.parametrize("flags, words", [
    (["--ctx", "99999999999"], ["--ctx 99999999999"]),
    (["--ctx", "0"], ["--ctx 0"]),
    (["--bench", "--bench-reps", "0"], ["--bench-reps 0"]),
    (["--chunks", "0"], ["--chunks 0"]),
    (["--tasks", "-1"], ["--tasks -1"]),
    (["-t", "0"], ["-t/--threads 0"]),
])
def test_eval_flags(flags: list[str], words: list[str], tiny_qwen2moe: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, ["eval", str(tiny_qwen2moe), *flags], *words)


@pytest.mark.parametrize("flags, words", [
    (["--vram", ","], ["--vram ','", "gives no size"]),
    (["--ctx", "99999999999"], ["--ctx 99999999999"]),
    (["--margin", "1e308"], ["--margin 1e+308", "out of range"]),
    (["--margin", "nan"], ["--margin nan"]),
    (["--parallel", "0"], ["--parallel 0"]),
])
def test_recommend_flags(flags: list[str], words: list[str], tiny_qwen3moe: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, ["recommend", str(tiny_qwen3moe), *flags], *words)


@pytest.mark.parametrize("content, words", [
    ("not a pattern line\n", ["is not PATTERN=TYPE"]),
    ("[unclosed=q8_0\n", ["'[unclosed'", "not a valid regular expression"]),
    ("ffn_down_exps=q9_z\n", ["unknown type"]),
    ("\n", ["holds no PATTERN=TYPE line"]),
])
def test_a_tensor_type_file_is_checked_before_the_tool_sees_it(
        content: str, words: list[str], tiny_qwen2moe: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    types = tmp_path / "types.txt"
    types.write_text(content)
    refused(capsys, ["quantize", str(tiny_qwen2moe), "--tensor-type-file", str(types), "-o",
                     str(tmp_path / "q.gguf")], "--tensor-type-file", *words)
    # estimate --plan reads the same files: a bad regex was a re.error traceback there.
    refused(capsys, ["estimate", str(tiny_qwen2moe), "--plan", str(types)], "--plan", *words)


def _with_expert_count(source: Path, target: Path, count: int) -> Path:
    """A copy of ``source`` whose header says ``<arch>.expert_count = count``."""
    data = bytearray(source.read_bytes())
    match = re.search(rb"[a-z0-9]+\.expert_count", data)
    assert match is not None
    value_at = match.end() + 4  # after the key: the u32 value type, then the value
    (value_type,) = struct.unpack_from("<I", data, match.end())
    assert value_type == 4  # GGUF UINT32
    struct.pack_into("<I", data, value_at, count)
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("command", [
    ["plan", "--profile", "quality"], ["estimate", "--profile", "quality"],
    ["recommend", "--vram", "24GB"], ["quantize", "--profile", "quality", "-o", "{out}"],
    ["pipeline", "--profiles", "quality", "--output-dir", "{folder}"],
    ["imatrix", "-o", "{out}"]])
def test_a_header_with_zero_experts_is_refused(command: list[str], tiny_qwen2moe: Path,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    broken = _with_expert_count(tiny_qwen2moe, tmp_path / "zero.gguf", 0)
    args = [a.format(out=tmp_path / "q.gguf", folder=tmp_path / "quants") for a in command]
    refused(capsys, [args[0], str(broken), *args[1:]], "expert_count = 0", "convert the model")
    assert not (tmp_path / "q.gguf").exists() and not (tmp_path / "quants").exists()


def test_the_unchanged_model_passes_the_header_check(tiny_qwen2moe: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    same = _with_expert_count(tiny_qwen2moe, tmp_path / "same.gguf", 4)
    assert same.read_bytes() == tiny_qwen2moe.read_bytes()
    assert main(["plan", str(same), "--profile", "quality"]) == 0
