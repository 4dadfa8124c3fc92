"""Layout at small sizes: "Fit all layers" shows all of a 60-layer model, the mixer column
survives zooming out, the window never exceeds the screen, a 1024x700 window keeps map
columns and the run table's Progress and ETA, the detected profile leads the Model panel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_prompts import close_window
from PySide6.QtGui import QColor
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.settings import load_settings
from apex_gui.views.heatmap.heatmap_geometry import MIXER_TAGS, ROW_HEADER_WIDTH
from apex_gui.views.window.main_window import MainWindow

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot: QtBot) -> Iterator[MainWindow]:
    main = MainWindow(load_settings(), probe_hardware=False)
    main.show()
    qtbot.waitExposed(main)
    yield main
    close_window(main)


@pytest.fixture(scope="module")
def trinity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trinity")
    return write_shape_twin(folder / "Trinity-Large-BF16.gguf", "trinity-large-399b")[0]


def open_file(qtbot: QtBot, window: MainWindow, path: Path) -> None:
    with qtbot.waitSignal(window.modelLoadFinished, timeout=15_000):
        window.open_model_file(path)
    QTest.qWait(5)


def test_a_new_window_fits_the_screen(window: MainWindow) -> None:
    available = window.screen().availableGeometry()
    assert window.width() <= available.width() and window.height() <= available.height()


def test_fit_all_layers_shows_every_layer_of_a_60_layer_model(window: MainWindow, qtbot: QtBot,
                                                              trinity: Path) -> None:
    window.resize(780, 700)
    open_file(qtbot, window, trinity)
    model = window.current_model
    assert model is not None and model.n_layer == 60
    window.zoom_fit_action.trigger()
    QTest.qWait(5)
    heatmap = window.heatmap
    viewport = heatmap.viewport().rect()
    first, last = heatmap.cell_rect((0, "attn_q")), heatmap.cell_rect((59, "attn_q"))
    assert first is not None and last is not None
    assert first.top() >= 0 and last.bottom() <= viewport.bottom(), (
        f"layer 59 at {last.bottom()} below the viewport's {viewport.bottom()}")


def test_the_mixer_column_survives_zooming_out(window: MainWindow, qtbot: QtBot,
                                               trinity: Path) -> None:
    window.resize(780, 700)
    open_file(qtbot, window, trinity)
    heatmap = window.heatmap
    for _ in range(8):
        window.zoom_out_action.trigger()
    QTest.qWait(5)
    rect = heatmap.cell_rect((0, "attn_q"))
    assert rect is not None and rect.height() < 10
    layer = window.current_model.layers[0]  # type: ignore[union-attr]
    colour = QColor(MIXER_TAGS[layer.mixer][1])
    image = heatmap.viewport().grab().toImage()
    ratio = image.devicePixelRatio()
    pixel = QColor(image.pixel(int(56 * ratio), int(rect.center().y() * ratio)))
    assert 56 < ROW_HEADER_WIDTH
    assert sum(abs(a - b) for a, b in zip(pixel.getRgb()[:3], colour.getRgb()[:3])) < 40, (
        f"no mixer mark at small zoom: {pixel.name()} vs {colour.name()}")


def test_detected_profile_comes_first_in_the_model_panel(window: MainWindow, qtbot: QtBot,
                                                        tmp_path: Path) -> None:
    from apex_gui.core.gguf.model import open_model
    from apex_gui.core.plan.precision import plan_from_profile
    from apex_gui.core.plan.profiles import get_profile

    source = write_shape_twin(tmp_path / "olmoe-bf16.gguf", "olmoe-1b-7b")[0]
    plan = plan_from_profile(open_model(source), get_profile("compact"))
    quant = write_shape_twin(tmp_path / "olmoe-compact.gguf", "olmoe-1b-7b",
                             tensor_types={n: plan.effective_type(n) for n in plan.types})[0]
    open_file(qtbot, window, quant)
    text = window.model_info.toPlainText()
    assert "Detected profile" in text
    assert text.index("Detected profile") < text.index("Architecture")


def test_a_1024x700_window_keeps_map_columns_and_the_run_tables_progress_and_eta(
        qtbot: QtBot, tmp_path: Path) -> None:
    from apex_gui.core.jobs.run_store import RunStore
    from apex_gui.qt.job_queue import JobQueue
    from apex_gui.views.window.panels import install_panels

    store = RunStore(tmp_path / "runs.sqlite")
    main = MainWindow(load_settings(), probe_hardware=False)
    panels = install_panels(main, store=store, queue=JobQueue(store=store), probe_hardware=False)
    main.show()
    qtbot.waitExposed(main)
    try:
        main.resize(1024, 700)
        with qtbot.waitSignal(main.modelLoadFinished, timeout=15_000):
            main.open_demo()
        QTest.qWait(20)
        assert main.width() == 1024, f"the window cannot be 1024 wide: minimum {main.minimumSizeHint()}"
        # 2x scaling on a 1080p screen leaves 960x540 logical pixels: the window must fit.
        assert main.minimumSizeHint().width() <= 960 and main.minimumSizeHint().height() <= 540, (
            f"minimum {main.minimumSizeHint()} does not fit 960x540")
        heatmap = main.heatmap
        kinds = heatmap._geometry.kinds
        shown = [k for k in kinds if (r := heatmap.cell_rect((0, k))) is not None
                 and r.right() <= heatmap.viewport().width()]
        assert len(shown) >= 8, f"only {len(shown)} of {len(kinds)} map columns show"
        main.center_tabs.setCurrentWidget(panels.run)
        QTest.qWait(20)
        table = panels.run.table
        for column in (2, 3):  # Progress, ETA
            right = table.columnViewportPosition(column) + table.columnWidth(column)
            assert right <= table.viewport().width(), f"column {column} is cut off at 1024x700"
    finally:
        close_window(main)
        store.close()
