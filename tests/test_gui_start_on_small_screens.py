"""The Run tab's Start button and every toolbar action are on screen at 1440x900, at
1024x700 and at 2x scaling on a 1080p screen (960x540 logical), without scrolling or
dragging a splitter (issue 22, #1: Start appeared only after scrolling sideways, and at
1024 wide Export and Fit to budget hid behind the toolbar's ">>")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_prompts import close_window
from PySide6.QtCore import QPoint, QRect
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QScrollArea

from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.settings import load_settings
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.window.main_window import MainWindow
from apex_gui.views.window.panels import InstalledPanels, install_panels

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, tmp_path: Path) -> Iterator[tuple[MainWindow, InstalledPanels]]:  # type: ignore[no-untyped-def]
    store = RunStore(tmp_path / "runs.sqlite")
    main = MainWindow(load_settings(), probe_hardware=False)
    panels = install_panels(main, store=store, queue=JobQueue(store=store),
                            probe_hardware=False)
    main.show()
    qtbot.waitExposed(main)
    with qtbot.waitSignal(main.modelLoadFinished, timeout=20_000):
        main.open_demo()
    yield main, panels
    close_window(main)
    store.close()


def wholly_visible(widget, window: MainWindow) -> bool:  # type: ignore[no-untyped-def]
    """Not clipped by a scroll area, a splitter or the window's edge."""
    if widget.visibleRegion().boundingRect() != widget.rect():
        return False
    return window.rect().contains(QRect(widget.mapTo(window, QPoint(0, 0)), widget.size()))


@pytest.mark.parametrize("size", [(1440, 900), (1024, 700), (960, 540)],
                         ids=["1440x900", "1024x700", "2x-on-1080p"])
def test_start_and_every_toolbar_action_are_on_screen(
        window: tuple[MainWindow, InstalledPanels], size: tuple[int, int]) -> None:
    main, panels = window
    main.resize(*size)
    main.center_tabs.setCurrentWidget(panels.run)
    QTest.qWait(20)
    assert main.size().toTuple() == size
    start = panels.run.start_button
    assert start.isEnabled() and wholly_visible(start, main), (
        f"Start at {start.mapTo(main, QPoint(0, 0))} is cut at {size}")
    # The choices pane scrolls down when it must, never sideways: nothing is cut on the right.
    choices = panels.run.findChild(QScrollArea)
    assert not choices.horizontalScrollBar().isVisible()
    toolbar = main.main_toolbar
    hidden = [action.text() for action in toolbar.actions()
              if not action.isSeparator() and not toolbar.widgetForAction(action).isVisible()]
    assert not hidden, f"behind the toolbar's >> at {size}: {hidden}"
    for action in (main.export_action, main.fit_to_budget_action):
        assert wholly_visible(toolbar.widgetForAction(action), main)


@pytest.mark.parametrize("size", [(1024, 700), (960, 540)], ids=["1024x700", "2x-on-1080p"])
def test_hardware_and_tiers_scrolls_instead_of_drawing_over_itself(
        window: tuple[MainWindow, InstalledPanels], size: tuple[int, int]) -> None:
    main, panels = window
    main.resize(*size)
    main.center_tabs.setCurrentWidget(panels.hardware)
    QTest.qWait(20)
    hardware = panels.hardware
    for part in (hardware.bars_box, hardware.rpc_box, hardware.table):
        assert part.height() >= part.minimumSizeHint().height(), (
            f"{part.objectName() or type(part).__name__} squeezed to {part.height()} px "
            f"at {size}")


def test_results_keep_a_readable_plot_and_a_one_line_summary_at_2x(
        window: tuple[MainWindow, InstalledPanels]) -> None:
    main, panels = window
    main.resize(960, 540)
    main.center_tabs.setCurrentWidget(panels.results)
    QTest.qWait(20)
    results = panels.results
    assert results.plots.height() >= 180
    lines = results.summary.height() / results.summary.fontMetrics().lineSpacing()
    assert lines < 2.5, f"the summary takes {lines:.1f} lines beside the buttons"
