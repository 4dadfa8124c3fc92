"""The window checks the llama.cpp tools once per build and names a broken tool with its fix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytestqt.qtbot import QtBot

from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.settings import load_settings
from apex_gui.views.window.main_window import MainWindow
from apex_gui.views.window.tools_banner import install_tools_check
from fakes import calls, copying_quantize, crashing_perplexity

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot: QtBot) -> Iterator[MainWindow]:
    main = MainWindow(load_settings(), probe_hardware=False)
    qtbot.addWidget(main)
    main.resize(1200, 800)
    main.show()
    qtbot.waitExposed(main)
    yield main
    main.close()


def test_a_broken_tool_shows_a_banner_with_the_fix(qtbot, window, tmp_path):
    folder = tmp_path / "bin"
    copying_quantize(folder)
    crashing_perplexity(folder, mode="always")
    banner = install_tools_check(window, LlamaTools(folder))
    qtbot.waitUntil(lambda: banner.report is not None, timeout=60_000)
    assert banner.isVisible()
    text = banner.label.text()
    assert "llama-perplexity" in text and "SIGSEGV" in text and "Fix:" in text
    assert "rebuild the tools" in text


def test_a_crashing_repack_path_shows_a_note_and_is_checked_once(qtbot, window, tmp_path):
    folder = tmp_path / "bin"
    copying_quantize(folder)
    crashing_perplexity(folder)
    banner = install_tools_check(window, LlamaTools(folder))
    qtbot.waitUntil(lambda: banner.report is not None, timeout=60_000)
    assert banner.isVisible() and "--no-repack" in banner.label.text()
    runs = len(calls(folder))
    # A second window on the same build reads the stored report: no tool runs again.
    second = install_tools_check(window, LlamaTools(folder))
    assert second.report is not None and second.report.repack_broken
    assert len(calls(folder)) == runs
    banner.dismiss_button.click()
    assert not banner.isVisible()
