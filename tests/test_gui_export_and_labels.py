"""Export shows a copyable llama-quantize command (with the importance matrix a plan needs);
no literal "&" in any tooltip or status tip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFileDialog
from pytestqt.qtbot import QtBot

from gui_prompts import close_window

from apex_gui.core.settings import load_settings
from apex_gui.views.main_window import MainWindow

pytestmark = pytest.mark.gui


@pytest.fixture
def demo(qtbot: QtBot) -> Iterator[MainWindow]:
    main = MainWindow(load_settings(), probe_hardware=False)
    main.resize(1200, 800)
    main.show()
    qtbot.waitExposed(main)
    with qtbot.waitSignal(main.modelLoadFinished, timeout=10_000):
        main.open_demo()
    yield main
    close_window(main)


def export(window: MainWindow, target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The native save dialog cannot be driven offscreen: answer it with a path.
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    window.export_action.trigger()


def test_export_shows_a_copyable_command_with_the_imatrix_the_plan_needs(
        demo: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = demo.current_plan
    assert plan is not None
    plan.set_cells(plan.row_cells(6), "IQ2_S", "needs an imatrix")
    assert plan.needs_imatrix()
    target = tmp_path / "plan.txt"
    export(demo, target, monkeypatch)
    dialog = demo.exported_dialog
    assert dialog is not None and dialog.isVisible() and target.exists()
    text = dialog.command_edit.toPlainText()
    quantize = [line for line in text.splitlines() if line.startswith("llama-quantize")]
    assert quantize and "--imatrix" in quantize[0] and str(target) in quantize[0]
    assert any(line.startswith("llama-imatrix") for line in text.splitlines())
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == text
    dialog.close()


def test_export_of_a_plan_without_imatrix_types_shows_no_imatrix(
        demo: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = demo.current_plan
    assert plan is not None and not plan.needs_imatrix()
    export(demo, tmp_path / "plan.txt", monkeypatch)
    dialog = demo.exported_dialog
    assert dialog is not None
    assert "imatrix" not in dialog.command_edit.toPlainText()
    assert dialog.findChild(type(dialog.command_edit), None) is not None
    dialog.close()


def test_no_literal_ampersands_in_tips(demo: MainWindow) -> None:
    shown = [(a.text(), a.toolTip(), a.statusTip()) for a in demo.actions()]
    bad = [t for t in shown if "&" in t[1] or "&" in t[2]]
    assert not bad, f"tips with a literal '&': {bad}"
    assert demo.zoom_fit_action.toolTip().startswith("Fit all layers")


def test_the_plan_panel_says_why_balanced_is_larger_than_quality(demo: MainWindow) -> None:
    demo.switch_profile("balanced")
    note = demo.plan_panel.profile_note
    assert note.isVisible() and "Larger than Quality" in note.text() and "IQ4_XS" in note.text()
    demo.switch_profile("quality")
    assert "Smaller than Balanced" in demo.plan_panel.profile_note.text()
