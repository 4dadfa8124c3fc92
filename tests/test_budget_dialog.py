"""Fit to budget through the real window: the optimizer's plan lands in the editor as one
undoable edit, for a size or for the Hardware & tiers set-up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from quality_tables import synthetic_table

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.quality.known import beside_model
from apex_gui.qt.job_queue import JobQueue

pytestmark = pytest.mark.gui


@pytest.fixture
def window_with_model(qtbot, tmp_path: Path, tiny_qwen2moe: Path, llama_tools):
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels

    model_path = tmp_path / "tiny.gguf"
    shutil.copyfile(tiny_qwen2moe, model_path)
    store = RunStore(tmp_path / "store" / "runs.sqlite")
    window = MainWindow(probe_hardware=False)
    qtbot.addWidget(window)
    panels = install_panels(window, store=store, queue=JobQueue(llama_tools, store),
                            probe_hardware=False)
    panels.hardware.set_manual_devices("RTX 4090")
    with qtbot.waitSignal(panels.hardware.recommendationChanged, timeout=20_000,
                          check_params_cb=lambda rec: rec is not None):
        window.open_model_file(model_path)
    yield window, panels, model_path
    while window.current_plan is not None and window.current_plan.can_undo():
        window.current_plan.undo()  # closing would ask about the edits (a modal box)
    window.close()
    store.close()


def test_fit_to_a_size_is_one_undoable_edit(qtbot, window_with_model) -> None:
    window, panels, model_path = window_with_model
    plan = window.current_plan
    before = dict(plan.types)
    action = window.fit_to_budget_action
    tools_menu = next(a.menu() for a in window.menuBar().actions()
                      if a.text().replace("&", "") == "Tools")
    assert action in tools_menu.actions()

    # No sensitivity measured yet: the dialog says what to run.
    action.trigger()
    dialog = window.fit_dialog
    with qtbot.waitSignal(dialog.failed, timeout=10_000):
        dialog.fit_button.click()
    assert "No sensitivity measured for tiny.gguf" in dialog.status.text()
    assert "Sensitivity" in dialog.status.text()
    dialog.reject()

    table = synthetic_table(open_model(model_path))
    table.save(beside_model(model_path))
    action.trigger()
    dialog = window.fit_dialog
    budget = int(plan.total_bytes() * 0.8)
    dialog.size_edit.setText(f"{budget}B")
    with qtbot.waitSignal(dialog.fitted, timeout=20_000) as fitted:
        dialog.fit_button.click()
    result = fitted.args[0]
    assert window.current_plan is plan  # the same plan, edited: the user keeps painting
    assert plan.total_bytes() <= budget
    assert plan.types != before
    assert table.predict_kld(plan) == pytest.approx(result.predicted_kld)
    assert not dialog.isVisible()
    assert "predicted KLD" in window.statusBar().currentMessage()
    # One step back returns to the plan before.
    qtbot.waitUntil(window.undo_action.isEnabled, timeout=5000)
    window.undo_action.trigger()
    assert plan.types == before


def test_fit_to_the_hardware_set_up(qtbot, window_with_model) -> None:
    from apex_gui.core.fit.context_memory import ModelGeometry
    from apex_gui.core.fit.recommend import evaluate
    from apex_gui.core.fit.placement import Candidate, Verdict

    window, panels, model_path = window_with_model
    synthetic_table(open_model(model_path)).save(beside_model(model_path))
    window.fit_to_budget_action.trigger()
    dialog = window.fit_dialog
    assert dialog.setup_radio.isEnabled()
    assert "RTX 4090" in dialog.setup_label.text()
    dialog.setup_radio.setChecked(True)
    with qtbot.waitSignal(dialog.fitted, timeout=30_000):
        dialog.fit_button.click()
    plan = window.current_plan
    hardware = panels.hardware
    fit = evaluate(ModelGeometry.from_model(plan.model),
                   Candidate("fit", "fit", plan.tensor_bytes_map(), plan.total_bytes(),
                             str(model_path)),
                   hardware.machine(), hardware.context_settings(),
                   margin=hardware.recommendation.margin)
    assert fit.verdict is Verdict.FULL_GPU
    # The tiny model fits a 24 GB card as it is stored: nothing is lost, nothing quantized.
    table = synthetic_table(plan.model)
    assert table.predict_kld(plan) == 0.0
    assert all(plan.effective_type(n) == plan.model.tensor(n).type_name for n in table.errors)
