"""settings.json edited by hand: every wrong value falls back to its default with one warning
naming the key, and nothing that reads the settings fails (issue 20, finding 11)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from apex_gui.core.settings import (KV_CACHE_TYPES, THEMES, Settings, load_settings, read_settings,
                                    save_settings, settings_path)
from fakes import make_stand_in_tools, types_file

DEFAULTS = Settings(recent_files=[])

#: (the file's text, the key that must be named); each value is of the wrong type or range.
WRONG_VALUES = [
    ('{"theme": "neon"}', "theme"),
    ('{"theme": null}', "theme"),
    ('{"context_length": "x"}', "context_length"),
    ('{"context_length": -5}', "context_length"),
    ('{"context_length": 1e400}', "context_length"),
    ('{"context_length": NaN}', "context_length"),
    ('{"context_length": 8192.5}', "context_length"),
    ('{"rpc_workers": 5}', "rpc_workers"),
    ('{"threads": "abc"}', "threads"),
    ('{"threads": -3}', "threads"),
    ('{"threads": true}', "threads"),
    ('{"kv_cache_type": "zzz"}', "kv_cache_type"),
    ('{"kv_cache_type": 5}', "kv_cache_type"),
    ('{"recent_files": "abc"}', "recent_files"),
    ('{"manual_devices": 5}', "manual_devices"),
    ('{"llama_cpp_dir": 5}', "llama_cpp_dir"),
    ('{"llama_cpp_dir": "a\\u0000b"}', "llama_cpp_dir"),
    ('{"output_dir": []}', "output_dir"),
    ('{"llama_no_repack": "yes"}', "llama_no_repack"),
    ('{"llama_no_repack": 1}', "llama_no_repack"),
]


def write(text: str) -> Path:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text,key", WRONG_VALUES)
def test_a_wrong_value_gives_its_default_and_one_warning_naming_the_key(text: str,
                                                                        key: str) -> None:
    write(text)
    read = read_settings()
    assert getattr(read.settings, key) == getattr(DEFAULTS, key)
    assert len(read.warnings) == 1, read.warnings
    assert key in read.warnings[0] and "settings.json" in read.warnings[0]
    # What reads the settings works on what was read.
    assert read.settings.effective_threads() >= 1


def test_good_values_are_kept_beside_a_bad_one_without_a_warning_for_them() -> None:
    write(json.dumps({"theme": "dark", "threads": 3, "context_length": 4096,
                      "kv_cache_type": "q8_0", "rpc_workers": "10.0.0.2:50052",
                      "llama_no_repack": True, "recent_files": ["/a.gguf", 7, "/b.gguf"],
                      "output_dir": 12, "some_future_key": {"x": 1}, "version": "x"}))
    read = read_settings()
    settings = read.settings
    assert (settings.theme, settings.threads, settings.context_length,
            settings.kv_cache_type, settings.rpc_workers, settings.llama_no_repack) == \
        ("dark", 3, 4096, "q8_0", "10.0.0.2:50052", True)
    assert settings.recent_files == ["/a.gguf", "/b.gguf"]
    assert settings.output_dir == ""
    assert sorted(line.split(": ")[1].split()[0] for line in read.warnings) == \
        ["output_dir", "recent_files"]


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"x"', "{not json", "\xff\xfe",
                                  "[" * 100_000, "9" * 5000])
def test_a_file_that_is_not_a_settings_object_gives_the_defaults_with_one_warning(
        text: str) -> None:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe"
                     else b"\xff\xfe{")
    read = read_settings()
    assert read.settings == DEFAULTS
    assert len(read.warnings) == 1 and str(path) in read.warnings[0]


def test_a_fifo_or_a_huge_file_is_not_read() -> None:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)  # reading it would block for good
    read = read_settings()
    assert read.settings == DEFAULTS and "not a regular file" in read.warnings[0]
    path.unlink()
    with open(path, "wb") as handle:
        handle.truncate(2 << 20)
    read = read_settings()
    assert read.settings == DEFAULTS and "over" in read.warnings[0]


def test_a_missing_file_gives_the_defaults_without_a_word() -> None:
    assert read_settings() == read_settings().__class__(DEFAULTS, ())


def test_load_settings_logs_each_problem_once(caplog: pytest.LogCaptureFixture) -> None:
    write('{"theme": "neon-once"}')
    with caplog.at_level(logging.WARNING, logger="apex_gui.core.settings"):
        load_settings()
        load_settings()
    lines = [r.getMessage() for r in caplog.records if "theme" in r.getMessage()]
    assert len(lines) == 1 and "neon-once" in lines[0]


def test_saved_settings_read_back_without_warnings() -> None:
    settings = Settings(theme="dark", threads=2, recent_files=["/x.gguf"], rpc_workers="a:1")
    save_settings(settings)
    assert read_settings() == read_settings().__class__(settings, ())


def test_the_choices_checked_are_the_ones_the_window_and_the_memory_model_offer() -> None:
    from apex_gui.core.fit import context_memory
    from apex_gui.views import style

    assert context_memory.KV_CACHE_TYPES is KV_CACHE_TYPES
    assert tuple(style.THEMES) == THEMES


def test_quantize_runs_with_a_wrong_threads_value(tmp_path: Path, tiny_qwen3moe: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``{"threads": "abc"}`` made every tool command fail with a TypeError."""
    from apex_gui.cli import main

    write('{"threads": "abc"}')
    tools = make_stand_in_tools(tmp_path / "bin")
    output = tmp_path / "q.gguf"
    code = main(["quantize", str(tiny_qwen3moe), "--tensor-type-file",
                 str(types_file(tmp_path)), "-o", str(output), "--llama-cpp-dir", str(tools)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert output.is_file() and "Traceback" not in err
