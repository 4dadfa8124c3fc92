"""The window starts whatever the settings file and the run history hold, and a banner says
what was wrong and what was done (issue 20, findings 2 and 11; ``--screenshot DIR MODEL``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from apex_gui.app import main, open_window
from apex_gui.core.settings import settings_path
from gui_prompts import close_window

pytestmark = pytest.mark.gui
OPEN_TIMEOUT_MS = 30_000


def start(qtbot: QtBot, model: Path):  # type: ignore[no-untyped-def]
    """``apex-studio MODEL`` up to the event loop, and the model opened."""
    window = open_window(model)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        pass
    return window


def notice_text(window) -> str:  # type: ignore[no-untyped-def]
    from apex_gui.views.window.startup_notice import StartupNotice

    notice = window.findChild(StartupNotice, "startupNotice")
    assert notice is not None
    return " ".join(notice.lines) if notice.isVisible() else ""


@pytest.mark.parametrize("text,key", [('{"theme": "neon"}', "theme"),
                                      ('{"context_length": "x"}', "context_length"),
                                      ('{"rpc_workers": 5}', "rpc_workers"),
                                      ('{"manual_devices": 5}', "manual_devices"),
                                      ('{"llama_cpp_dir": 5}', "llama_cpp_dir"),
                                      ('{"recent_files": [1, 2]}', "recent_files")])
def test_wrong_settings_values_start_the_window_with_a_notice(
        qtbot: QtBot, tools_hidden: None, tiny_qwen3moe: Path, text: str, key: str) -> None:
    settings_path().write_text(text, encoding="utf-8")
    window = start(qtbot, tiny_qwen3moe)
    try:
        assert window.current_model is not None
        assert key in notice_text(window) and "settings.json" in notice_text(window)
    finally:
        close_window(window)


def test_a_damaged_history_starts_the_window_and_says_where_it_went(
        qtbot: QtBot, tools_hidden: None, tiny_qwen3moe: Path) -> None:
    history = Path(os.environ["APEX_STUDIO_DATA_DIR"]) / "runs.sqlite"
    history.write_text("hello\n")
    window = start(qtbot, tiny_qwen3moe)
    try:
        aside = next(history.parent.glob("runs.sqlite.damaged-*"))
        assert aside.read_text() == "hello\n"
        text = notice_text(window)
        assert "damaged" in text and str(aside) in text
        assert notice_text(window) and window.current_model is not None
    finally:
        close_window(window)


def test_a_history_that_cannot_be_opened_starts_the_window_on_a_session_copy(
        qtbot: QtBot, tools_hidden: None, tiny_qwen3moe: Path) -> None:
    """A folder where the file should be: neither usable nor movable as a file (a directory
    at the history's path cannot be replaced by a new file)."""
    history = Path(os.environ["APEX_STUDIO_DATA_DIR"]) / "runs.sqlite"
    history.mkdir()
    (history / "keep.txt").write_text("mine")
    window = start(qtbot, tiny_qwen3moe)
    try:
        text = notice_text(window)
        assert str(history) in text and "memory only" in text
        assert (history / "keep.txt").read_text() == "mine"
    finally:
        close_window(window)


def test_screenshot_mode_refuses_a_model_it_would_not_use(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--screenshot", str(tmp_path / "shots"), str(tmp_path / "missing.gguf")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "missing.gguf" in err and "bundled demo" in err
    assert not (tmp_path / "shots").exists()
