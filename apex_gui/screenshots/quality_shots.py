"""Screenshots of the quality features on a model with measured sensitivity: the overlay,
the Results curve, and the fit dialog with its plan.

``python -m apex_gui.screenshots.quality_shots MODEL SENSITIVITY.json OUT_DIR`` (offscreen works);
``apex-studio --screenshot DIR`` adds them when ``APEX_SCREENSHOT_QUALITY_MODEL`` names a
model with its table beside it (``MODEL.sensitivity.json``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from apex_gui.core.quality.sensitivity import SensitivityTable
from apex_gui.core.units import format_size
from apex_gui.screenshots.event_loop import settle, wait

QUALITY_VIEWS = ("sensitivity-overlay", "results-curve", "fit-dialog", "fit-result")


def take_quality_screenshots(model_path: Path, table_path: Path, out_dir: Path,
                             budget_profile: str = "compact") -> list[Path]:
    """Render the quality views to ``out_dir`` (a scratch data folder keeps history apart).

    The fit dialog asks for the size of ``budget_profile``'s plan: the optimizer's plan in
    the editor is then the same bytes spent another way."""
    # start-up: app.py imports this driver before its preflight has checked Qt
    from PySide6.QtWidgets import QApplication

    # start-up: the views import Qt
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels

    scratch = Path(tempfile.mkdtemp(prefix="apex-quality-shots-"))
    os.environ.setdefault("APEX_STUDIO_DATA_DIR", str(scratch / "data"))
    os.environ.setdefault("APEX_STUDIO_CONFIG_DIR", str(scratch / "config"))
    app = QApplication.instance() or QApplication(sys.argv[:1])
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def shoot(name: str, widget) -> None:  # type: ignore[no-untyped-def]
        settle(300)
        path = out_dir / f"{name}.png"
        widget.grab().save(str(path))
        written.append(path)

    table = SensitivityTable.load(table_path)
    window = MainWindow(probe_hardware=False)
    panels = install_panels(window, probe_hardware=False)
    window.resize(1500, 940)
    window.show()
    window.open_model_file(model_path)
    wait(window.modelLoadFinished)
    settle(300)
    panels.hardware.manual_edit.setText("8 GB")
    wait(panels.hardware.recommendationChanged, 30_000)
    state = window.quality_state
    state.set_table(table)
    state.overlay_action.setChecked(True)
    window.heatmap.zoom_to_fit()
    shoot("sensitivity-overlay", window)

    window.center_tabs.setCurrentWidget(panels.results)
    panels.results.plots.setCurrentWidget(panels.results.kld_plot)
    for _ in range(100):  # the curve is computed in the worker pool
        if getattr(panels.results.kld_plot, "curve_points", None):
            break
        settle(100)
    shoot("results-curve", window)
    window.center_tabs.setCurrentIndex(0)

    plan = window.current_plan
    assert plan is not None

    budget = plan_from_profile(plan.model, get_profile(budget_profile)).total_bytes()
    dialog = window.open_fit_dialog()
    dialog.size_edit.setText(format_size(budget))
    shoot("fit-dialog", dialog)
    dialog.run_fit()
    wait(dialog.fitted, 60_000)
    shoot("fit-result", window)

    window.allow_dropping_edits() if hasattr(window, "allow_dropping_edits") else None
    while plan.can_undo():
        plan.undo()
    window.close()
    settle(50)
    del app
    return written


if __name__ == "__main__":
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    for shot in take_quality_screenshots(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])):
        print(shot)
