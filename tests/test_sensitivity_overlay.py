"""The sensitivity overlay through the real window: toggle, colours, legend, hover, and the
predicted KLD beside the exact size following every edit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from quality_tables import synthetic_table

from apex_gui.views.plan.budget_dialog import kld_text
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.quality.known import beside_model
from apex_gui.core.quality.overlay import cell_damage, cell_options, steps
from apex_gui.qt.job_queue import JobQueue

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, tmp_path: Path, tiny_qwen2moe: Path, llama_tools):
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels

    model_path = tmp_path / "tiny.gguf"
    shutil.copyfile(tiny_qwen2moe, model_path)
    synthetic_table(open_model(model_path)).save(beside_model(model_path))
    store = RunStore(tmp_path / "store" / "runs.sqlite")
    window = MainWindow(probe_hardware=False)
    qtbot.addWidget(window)
    install_panels(window, store=store, queue=JobQueue(llama_tools, store),
                   probe_hardware=False)
    window.resize(1400, 900)
    window.show()
    with qtbot.waitSignal(window.quality_state.tableChanged, timeout=20_000,
                          check_params_cb=lambda table: table is not None):
        window.open_model_file(model_path)
    yield window
    while window.current_plan is not None and window.current_plan.can_undo():
        window.current_plan.undo()
    window.close()
    store.close()


def test_core_steps_cost_bytes_up_and_save_them_down(tmp_path: Path, tiny_qwen2moe: Path) -> None:
    from apex_gui.core.plan.precision import plan_from_profile
    from apex_gui.core.plan.profiles import get_profile

    model = open_model(tiny_qwen2moe)
    table = synthetic_table(model)
    plan = plan_from_profile(model, get_profile("compact"))
    cell = next(c for c in plan.cells() if c[1] == "ffn_down_exps")
    options = cell_options(table, plan, cell)
    assert [o.nbytes for o in options] == sorted(o.nbytes for o in options)
    up, down = steps(table, plan, cell)
    assert up is not None and up.bytes_delta > 0 and up.damage_delta < 0
    assert down is not None and down.bytes_delta < 0 and down.damage_delta > 0
    now = cell_damage(table, plan, cell)
    assert now == pytest.approx(sum(table.damage(n, plan.effective_type(n))
                                    for n in plan.cell_tensors(*cell)))


def test_overlay_colours_cells_by_damage_and_follows_painting(qtbot, window) -> None:
    from apex_gui.views.heatmap.sensitivity_overlay import damage_colour

    state = window.quality_state
    heatmap = window.heatmap
    plan = window.current_plan
    table = state.table
    assert state.overlay_action.isEnabled()
    assert state.kld_label.text() == kld_text(table.predict_kld(plan), 3)

    state.overlay_action.trigger()
    overlay = heatmap.overlay
    assert overlay is not None and overlay.plan is plan
    assert state.legend.isVisible() and "predicted KLD" in state.legend.caption()

    cell = (0, "ffn_down_exps")
    before = overlay.colour(cell)
    # What the viewport shows is the overlay's colour (a corner, away from the label).
    rect = heatmap.cell_rect(cell)
    heatmap.ensure_visible(cell)
    rect = heatmap.cell_rect(cell)
    image = heatmap.viewport().grab().toImage()
    pixel = image.pixelColor(rect.left() + 2, rect.top() + 2)
    assert pixel.name() == before.name()

    tip = heatmap.tooltip_text(cell)
    assert "predicted KLD of this cell" in tip and "by type: " in tip
    assert "one step up" in tip and "one step down" in tip

    # Painting the cell lower: more damage (a darker colour), the KLD label follows.
    value_before = overlay.value(cell)
    plan.set_cells([cell], "Q2_K", "paint")
    assert overlay.value(cell) > value_before
    after = overlay.colour(cell)
    assert after.lightnessF() < before.lightnessF()
    assert after.name() == damage_colour(overlay.scale.position(overlay.value(cell))).name()
    assert state.kld_label.text() == kld_text(table.predict_kld(plan), 3)
    qtbot.waitUntil(window.undo_action.isEnabled, timeout=5000)
    window.undo_action.trigger()
    assert state.kld_label.text() == kld_text(table.predict_kld(plan), 3)

    # Damage per byte, then off again: back to bits per weight.
    state.per_byte_action.trigger()
    assert heatmap.overlay.mode == "damage per byte"
    assert "per byte" in state.legend.caption()
    state.overlay_action.trigger()
    assert heatmap.overlay is None and not state.legend.isVisible()
    assert "predicted KLD of this cell" not in heatmap.tooltip_text(cell)


def test_results_plot_the_optimizer_curve_beside_the_tiers(qtbot, window) -> None:
    """KL vs size in the Results view: the optimizer's plans (predicted) beside the fixed
    tiers predicted from the same table; at a tier's size the optimizer is never worse."""
    from apex_gui.views.results.results_panel import ResultsPanel

    results = window.findChild(ResultsPanel)
    plot = results.kld_plot
    qtbot.waitUntil(lambda: bool(getattr(plot, "curve_points", [])), timeout=30_000)
    curve, tiers = plot.curve_points, plot.tier_points
    assert len(curve) >= 5 and tiers
    sizes = [p.nbytes for p in curve]
    assert sizes == sorted(sizes)
    klds = [p.predicted_kld for p in curve]
    assert all(a >= b - 1e-15 for a, b in zip(klds, klds[1:]))  # more bytes, less damage
    table = window.quality_state.table
    from apex_gui.core.quality.optimizer import optimize

    for tier in tiers:
        best = optimize(window.current_model, table, tier.nbytes)
        assert best.predicted_kld <= tier.predicted_kld + 1e-15, tier.label


def test_tier_labels_that_would_overlap_are_one_label() -> None:
    """Micro, Nano and Mini of the demo lie within 0.1 MB and 0.002 KLD of each other: their
    three labels were printed over one another."""
    from apex_gui.views.results.quality_curve import label_groups

    points = [(3.12, 0.0101, "Mini"), (3.07, 0.0114, "Micro"), (3.09, 0.0108, "Nano"),
              (3.76, 0.0045, "Compact"), (5.15, 0.0009, "Quality = Balanced")]
    placed = label_groups(points, x_span=3.0, y_span=0.026)
    assert (3.07, 0.0114, "Micro, Nano, Mini") in placed  # at the highest of the three
    assert (3.76, 0.0045, "Compact") in placed and len(placed) == 3
    # Far apart, each keeps its own label.
    assert len(label_groups(points, x_span=3.0, y_span=0.0001)) == 5
