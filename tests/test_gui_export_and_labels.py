"""Export shows a copyable llama-quantize command (with the importance matrix a plan needs);
no literal "&" in any tooltip or status tip."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFileDialog


from apex_gui.views.window.main_window import MainWindow

pytestmark = pytest.mark.gui


def export(window: MainWindow, target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The native save dialog cannot be driven offscreen: answer it with a path.
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    window.export_action.trigger()


def test_export_shows_a_copyable_command_with_the_imatrix_the_plan_needs(
        demo_window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = demo_window.current_plan
    assert plan is not None
    plan.set_cells(plan.row_cells(6), "IQ2_S", "needs an imatrix")
    assert plan.needs_imatrix()
    target = tmp_path / "plan.txt"
    export(demo_window, target, monkeypatch)
    dialog = demo_window.exported_dialog
    assert dialog is not None and dialog.isVisible() and target.exists()
    text = dialog.command_edit.toPlainText()
    quantize = [line for line in text.splitlines() if line.startswith("llama-quantize")]
    assert quantize and "--imatrix" in quantize[0] and str(target) in quantize[0]
    assert any(line.startswith("llama-imatrix") for line in text.splitlines())
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == text
    dialog.close()


def test_export_of_a_plan_without_imatrix_types_shows_no_imatrix(
        demo_window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = demo_window.current_plan
    assert plan is not None and not plan.needs_imatrix()
    export(demo_window, tmp_path / "plan.txt", monkeypatch)
    dialog = demo_window.exported_dialog
    assert dialog is not None
    assert "imatrix" not in dialog.command_edit.toPlainText()
    assert dialog.findChild(type(dialog.command_edit), None) is not None
    dialog.close()


def test_no_literal_ampersands_in_tips(demo_window: MainWindow) -> None:
    shown = [(a.text(), a.toolTip(), a.statusTip()) for a in demo_window.actions()]
    bad = [t for t in shown if "&" in t[1] or "&" in t[2]]
    assert not bad, f"tips with a literal '&': {bad}"
    assert demo_window.zoom_fit_action.toolTip().startswith("Fit all layers")


def test_the_plan_panel_says_why_balanced_is_larger_than_quality(demo_window: MainWindow) -> None:
    demo_window.switch_profile("balanced")
    note = demo_window.plan_panel.profile_note
    assert note.isVisible() and "Larger than Quality" in note.text() and "IQ4_XS" in note.text()
    demo_window.switch_profile("quality")
    assert "Smaller than Balanced" in demo_window.plan_panel.profile_note.text()


def test_the_profile_note_reads_on_the_dark_theme_after_a_switch(demo_window: MainWindow) -> None:
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    from apex_gui.views import style

    app = QApplication.instance()
    original = app.property("apexTheme") or "system"
    try:
        style.apply_theme(app, "dark")
        QApplication.processEvents()  # palette change events reach the widgets
        note = demo_window.plan_panel.profile_note
        shown = note.palette().color(QPalette.ColorRole.WindowText)
        background = note.palette().color(QPalette.ColorRole.Window)
        assert shown == style.dark_palette().color(QPalette.ColorRole.PlaceholderText)
        assert shown.lightness() - background.lightness() > 60, (shown.name(), background.name())
    finally:
        style.apply_theme(app, str(original))
