"""The real window, driven offscreen: open, paint, undo, profiles, diff, errors, dialogs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_prompts import close_window
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent, QKeySequence, QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox
from pytestqt.qtbot import QtBot

from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile, user_profiles_dir
from apex_gui.core.settings import load_settings
from apex_gui.views import style
from apex_gui.views.window.main_window import MainWindow

pytestmark = pytest.mark.gui

OPEN_TIMEOUT_MS = 10_000


@pytest.fixture
def window(qtbot: QtBot) -> Iterator[MainWindow]:
    main = MainWindow(load_settings(), probe_hardware=False)
    main.resize(1400, 900)
    main.show()
    qtbot.waitExposed(main)
    yield main
    close_window(main)  # answers the "Keep your changes?" prompt of tests that painted


@pytest.fixture
def demo(window: MainWindow, qtbot: QtBot) -> MainWindow:
    with qtbot.waitSignal(window.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        window.open_demo()
    return window


def _mouse(widget, kind: QEvent.Type, pos: QPoint, buttons: Qt.MouseButton,  # type: ignore[no-untyped-def]
           modifiers: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
    button = Qt.MouseButton.LeftButton if kind != QEvent.Type.MouseMove else Qt.MouseButton.NoButton
    event = QMouseEvent(kind, QPointF(pos), QPointF(widget.mapToGlobal(pos)), button, buttons, modifiers)
    QApplication.sendEvent(widget, event)


def drag(widget, points: list[QPoint],  # type: ignore[no-untyped-def]
         modifiers: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
    """Press at the first point, move through the rest with the button held, release."""
    left = Qt.MouseButton.LeftButton
    _mouse(widget, QEvent.Type.MouseButtonPress, points[0], left, modifiers)
    for point in points[1:]:
        _mouse(widget, QEvent.Type.MouseMove, point, left, modifiers)
    _mouse(widget, QEvent.Type.MouseButtonRelease, points[-1], Qt.MouseButton.NoButton, modifiers)


def centre(window: MainWindow, cell: tuple[int | None, str]) -> QPoint:
    rect = window.heatmap.cell_rect(cell)
    assert rect is not None, f"no cell {cell}"
    return rect.center()


def size_label_bytes(window: MainWindow) -> int:
    return int(window.plan_panel.bytes_label.text().split()[0].replace(",", ""))


# --- opening -------------------------------------------------------------------------------

def test_demo_opens_with_plan_numbers_from_the_core(demo: MainWindow) -> None:
    plan = demo.current_plan
    assert plan is not None and demo.current_model is plan.model
    assert plan.profile is not None and plan.profile.key == "quality"
    assert size_label_bytes(demo) == plan.total_bytes()
    assert demo.plan_panel.bpw_label.text() == f"{plan.bits_per_weight():.3f}"
    roles = {demo.plan_panel.role_table.item(r, 0).text() for r in range(demo.plan_panel.role_table.rowCount())}
    assert {"routed expert", "shared expert", "attention"} <= roles
    assert "APEX trained demo" in demo.model_info.toPlainText()
    # Every layer and kind has its cell where the geometry says.
    geometry = demo.heatmap.geometry_model
    assert len(geometry.rows) == plan.model.block_count and geometry.kinds == plan.model.kinds


def test_400b_twin_opens_off_the_gui_thread(window: MainWindow, qtbot: QtBot,
                                          tmp_path: Path) -> None:
    # How fast (and how smoothly) is benchmarks/bench_window_open.py's to measure: timing
    # thresholds failed here on a loaded 2-core machine. This checks the behaviour: the
    # file is read off the GUI thread, whose event loop keeps turning while it is read.
    twin = write_shape_twin(tmp_path / "trinity.gguf", "trinity-large-399b")[0]
    ticks: list[float] = []
    heartbeat = QTimer()
    heartbeat.setInterval(5)
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
    heartbeat.start()
    with qtbot.waitSignal(window.modelLoadFinished, timeout=30_000):
        window.open_model_file(twin)
        opened_from = len(ticks)
    window.heatmap.viewport().repaint()  # the heatmap is on screen, not only computed
    heartbeat.stop()
    assert window.current_model is not None and window.current_model.total_params > 390e9
    assert window.current_plan is not None
    assert len(ticks) > opened_from, "the event loop did not turn while the model was read"


def test_bad_file_shows_an_error_that_names_the_file(window: MainWindow, qtbot: QtBot,
                                                     tmp_path: Path) -> None:
    broken = tmp_path / "broken-model.gguf"
    broken.write_bytes(b"this is not a gguf file at all" * 10)
    with qtbot.waitSignal(window.errorShown, timeout=OPEN_TIMEOUT_MS) as blocker:
        window.open_model_file(broken)
    title, message = blocker.args
    assert "broken-model.gguf" in title and "broken-model.gguf" in message
    assert "Traceback" not in message
    box = window.findChild(QMessageBox, "errorBox")
    assert box is not None and box.isVisible() and box.text() == message
    box.close()
    assert window.current_model is None

    with qtbot.waitSignal(window.errorShown, timeout=OPEN_TIMEOUT_MS) as blocker:
        window.open_model_file(tmp_path / "missing.gguf")
    assert "missing.gguf" in blocker.args[1] and "no such file" in blocker.args[1]


def test_drop_of_a_gguf_opens_it_and_remembers_it(window: MainWindow, qtbot: QtBot,
                                                  tiny_qwen3moe: Path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tiny_qwen3moe))])
    event = QDropEvent(QPointF(200, 200), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        window.dropEvent(event)
    assert window.current_model is not None and window.current_model.path == tiny_qwen3moe
    assert load_settings().recent_files == [str(tiny_qwen3moe)]
    window._fill_recent_menu()
    assert any(tiny_qwen3moe.name in a.text() for a in window.recent_menu.actions())


# --- editing -------------------------------------------------------------------------------

def test_painting_cells_updates_the_size_at_once_and_undoes_as_one_step(demo: MainWindow) -> None:
    plan = demo.current_plan
    assert plan is not None
    demo.plan_panel.palette_widget.button("IQ2_S").click()
    assert demo.heatmap.brush_type == "IQ2_S"
    cells = [(7, "ffn_gate_exps"), (7, "ffn_up_exps"), (7, "ffn_down_exps")]
    before = plan.total_bytes()
    started = time.perf_counter()
    drag(demo.heatmap.viewport(), [centre(demo, c) for c in cells])
    latency = time.perf_counter() - started
    assert [plan.cell_type(*c) for c in cells] == ["IQ2_S"] * 3
    assert plan.total_bytes() < before
    assert size_label_bytes(demo) == plan.total_bytes()
    assert latency < 0.05, f"edit to label took {latency * 1000:.1f} ms"
    print(f"\nedit to size label: {latency * 1000:.1f} ms")
    QTest.qWait(1)  # title and undo state follow on the next event-loop turn
    assert demo.windowTitle().startswith("*")
    assert demo.undo_action.isEnabled()
    problems = demo.plan_panel.problems_summary.text()
    assert "need an imatrix" in problems  # IQ2_S without an importance matrix

    demo.undo_action.trigger()  # one stroke, one undo step
    QTest.qWait(1)
    profile_plan = plan_from_profile(plan.model, get_profile("quality"))
    assert [plan.cell_type(*c) for c in cells] == [profile_plan.cell_type(*c) for c in cells]
    assert size_label_bytes(demo) == before == plan.total_bytes()
    demo.redo_action.trigger()
    assert plan.cell_type(7, "ffn_down_exps") == "IQ2_S"
    assert size_label_bytes(demo) == plan.total_bytes()


def test_undo_redo_shortcuts(demo: MainWindow, qtbot: QtBot) -> None:
    plan = demo.current_plan
    assert plan is not None
    assert demo.undo_action.shortcut() == QKeySequence(QKeySequence.StandardKey.Undo)
    assert {s.toString() for s in demo.redo_action.shortcuts()} == {"Ctrl+Shift+Z", "Ctrl+Y"}
    original = plan.cell_type(2, "attn_q")
    plan.set_cells([(2, "attn_q")], "Q8_0")
    QTest.qWait(1)
    demo.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is demo, timeout=2000)
    demo.heatmap.setFocus()
    QTest.keyClick(demo.heatmap, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert plan.cell_type(2, "attn_q") == original
    QTest.qWait(1)
    QTest.keyClick(demo.heatmap, Qt.Key.Key_Z,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert plan.cell_type(2, "attn_q") == "Q8_0"
    QTest.qWait(1)
    QTest.keyClick(demo.heatmap, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    QTest.qWait(1)
    QTest.keyClick(demo.heatmap, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    assert plan.cell_type(2, "attn_q") == "Q8_0"
    assert size_label_bytes(demo) == plan.total_bytes()


def test_row_column_band_and_rectangle_selections_set_types(demo: MainWindow) -> None:
    plan = demo.current_plan
    assert plan is not None
    heatmap = demo.heatmap
    viewport = heatmap.viewport()
    demo.plan_panel.palette_widget.button("Q8_0").click()

    # Row header click selects the layer; Enter applies the palette type.
    row_rect = heatmap.cell_rect((4, plan.model.kinds[0]))
    assert row_rect is not None
    QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     QPoint(20, row_rect.center().y()))
    assert set(heatmap.selection()) == set(plan.row_cells(4))
    assert demo.plan_panel.apply_button.text() == f"Set {len(plan.row_cells(4))} selected cell(s) to Q8_0"
    QTest.keyClick(heatmap, Qt.Key.Key_Return)
    assert all(plan.cell_type(*c) == "Q8_0" for c in plan.row_cells(4) if plan.cell_editable(*c))
    assert plan.cell_type(4, "ffn_gate_inp") == plan.model.tensor("blk.4.ffn_gate_inp.weight").type_name

    # Column header click selects every layer of one kind.
    column_rect = heatmap.cell_rect((0, "attn_k"))
    assert column_rect is not None
    QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     QPoint(column_rect.center().x(), 38))
    assert set(heatmap.selection()) == set(plan.column_cells("attn_k"))

    # Alt+click: the band of the profile the cell sits in (routed experts, near-edge).
    QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.AltModifier,
                     centre(demo, (5, "ffn_up_exps")))
    profile = plan.profile
    assert profile is not None
    expected = set(plan.band_cells("routed_experts", 1))
    assert set(heatmap.selection()) == expected and (5, "ffn_up_exps") in expected

    # Shift+drag: a rectangle.
    drag(viewport, [centre(demo, (1, "ffn_gate_shexp")), centre(demo, (3, "ffn_down_shexp"))],
         Qt.KeyboardModifier.ShiftModifier)
    rectangle = set(plan.rectangle_cells([1, 2, 3], ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]))
    assert set(heatmap.selection()) == rectangle
    demo.plan_panel.palette_widget.button("Q4_K").click()
    demo.plan_panel.apply_button.click()
    assert all(plan.cell_type(*c) == "Q4_K" for c in rectangle)
    assert size_label_bytes(demo) == plan.total_bytes()

    demo.reset_action.trigger()  # back to the profile, undoably
    fresh = plan_from_profile(plan.model, profile)
    assert plan.diff(fresh) == {} and size_label_bytes(demo) == fresh.total_bytes()
    QTest.qWait(1)
    demo.undo_action.trigger()
    assert all(plan.cell_type(*c) == "Q4_K" for c in rectangle)


def test_tooltip_names_tensor_shape_types_bytes_and_fallback(window: MainWindow, qtbot: QtBot,
                                                             fallback_model: Path) -> None:
    with qtbot.waitSignal(window.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        window.open_model_file(fallback_model)
    plan = window.current_plan
    assert plan is not None
    tensor = next(t for t in plan.model.tensors if t.kind == "ffn_down_exps")
    assert tensor.row_length % 256  # the model exists to make K-quants fall back
    cell = (tensor.layer, tensor.kind)
    plan.set_cells([cell], "Q6_K")
    state = window.heatmap.cell_state(cell)
    assert state is not None and state.falls_back and state.effective == "Q8_0"
    text = window.heatmap.tooltip_text(cell)
    assert tensor.name in text and " x ".join(map(str, tensor.shape)) in text
    assert "planned: <b>Q6_K</b>" in text and "effective: <b>Q8_0</b>" in text
    assert f"{plan.cell_bytes(*cell):,} bytes" in text and "bits per weight" in text
    router = window.heatmap.tooltip_text((tensor.layer, "ffn_gate_inp"))
    assert "never quantizes routers" in router
    assert "fallback" in window.plan_panel.problems_summary.text()


# --- profiles and diff ---------------------------------------------------------------------

def test_switching_profile_replaces_the_plan(demo: MainWindow, qtbot: QtBot) -> None:
    combo = demo.plan_panel.profile_combo
    keys = [combo.itemData(i) for i in range(combo.count())]
    assert keys[:4] == ["quality", "i-quality", "balanced", "i-balanced"]
    with qtbot.waitSignal(demo.planChanged) as blocker:
        combo.setCurrentIndex(keys.index("compact"))
        combo.activated.emit(keys.index("compact"))
    plan = demo.current_plan
    assert plan is blocker.args[0] and plan is not None
    assert plan.profile is not None and plan.profile.key == "compact"
    assert size_label_bytes(demo) == plan.total_bytes()
    assert "0 bytes" in demo.plan_panel.change_label.text()


def test_diff_mode_outlines_cells_that_differ_from_a_profile(demo: MainWindow) -> None:
    plan = demo.current_plan
    assert plan is not None
    plan.set_cells([(6, "attn_q")], "Q2_K")
    demo.set_diff("profile:quality")
    assert demo.diff_action.isChecked()
    assert demo.heatmap.differing_cells() == [(6, "attn_q")]
    assert "1 tensors" in demo.plan_panel.diff_label.text()
    plan.set_cells([(7, "attn_q")], "Q2_K")  # diff follows edits
    assert sorted(demo.heatmap.differing_cells()) == [(6, "attn_q"), (7, "attn_q")]
    assert "2 tensors" in demo.plan_panel.diff_label.text()
    demo.diff_action.trigger()
    assert demo.heatmap.reference is None and demo.heatmap.differing_cells() == []


def test_quantized_file_shows_stored_types_detected_profile_and_differences(
        window: MainWindow, qtbot: QtBot, tmp_path: Path) -> None:
    source = write_shape_twin(tmp_path / "src.gguf", "qwen3-30b-a3b")[0]
    compact = plan_from_profile(open_model(source), get_profile("compact"))
    types = {name: compact.effective_type(name) for name in compact.types}
    types["blk.20.ffn_down_exps.weight"] = "Q6_K"
    quant = write_shape_twin(tmp_path / "custom-compact.gguf", "qwen3-30b-a3b", tensor_types=types)[0]
    with qtbot.waitSignal(window.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        window.open_model_file(quant)
    plan = window.current_plan
    assert plan is not None and plan.profile is None and "as stored" in plan.origin
    assert plan.cell_type(20, "ffn_down_exps") == "Q6_K"
    assert "Compact" in window.plan_panel.detected_label.text()
    assert window.plan_panel.profile_combo.currentData() == "stored"
    assert window.heatmap.differing_cells() == [(20, "ffn_down_exps")]
    assert "Detected profile" in window.model_info.toPlainText()


def test_compare_with_a_second_gguf(window: MainWindow, qtbot: QtBot, tmp_path: Path) -> None:
    source = write_shape_twin(tmp_path / "qwen3-bf16.gguf", "qwen3-30b-a3b")[0]
    mini = plan_from_profile(open_model(source), get_profile("mini"))
    other = write_shape_twin(tmp_path / "qwen3-mini.gguf", "qwen3-30b-a3b",
                             tensor_types={n: mini.effective_type(n) for n in mini.types})[0]
    with qtbot.waitSignal(window.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        window.open_model_file(source)
    window.switch_profile("mini")
    plan = window.current_plan
    assert plan is not None
    plan.set_cells([(3, "attn_q")], "Q8_0")
    window.compare_with_file(other)
    qtbot.waitUntil(lambda: window.reference_plan is not None, timeout=OPEN_TIMEOUT_MS)
    assert window.heatmap.reference_label == "qwen3-mini.gguf"
    assert window.heatmap.differing_cells() == [(3, "attn_q")]

    unrelated = write_shape_twin(tmp_path / "olmoe.gguf", "olmoe-1b-7b")[0]
    with qtbot.waitSignal(window.errorShown, timeout=OPEN_TIMEOUT_MS) as blocker:
        window.compare_with_file(unrelated)
    assert "olmoe.gguf" in blocker.args[1] and "not the same model" in blocker.args[1]


def test_save_as_my_profile_reproduces_the_plan(demo: MainWindow) -> None:
    plan = demo.current_plan
    assert plan is not None
    plan.set_cells(plan.row_cells(6), "Q8_0")
    path = demo.save_profile_named("My mix")
    assert path is not None and path.parent == user_profiles_dir() and path.exists()
    combo = demo.plan_panel.profile_combo
    assert "my-mix" in [combo.itemData(i) for i in range(combo.count())]
    again = plan_from_profile(plan.model, get_profile("my-mix"))
    assert again.diff(plan) == {}


# --- panels, dialogs, settings -------------------------------------------------------------

def test_other_panels_can_join_and_follow_the_user(demo: MainWindow, qtbot: QtBot) -> None:
    seen: list[object] = []
    demo.planChanged.connect(seen.append)
    demo.add_panel("Hardware & tiers", QLabel("hardware"), "right")
    demo.add_panel("Run", QLabel("run"), "bottom")
    demo.add_panel("Results", QLabel("results"), "center")
    assert [demo.right_tabs.tabText(i) for i in range(demo.right_tabs.count())] == ["Plan", "Memory", "Hardware & tiers"]
    assert demo.bottom_tabs.tabText(1) == "Run" and demo.center_tabs.tabText(demo.center_tabs.count() - 1) == "Results"
    with pytest.raises(ValueError, match="unknown panel area"):
        demo.add_panel("Nowhere", QLabel(), "left-ish")
    plan = demo.current_plan
    assert plan is not None
    plan.set_cells([(0, "attn_v")], "Q4_K")
    assert seen == [plan]


def test_hugging_face_dialog_says_no_network_at_once(window: MainWindow, qtbot: QtBot,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from apex_gui.core.hub import download as hub

    # A closed port on loopback: a machine without network, whatever this one has.
    monkeypatch.setattr(hub, "endpoint", lambda: "https://127.0.0.1:9")
    started = time.perf_counter()
    dialog = window.show_download_dialog()
    qtbot.waitUntil(lambda: dialog.network_ok is False, timeout=4000)
    assert time.perf_counter() - started < 4.0
    assert "No network" in dialog.status_label.text()
    assert not dialog.list_button.isEnabled() and not dialog.download_button.isEnabled()
    dialog.reject()
    assert not dialog.isVisible()


def test_settings_dialog_checks_tools_and_saves(demo: MainWindow, qtbot: QtBot) -> None:
    dialog = demo.show_settings()
    with qtbot.waitSignal(dialog.toolsChecked, timeout=15_000) as blocker:
        dialog.check_tools()
    assert "llama-quantize" in blocker.args[0]
    assert "token" in dialog.token_label.text()
    dialog.threads_spin.setValue(3)
    dialog.theme_combo.setCurrentIndex(dialog.theme_combo.findData("dark"))
    try:
        dialog.accept()
        saved = load_settings()
        assert saved.threads == 3 and saved.theme == "dark"
        assert style.is_dark(QApplication.instance().palette())  # type: ignore[union-attr]
    finally:
        style.apply_theme(QApplication.instance(), "light")  # type: ignore[arg-type]


def test_window_geometry_is_remembered(qtbot: QtBot) -> None:
    first = MainWindow(load_settings(), probe_hardware=False)
    qtbot.addWidget(first)
    first.show()
    first.resize(761, 523)  # above the minimum width, inside the 800x800 offscreen screen
    qtbot.wait(10)
    first.close()
    second = MainWindow(load_settings(), probe_hardware=False)
    qtbot.addWidget(second)
    assert (second.width(), second.height()) == (761, 523)
    second.close()


def test_screenshot_mode_renders_pngs(tmp_path: Path) -> None:
    from apex_gui.app import main

    from apex_gui.core.settings import config_dir, data_dir

    assert main(["--screenshot", str(tmp_path), "--only", "main-demo", "--only", "settings"]) == 0
    for name in ("main-demo.png", "settings.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    # The screenshot session keeps its geometry, settings and runs out of the user's folders.
    assert not (config_dir() / "window.ini").exists()
    assert not any(data_dir().iterdir())
