"""Tiers ranked by quality: the lowest KL divergence among the tiers that fit comfortably."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry
from apex_gui.core.fit.device_spec import parse_device_spec
from apex_gui.core.fit.quality_rank import PUBLISHED_KLD, measured_figures, published_figures
from apex_gui.core.fit.recommend import profile_candidates, recommend
from apex_gui.core.fit.placement import MachineMemory
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.plan.precision import is_quantizable
from apex_gui.core.plan.profiles import builtin_profiles
from apex_gui.core.quality.figures import quality_figures
from apex_gui.core.quality.sensitivity import SensitivityTable, tensor_kind
from apex_gui.core.report.results import Measure, QuantResult

CTX = ContextSettings(n_ctx=8192)
RAM = 4 * 10**12


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    folder = tmp_path_factory.mktemp("rank")
    return open_model(write_shape_twin(folder / "Qwen3.5-35B-A3B.gguf", "qwen3.5-35b-a3b")[0])


def _rec(model: ModelInfo, gpus: str, keys: tuple[str, ...], quality=None):
    candidates = profile_candidates(model, [builtin_profiles()[k] for k in keys])
    machine = MachineMemory(tuple(parse_device_spec(gpus)), RAM)
    return recommend(ModelGeometry.from_model(model), candidates, machine, CTX, quality=quality)


def test_32_gb_card_gets_balanced_by_its_published_kl(qwen35: ModelInfo) -> None:
    rec = _rec(qwen35, "RTX 5090 32GB", ("quality", "balanced", "compact", "mini"))
    fits = {r.candidate.key: r for r in rec.results}
    assert fits["quality"].headroom.value == fits["balanced"].headroom.value == "comfortable"
    assert rec.recommended is fits["balanced"]
    assert rec.quality_basis == "published"
    assert "Balanced 0.0088" in rec.quality_note and "Quality 0.0114" in rec.quality_note
    assert "Qwen3.5-35B-A3B" in rec.quality_note


def test_a_tight_fit_is_kept_against_a_worse_comfortable_one(qwen35: ModelInfo) -> None:
    # 24 GB: Quality fits with little room (the old pick), Compact comfortably but with a
    # four times higher KL mean: Quality stays.
    rec = _rec(qwen35, "RTX 4090 24GB", ("quality", "balanced", "compact", "mini"))
    assert rec.recommended is not None and rec.recommended.candidate.key == "quality"
    assert PUBLISHED_KLD["compact"] > PUBLISHED_KLD["quality"]


def test_i_variants_are_ranked_only_with_an_imatrix() -> None:
    assert "i-balanced" not in published_figures(["i-balanced", "balanced"])
    assert published_figures(["i-balanced"], with_imatrix=True)["i-balanced"].kld == 0.0078


def test_measured_figures_outrank_published_ones(qwen35: ModelInfo) -> None:
    rows = [QuantResult("APEX Quality", "apex", "/q/Quality.gguf", "quality",
                        kld_mean=Measure(0.0030, 0.0001)),
            QuantResult("APEX Balanced", "apex", "/q/Balanced.gguf", "balanced",
                        kld_mean=Measure(0.0041, 0.0001))]
    figures = {**published_figures(["compact", "mini"]), **measured_figures(rows)}
    rec = _rec(qwen35, "RTX 5090 32GB", ("quality", "balanced", "compact", "mini"), figures)
    assert rec.recommended is not None and rec.recommended.candidate.key == "quality"
    assert rec.quality_basis == "measured"
    assert "measured KL mean of Quality.gguf" in rec.quality_note


def _table(model: ModelInfo, error: dict[str, float]) -> SensitivityTable:
    names = [t.name for t in model.tensors if is_quantizable(t.name, t.shape)]
    return SensitivityTable(
        model=str(model.path), fingerprint="test", imatrix=None, candidates=tuple(error),
        source_types={n: model.tensor(n).type_name for n in names},
        errors={n: dict(error) for n in names}, kind_scale={})


def test_predicted_figures_from_sensitivity_decide(qwen35: ModelInfo, tmp_path: Path) -> None:
    # A model whose Q5_K is (made) far worse than IQ4_XS: Balanced, mostly Q5_K, is
    # predicted worse than Quality, whatever the cards say.
    table = _table(qwen35, {"Q8_0": 0.1, "Q6_K": 0.2, "Q5_K": 50.0, "IQ4_XS": 0.5,
                            "Q4_K": 0.6, "Q3_K": 1.0, "Q2_K": 2.0})
    table.kind_scale = {tensor_kind(n): 1e-6 for n in table.errors}
    figures = quality_figures(qwen35, ["quality", "balanced"], table=table)
    assert {f.basis for f in figures.values()} == {"predicted"}
    assert figures["quality"].kld < figures["balanced"].kld
    rec = _rec(qwen35, "RTX 5090 32GB", ("quality", "balanced"), figures)
    assert rec.recommended is not None and rec.recommended.candidate.key == "quality"
    assert rec.quality_basis == "predicted"


def test_cli_recommend_says_which_figure_it_ranked_by(qwen35: ModelInfo,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from apex_gui.cli import main as run_cli

    assert run_cli(["recommend", str(qwen35.path), "--gpu", "RTX 5090 32GB",
                    "--ram", "64GB"]) == 0
    text = capsys.readouterr().out
    assert "Recommended: Balanced" in text
    assert "Ranked by published KL divergence: Balanced 0.0088" in text
    assert "0.0114 (published)" in text  # the table's KL column


@pytest.mark.gui
def test_hardware_panel_ranks_and_offers_the_best_plan(qtbot, tmp_path: Path) -> None:
    """The tier table shows each tier's KL figure, the recommendation says which figure it
    used, and with sensitivities known a "Best plan for this set-up" row applies the
    optimizer's plan."""
    from apex_gui.core.fixtures.synthetic import DEMO_SPEC, write_synthetic_model
    from apex_gui.views.hardware.hardware_panel import BEST_PLAN_LABEL, COLUMNS, HardwarePanel
    from quality_tables import synthetic_table

    model = open_model(write_synthetic_model(tmp_path / "demo.gguf", DEMO_SPEC))
    machine_text = "RTX 4090 24GB"  # the demo (tens of MB) fits comfortably
    panel = HardwarePanel(model, snapshot=None, auto_probe=False, manual_devices=machine_text)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.recommendationChanged, timeout=20_000,
                          check_params_cb=lambda rec: rec is not None):
        panel.show()
    rec = panel.recommendation
    # The published figures are Qwen3.5-35B-A3B's, not this model's: nothing to rank by yet.
    assert rec.recommended.candidate.key == "quality" and not rec.quality
    assert "No KL divergence is known for this model" in panel.summary.text()
    kl_column = COLUMNS.index("KL mean")
    row = panel.recommended_row()
    assert panel.table.item(row, kl_column).text() == "--"
    assert panel.best_plan_row() is None  # no sensitivity measured yet

    table = synthetic_table(model)
    with qtbot.waitSignal(panel.recommendationChanged, timeout=20_000,
                          check_params_cb=lambda rec: rec is not None):
        panel.set_sensitivity(table)
    rec = panel.recommendation
    assert rec.quality_basis == "predicted"
    best_row = panel.best_plan_row()
    assert best_row == len(rec.results)
    assert panel.table.item(best_row, 0).text() == BEST_PLAN_LABEL
    predicted = panel.best_plan.predicted_kld
    assert panel.table.item(best_row, kl_column).text() == f"{predicted:.4g} (predicted)"
    # The best plan for a set-up the whole model fits: never worse than any tier predicted.
    assert all(predicted <= f.kld + 1e-12 for f in rec.quality.values())
    panel.table.selectRow(best_row)
    with qtbot.waitSignal(panel.bestPlanRequested, timeout=2000) as applied:
        panel.apply_button.click()
    assert applied.args[0] is panel.best_plan.plan
    panel.shutdown()
