"""After Fit to budget the plan is the optimizer's, and every place says so: the plan panel,
the Run tab's list, the window title, the exported command's file and the Run tab's output
names; a hand edit on top reads "edited", and undoing the fit gives the profile back
(issue 22, #2: the panel still said Profile "Quality", Export proposed ...-APEX-Quality.gguf)."""

from __future__ import annotations

from pathlib import Path

import pytest
from window_fixtures import demo_with_panels  # noqa: F401 - a fixture

from apex_gui.core.plan.profiles import get_profile
from apex_gui.views.plan.budget_dialog import kld_text
from apex_gui.views.plan.export_dialog import ExportedDialog
from apex_gui.views.run.run_panel import CURRENT_PLAN_KEY

pytestmark = pytest.mark.gui


def assert_not_clipped(qtbot, label) -> None:  # type: ignore[no-untyped-def]
    """A word-wrapped label gets the height its text needs once the layout has run: after a
    shorter note, a longer one kept the shorter height and was cut at the top and the bottom."""
    qtbot.waitUntil(lambda: label.isVisible()
                    and label.height() == label.heightForWidth(label.width()), timeout=3000)


def run_list(panels) -> list[str]:  # type: ignore[no-untyped-def]
    profiles = panels.run.profile_list
    return [profiles.item(i).text() for i in range(profiles.count())]


def test_the_optimizers_plan_is_named_so_everywhere(qtbot, demo_with_panels,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    window, panels = demo_with_panels
    window.resize(1440, 900)  # the default size, where the clipped note was seen
    panel = window.plan_panel
    quality = get_profile("quality")
    assert panel.profile_combo.currentText() == "Quality"

    dialog = window.open_fit_dialog()
    dialog.size_edit.setText("3.5MB")
    with qtbot.waitSignal(dialog.fitted, timeout=30_000) as fitted:
        dialog.fit_button.click()
    kld = kld_text(fitted.args[0].predicted_kld)
    name = f"Fit to 3.50 MB (KLD {kld})"
    plan = window.current_plan

    assert panel.profile_combo.currentText() == name
    note = panel.profile_note.text()
    assert "optimizer's plan" in note and kld in note and quality.description[:40] not in note
    assert_not_clipped(qtbot, panel.profile_note)
    assert f"Current plan ({name})" in run_list(panels)
    qtbot.waitUntil(lambda: name in window.windowTitle(), timeout=3000)  # a 0 ms timer
    assert "Quality" not in window.windowTitle()
    exported = ExportedDialog(plan, tmp_path / "plan.txt", window)
    assert "-APEX-Optimized-3.50MB.gguf" in exported.commands
    assert "APEX-Quality" not in exported.commands
    exported.deleteLater()
    panels.run.set_checked_profiles([CURRENT_PLAN_KEY])
    assert panels.run.request().labels == ("Optimized-3.50MB",)

    # Undone and redone: Quality's longer note is shown whole, then the optimizer's again.
    window.undo()
    assert panel.profile_combo.currentText() == "Quality"
    assert_not_clipped(qtbot, panel.profile_note)
    window.redo()
    assert panel.profile_combo.currentText() == name
    assert_not_clipped(qtbot, panel.profile_note)

    # A hand edit on top of the optimizer's plan is an edit of that plan.
    window.heatmap.select_row(1)
    assert window.heatmap.apply_to_selection("Q2_K")
    assert f"Current plan ({name}, edited)" in run_list(panels)
    assert plan.output_label() == "Optimized-3.50MB-edited"
    assert panel.profile_combo.currentText() == name

    # Undoing both: Quality again, by name and by description.
    window.undo()
    window.undo()
    assert not plan.can_undo()
    assert panel.profile_combo.currentText() == "Quality"
    assert panel.profile_note.text().startswith(quality.description.rstrip(".")[:40])
    assert_not_clipped(qtbot, panel.profile_note)
    assert not any(text.startswith("Current plan") for text in run_list(panels))
    assert plan.output_label() == "Quality" and plan.profile_key == "quality"
