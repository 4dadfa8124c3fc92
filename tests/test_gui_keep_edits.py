"""Hand edits are never lost without a word: opening another model or quitting asks first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_prompts import PromptAnswer, close_window
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.settings import load_settings
from apex_gui.views.window.main_window import MainWindow

pytestmark = pytest.mark.gui

OPEN_TIMEOUT_MS = 10_000


@pytest.fixture
def demo(qtbot: QtBot) -> Iterator[MainWindow]:
    main = MainWindow(load_settings(), probe_hardware=False)
    main.resize(1200, 800)
    main.show()
    qtbot.waitExposed(main)
    with qtbot.waitSignal(main.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        main.open_demo()
    yield main
    close_window(main)


def paint_layers(window: MainWindow, layers: range) -> list[tuple[int, str]]:
    """Paint whole expert rows through the heatmap's own paint path (one stroke per row)."""
    window.plan_panel.palette_widget.button("IQ2_S").click()
    cells = [(layer, kind) for layer in layers for kind in ("ffn_gate_exps", "ffn_up_exps")]
    window.heatmap.set_selection(cells)
    window.apply_action.trigger()
    QTest.qWait(1)
    plan = window.current_plan
    assert plan is not None and all(plan.cell_type(*c) == "IQ2_S" for c in cells)
    return cells


def test_opening_another_model_asks_and_cancel_keeps_the_edits(demo: MainWindow, qtbot: QtBot,
                                                             tmp_path: Path) -> None:
    plan = demo.current_plan
    assert plan is not None
    cells = paint_layers(demo, range(0, 12))
    assert len(cells) == 24
    other = write_shape_twin(tmp_path / "olmoe.gguf", "olmoe-1b-7b")[0]

    answer = PromptAnswer(QMessageBox.StandardButton.Cancel)
    demo.open_model_file(other)  # what File > Open and Open recent call
    answer.stop()
    assert answer.texts, "no 'Keep your changes?' prompt before opening another model"
    assert "tensor(s) differ" in answer.texts[0]
    QTest.qWait(20)
    assert demo.current_plan is plan and demo.current_model is plan.model
    assert all(plan.cell_type(*c) == "IQ2_S" for c in cells)
    assert demo.undo_action.isEnabled()
    demo.undo_action.trigger()  # the undo history survived too
    assert plan.cell_type(*cells[0]) != "IQ2_S"
    QTest.qWait(1)  # actions follow on the next event-loop turn
    demo.redo_action.trigger()
    assert plan.cell_type(*cells[0]) == "IQ2_S"

    answer = PromptAnswer(QMessageBox.StandardButton.Discard)
    with qtbot.waitSignal(demo.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        demo.open_model_file(other)
    answer.stop()
    assert answer.texts
    assert demo.current_model is not None and demo.current_model.path == other


def test_recent_file_menu_asks_too(demo: MainWindow, tmp_path: Path) -> None:
    other = write_shape_twin(tmp_path / "olmoe.gguf", "olmoe-1b-7b")[0]
    demo.settings.recent_files = [str(other)]
    paint_layers(demo, range(0, 2))
    demo._fill_recent_menu()
    recent = demo.recent_menu.actions()[0]
    answer = PromptAnswer(QMessageBox.StandardButton.Cancel)
    recent.trigger()
    answer.stop()
    assert answer.texts
    assert demo.current_model is not None and demo.current_model.path != other


def test_quitting_asks_and_cancel_keeps_the_window_open(demo: MainWindow) -> None:
    paint_layers(demo, range(3, 5))
    answer = PromptAnswer(QMessageBox.StandardButton.Cancel)
    demo.quit_action.trigger()
    answer.stop()
    assert answer.texts, "no prompt before quitting with edits"
    assert demo.isVisible() and demo.current_plan is not None and demo.current_plan.can_undo()

    answer = PromptAnswer(QMessageBox.StandardButton.Discard)
    demo.quit_action.trigger()
    answer.stop()
    assert not demo.isVisible()


def test_save_exports_then_goes_on_and_an_unedited_plan_never_asks(demo: MainWindow, qtbot: QtBot,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtWidgets import QFileDialog

    target = tmp_path / "kept.tensor-types.txt"
    # The native save dialog cannot be driven offscreen: answer it with a path.
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    paint_layers(demo, range(0, 1))
    answer = PromptAnswer(QMessageBox.StandardButton.Save)
    demo.quit_action.trigger()
    answer.stop()
    assert answer.texts and target.exists()
    assert "=iq2_s" in target.read_text()
    assert not demo.isVisible()


def test_exported_edits_do_not_ask_again(demo: MainWindow, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtWidgets import QFileDialog

    target = tmp_path / "done.txt"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    paint_layers(demo, range(0, 1))
    assert demo.has_unsaved_edits()
    assert demo.export_tensor_type_file()
    assert not demo.has_unsaved_edits()
    paint_layers(demo, range(1, 2))  # a new edit after the export is unsaved again
    assert demo.has_unsaved_edits()
