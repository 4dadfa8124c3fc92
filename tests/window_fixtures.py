"""The real window with its panels (Hardware & tiers, Run, Results) on the bundled demo, for
tests that drive several tabs; import the fixture into a test module to use it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_prompts import close_window

from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.settings import load_settings
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.window.main_window import MainWindow
from apex_gui.views.window.panels import InstalledPanels, install_panels


@pytest.fixture
def demo_with_panels(qtbot, tmp_path: Path) -> Iterator[tuple[MainWindow, InstalledPanels]]:  # type: ignore[no-untyped-def]
    """(window, panels) on the demo model, 1200x800, hardware not probed; closed without the
    keep-edits prompt."""
    store = RunStore(tmp_path / "window-runs.sqlite")
    window = MainWindow(load_settings(), probe_hardware=False)
    panels = install_panels(window, store=store, queue=JobQueue(store=store),
                            probe_hardware=False)
    window.resize(1200, 800)
    window.show()
    qtbot.waitExposed(window)
    with qtbot.waitSignal(window.modelLoadFinished, timeout=20_000):
        window.open_demo()
    yield window, panels
    close_window(window)
    store.close()
