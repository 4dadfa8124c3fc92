"""Keyboard editing of the map (pick a type, press Enter; arrow-key cursor) and diff mode
defaults (the plan's own profile) with outlines that a selection never hides."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from gui_prompts import close_window

from apex_gui.core.settings import load_settings
from apex_gui.views import style
from apex_gui.views.window.main_window import MainWindow

pytestmark = pytest.mark.gui


@pytest.fixture
def demo(qtbot: QtBot) -> Iterator[MainWindow]:
    main = MainWindow(load_settings(), probe_hardware=False)
    main.resize(1200, 800)
    main.show()
    qtbot.waitExposed(main)
    main.activateWindow()
    with qtbot.waitSignal(main.modelLoadFinished, timeout=10_000):
        main.open_demo()
    QTest.qWait(5)
    yield main
    close_window(main)


def test_pick_a_type_and_press_enter_sets_the_selection(demo: MainWindow) -> None:
    plan = demo.current_plan
    assert plan is not None
    demo.heatmap.setFocus()
    cells = [(5, "ffn_gate_exps"), (5, "ffn_up_exps")]
    demo.heatmap.set_selection(cells)
    button = demo.plan_panel.palette_widget.button("Q2_K")
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)  # the user's click on the palette
    focused = demo.focusWidget()
    assert focused is demo.heatmap, f"the palette kept the keyboard: {focused!r}"
    QTest.keyClick(focused, Qt.Key.Key_Return)
    assert [plan.cell_type(*c) for c in cells] == ["Q2_K", "Q2_K"]


def test_arrow_keys_move_a_cell_cursor_and_shift_extends(demo: MainWindow) -> None:
    heatmap = demo.heatmap
    heatmap.setFocus()
    heatmap.set_selection([(3, "ffn_up_exps")])
    scroll_before = heatmap.verticalScrollBar().value()
    QTest.keyClick(heatmap, Qt.Key.Key_Down)
    assert heatmap.selection() == [(4, "ffn_up_exps")]
    assert heatmap.verticalScrollBar().value() == scroll_before  # moved the cursor, not the view
    kinds = heatmap._geometry.kinds
    right = kinds[kinds.index("ffn_up_exps") + 1]
    QTest.keyClick(heatmap, Qt.Key.Key_Right, Qt.KeyboardModifier.ShiftModifier)
    assert set(heatmap.selection()) == {(4, "ffn_up_exps"), (4, right)}
    QTest.keyClick(heatmap, Qt.Key.Key_Up)
    assert heatmap.selection() == [(3, right)] and heatmap.cursor_cell() == (3, right)
    for _ in range(40):  # the cursor stops at the first layer instead of leaving the map
        QTest.keyClick(heatmap, Qt.Key.Key_Up)
    assert heatmap.selection() == [(0, right)]
    demo.plan_panel.palette_widget.button("Q3_K").click()
    QTest.keyClick(demo.focusWidget(), Qt.Key.Key_Enter)
    assert demo.current_plan is not None and demo.current_plan.cell_type(0, right) == "Q3_K"


def test_diff_mode_compares_with_the_plans_own_profile(demo: MainWindow) -> None:
    plan = demo.current_plan
    assert plan is not None and plan.profile is not None
    plan.set_cells([(2, "attn_v"), (9, "ffn_down_exps")], "Q2_K", "two edits")
    demo.diff_action.trigger()
    assert demo.heatmap.reference_label == f"profile {plan.profile.label}"
    assert sorted(demo.heatmap.differing_cells()) == [(2, "attn_v"), (9, "ffn_down_exps")]
    assert demo.plan_panel.diff_label.text().startswith("2 tensors")


def test_selection_does_not_hide_the_differs_outline(demo: MainWindow) -> None:
    plan = demo.current_plan
    assert plan is not None
    cell = (2, "attn_v")
    plan.set_cells([cell], "Q2_K", "edit")
    demo.diff_action.trigger()
    demo.heatmap.set_selection([cell])
    demo.heatmap.ensure_visible(cell)
    QTest.qWait(5)
    rect = demo.heatmap.cell_rect(cell)
    assert rect is not None
    image = demo.heatmap.viewport().grab().toImage()
    ratio = image.devicePixelRatio()
    marker = style.MARKER_DIFF

    def near_marker(y: int) -> bool:
        colour = QColor(image.pixel(int(rect.center().x() * ratio), int(y * ratio)))
        return sum(abs(a - b) for a, b in zip(colour.getRgb()[:3], marker.getRgb()[:3])) < 60

    # The outline runs along the cell's top edge, within its first few pixel rows.
    assert any(near_marker(rect.top() + dy) for dy in range(6)), "selection covers the diff outline"
