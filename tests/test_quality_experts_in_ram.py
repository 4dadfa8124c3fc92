"""The optimizer with routed experts in system RAM: one budget for the GPUs, one for RAM."""

from __future__ import annotations

from pathlib import Path

import pytest
from quality_tables import synthetic_table

from apex_gui.core.gguf.model import open_model
from apex_gui.core.quality.optimizer import (BudgetTooSmall, optimize, optimize_experts_in_ram,
                                             routed_expert_names, split_bytes)


@pytest.fixture
def model_and_table(tiny_qwen2moe: Path):
    model = open_model(tiny_qwen2moe)
    return model, synthetic_table(model)


def test_each_part_stays_within_its_own_budget(model_and_table) -> None:
    model, table = model_and_table
    reference = optimize(model, table, 3_000_000)
    gpu_bytes, ram_bytes = split_bytes(reference.plan)
    for vram, ram in ((gpu_bytes, ram_bytes), (gpu_bytes + 200_000, ram_bytes // 2),
                      (gpu_bytes // 2 + 400_000, ram_bytes * 2)):
        result = optimize_experts_in_ram(model, table, vram, ram)
        on_gpu, in_ram = split_bytes(result.plan)
        assert on_gpu <= vram and in_ram <= ram, (vram, ram, on_gpu, in_ram)
        assert result.plan.total_bytes() == on_gpu + in_ram
        assert result.predicted_kld == pytest.approx(table.predict_kld(result.plan), rel=1e-9)


def test_two_budgets_never_do_worse_than_one_plan_that_meets_both(model_and_table) -> None:
    model, table = model_and_table
    single = optimize(model, table, 3_000_000)
    vram, ram = split_bytes(single.plan)
    split = optimize_experts_in_ram(model, table, vram, ram)
    # The single-budget plan is one of the plans meeting both budgets: the split optimum is
    # at least as good (the parts are independent knapsacks).
    assert split.predicted_kld <= single.predicted_kld * (1 + 1e-9)


def test_more_ram_only_improves_the_experts(model_and_table) -> None:
    model, table = model_and_table
    experts = routed_expert_names(model)
    small = optimize_experts_in_ram(model, table, 2_000_000, 600_000)
    large = optimize_experts_in_ram(model, table, 2_000_000, 2_400_000)
    assert large.predicted_kld <= small.predicted_kld
    for name in set(small.plan.types) - experts:  # the GPU part did not change
        assert small.plan.types[name] == large.plan.types[name]


def test_a_ram_budget_below_the_smallest_experts_is_refused(model_and_table) -> None:
    model, table = model_and_table
    with pytest.raises(BudgetTooSmall, match="routed experts .* need at least"):
        optimize_experts_in_ram(model, table, 10_000_000, 1_000)


def test_optimize_fits_a_small_gpu_with_the_experts_in_ram(tiny_qwen2moe: Path, tmp_path: Path,
                                                             capsys) -> None:
    import json

    from apex_gui.cli import main

    model = open_model(tiny_qwen2moe)
    table_path = tmp_path / "s.json"
    synthetic_table(model).save(table_path)
    code = main(["optimize", str(tiny_qwen2moe), "--sensitivity", str(table_path),
                 "--vram", "0.325GB", "--ram", "1GB", "--margin", "300", "--ctx", "512",
                 "--experts-in-ram", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(out)
    # Too little VRAM for the whole model, enough for all but the routed experts.
    assert data["fit"]["verdict"] == "routed experts in system RAM"
    assert "--n-cpu-moe" in data["fit"]["flags"]
    code = main(["optimize", str(tiny_qwen2moe), "--sensitivity", str(table_path),
                 "--budget", "3MB", "--experts-in-ram"])
    assert code == 2 and "--experts-in-ram goes with a fit target" in capsys.readouterr().err
