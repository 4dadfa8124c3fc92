"""The budget optimizer on known sensitivities: optimal on small cases, exact bytes, never
over budget, IQ types only with an imatrix, fallbacks and kept tensors respected."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.types import FTYPE_DEFAULT_TYPE, IMATRIX_REQUIRED, TYPES, effective_type
from apex_gui.core.plan.precision import is_quantizable
from apex_gui.core.plan.tensor_type_file import plan_from_tensor_type_file
from apex_gui.core.quality import optimizer
from apex_gui.core.quality.optimizer import BudgetTooSmall, Option, optimize, solve
from apex_gui.core.quality.sensitivity import (DEFAULT_CANDIDATES, SensitivityTable, model_fingerprint,
                                               read_imatrix, tensor_kind, weighted_errors)


def brute_force(items: list[list[Option]], capacity: int) -> float:
    best = float("inf")
    for combo in itertools.product(*[range(len(it)) for it in items]):
        if sum(it[c].nbytes for it, c in zip(items, combo)) <= capacity:
            best = min(best, sum(it[c].damage for it, c in zip(items, combo)))
    return best


@pytest.mark.parametrize("seed", range(60))
def test_solver_finds_the_brute_force_optimum(seed: int) -> None:
    rng = random.Random(seed)
    items = [[Option(f"T{j}", rng.randint(1, 60), rng.random()) for j in range(rng.randint(1, 4))]
             for _ in range(rng.randint(2, 6))]
    low = sum(min(o.nbytes for o in it) for it in items)
    high = sum(max(o.nbytes for o in it) for it in items)
    capacity = rng.randint(low, high)
    picks = solve(items, capacity)
    assert sum(it[p].nbytes for it, p in zip(items, picks)) <= capacity
    assert sum(it[p].damage for it, p in zip(items, picks)) == pytest.approx(
        brute_force(items, capacity), abs=1e-12)


def test_heuristic_alone_stays_within_budget_and_near_optimum(monkeypatch) -> None:
    """Without the exact pass (as on big models) sweep + repair stays within 2% of the optimum
    on quant-like ladders of 40 tensors: damage falling ~4x per bit, sizes that differ."""
    bits = (2.625, 3.4375, 4.5, 5.5, 6.5625, 8.5)
    worst = 0.0
    for seed in range(10):
        rng = random.Random(seed)
        items = []
        for _ in range(40):
            size, weight = rng.choice((64, 128, 512)), rng.uniform(0.1, 10)
            items.append([Option(f"{b}", int(size * b), weight * 4.0 ** -b) for b in bits])
        capacity = rng.randint(sum(it[0].nbytes for it in items), sum(it[-1].nbytes for it in items))
        monkeypatch.setattr(optimizer, "EXACT_MAX_ITEMS", 0)
        picks = solve(items, capacity)
        assert sum(it[p].nbytes for it, p in zip(items, picks)) <= capacity
        found = sum(it[p].damage for it, p in zip(items, picks))
        monkeypatch.setattr(optimizer, "EXACT_STATE_LIMIT", 10**6)
        exact = optimizer._exact(items, [optimizer._pareto(i) for i in items], capacity,
                                 float("inf"))
        assert exact is not None
        best = sum(it[p].damage for it, p in zip(items, exact))
        assert found >= best - 1e-15
        worst = max(worst, (found - best) / best)
    assert worst < 0.02


def test_solver_refuses_a_budget_below_the_smallest_choice() -> None:
    with pytest.raises(BudgetTooSmall, match="more than the budget"):
        solve([[Option("A", 10, 1.0)], [Option("B", 10, 1.0)]], 19)


def synthetic_table(model_path: Path, *, iq_cheap: bool = False,
                    candidates: tuple[str, ...] = DEFAULT_CANDIDATES + ("IQ2_XXS",)) -> SensitivityTable:
    """Known damages: error falls 4x per bit, attention 10x more sensitive than experts."""
    model = open_model(model_path)
    names = [t.name for t in model.tensors if is_quantizable(t.name, t.shape)]
    errors: dict[str, dict[str, float]] = {}
    for name in names:
        tensor = model.tensor(name)
        errors[name] = {}
        for candidate in candidates:
            actual = effective_type(candidate, tensor.row_length)
            bits = TYPES[actual].bits_per_weight
            value = tensor.n_elements * 4.0 ** (-bits)
            if iq_cheap and actual in IMATRIX_REQUIRED:
                value = 0.0  # the best possible choice, if it were allowed
            errors[name][actual] = value
    scales = {tensor_kind(n): (1e-3 if "attn" in n else 1e-4) for n in names}
    return SensitivityTable(model=str(model_path), fingerprint=model_fingerprint(model),
                            imatrix=None,
                            candidates=candidates,
                            source_types={n: model.tensor(n).type_name for n in names},
                            errors=errors, kind_scale=scales)


def test_budget_is_never_exceeded_and_bytes_are_exact(tiny_qwen2moe: Path) -> None:
    model = open_model(tiny_qwen2moe)
    table = synthetic_table(tiny_qwen2moe)
    smallest = optimizer.smallest_plan_bytes(model, table)
    previous = float("inf")
    for budget in np.linspace(smallest, model.file_size * 1.1, 12).astype(int):
        result = optimize(model, table, int(budget))
        plan = result.plan
        assert plan.total_bytes() <= budget
        # The plan's size model is exact; what the optimizer summed must agree with it.
        assert result.predicted_kld == pytest.approx(table.predict_kld(plan))
        assert result.predicted_kld <= previous + 1e-15  # more bytes never hurt
        # An F16 file type would make llama-quantize copy every tensor, pins ignored.
        assert TYPES[FTYPE_DEFAULT_TYPE[plan.base_type]].quantized
        previous = result.predicted_kld
        assert set(result.reasons) == set(plan.pinned_types()) | {"token_embd.weight", "output.weight"}
    with pytest.raises(BudgetTooSmall, match="too small"):
        optimize(model, table, smallest - 1)


def test_iq_types_only_with_an_imatrix(tiny_qwen2moe: Path, tmp_path: Path) -> None:
    model = open_model(tiny_qwen2moe)
    table = synthetic_table(tiny_qwen2moe, iq_cheap=True)
    budget = int(model.file_size * 0.4)
    without = optimize(model, table, budget)
    assert not [n for n in without.reasons if without.plan.effective_type(n) in IMATRIX_REQUIRED]
    assert not without.plan.needs_imatrix()
    imatrix = tmp_path / "fake.imatrix"
    imatrix.write_bytes(b"\0" * 16)
    with_imatrix = optimize(model, table, budget, imatrix=str(imatrix))
    assert any(with_imatrix.plan.effective_type(n) == "IQ2_XXS" for n in with_imatrix.reasons)
    assert with_imatrix.plan.total_bytes() <= budget


def test_row_length_fallbacks_and_kept_tensors(fallback_model: Path) -> None:
    model = open_model(fallback_model)
    table = synthetic_table(fallback_model)
    result = optimize(model, table, int(model.file_size * 0.35),
                      keep=lambda name: name.endswith("attn_output.weight"))
    plan = result.plan
    assert not [p for p in plan.problems(have_imatrix=False) if p.kind == "fallback"]
    down = [n for n in result.reasons if n.endswith("ffn_down_exps.weight")]
    assert down and all(plan.planned_type(n) in ("Q4_0", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "F16")
                        for n in down)
    for name in result.reasons:
        if name.endswith("attn_output.weight"):
            assert plan.planned_type(name) == model.tensor(name).type_name


def test_optimizer_shifts_bytes_to_the_sensitive_role(tiny_qwen2moe: Path) -> None:
    model = open_model(tiny_qwen2moe)
    table = synthetic_table(tiny_qwen2moe)
    plan = optimize(model, table, int(model.file_size * 0.4)).plan
    bits = {n: TYPES[plan.effective_type(n)].bits_per_weight for n in plan.pinned_types()}
    attention = np.mean([b for n, b in bits.items() if "attn" in n])
    experts = np.mean([b for n, b in bits.items() if "_exps" in n])
    assert attention > experts


def test_deterministic_on_the_400b_twin(tmp_path: Path) -> None:
    from apex_gui.core.fixtures.twins import write_shape_twin

    path = write_shape_twin(tmp_path / "trinity.gguf", "trinity-large-399b")[0]
    model = open_model(path)
    table = synthetic_table(path, candidates=DEFAULT_CANDIDATES)
    first = optimize(model, table, 200 * 10**9)
    second = optimize(model, table, 200 * 10**9)
    assert first.plan.types == second.plan.types
    assert first.plan.total_bytes() <= 200 * 10**9
    assert first.plan.total_bytes() > 199 * 10**9  # the budget is spent, not left on the table


def test_cli_optimize_writes_an_importable_plan(tiny_qwen2moe: Path, tmp_path: Path) -> None:
    table = synthetic_table(tiny_qwen2moe)
    sensitivity = table.save(tmp_path / "s.json")
    out = tmp_path / "plan.txt"
    budget = int(open_model(tiny_qwen2moe).file_size * 0.5)
    run = subprocess.run(
        [sys.executable, "-m", "apex_gui.cli", "optimize", str(tiny_qwen2moe), "--budget",
         f"{budget / 1e6}MB", "--sensitivity", str(sensitivity), "-o", str(out), "--json"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["bytes"] <= budget and data["predicted_kld"] > 0 and data["base_type"]
    assert data["prediction_basis"] == table.calibration_basis()
    model = open_model(tiny_qwen2moe)
    imported = plan_from_tensor_type_file(model, out, data["base_type"])
    assert imported.total_bytes() == data["bytes"]
    for name in (t.name for t in model.tensors if is_quantizable(t.name, t.shape)):
        assert f"^{name.replace('.', chr(92) + '.')}$=" in out.read_text()


def test_a_prediction_says_which_text_and_context_it_holds_for(tiny_qwen2moe: Path) -> None:
    """Mean KLD depends on the text and the context: a table's predictions name both."""
    table = synthetic_table(tiny_qwen2moe)
    table.settings = {"text": "sensitivity-probe-ecd70c9d593ffa39.txt", "context": 512}
    assert table.calibration_basis() == ("for text like the bundled mix of chat, code, "
                                         "reasoning and tool calls at a context of 512 tokens")
    table.settings = {"text": "python-docs.txt", "context": 128}
    assert table.calibration_basis() == "for text like python-docs.txt at a context of 128 tokens"
    table.settings = {}
    assert table.calibration_basis() == "for text like the probe text"


def test_cli_optimize_needs_one_target(tiny_qwen2moe: Path, tmp_path: Path) -> None:
    sensitivity = synthetic_table(tiny_qwen2moe).save(tmp_path / "s.json")
    run = subprocess.run([sys.executable, "-m", "apex_gui.cli", "optimize", str(tiny_qwen2moe),
                          "--sensitivity", str(sensitivity)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "--budget" in run.stderr


def test_weighted_errors_read_back_per_expert(tmp_path: Path) -> None:
    """Error of a Q8_0 copy written with gguf's own quantizer, weighted per expert."""
    import gguf
    from gguf.quants import dequantize, quantize

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((8, 64), dtype=np.float32)
    experts = rng.standard_normal((3, 8, 64), dtype=np.float32)
    for path, quantized in ((tmp_path / "src.gguf", False), (tmp_path / "q.gguf", True)):
        writer = gguf.GGUFWriter(path, "llama")
        for name, values in (("a.weight", dense), ("blk.0.ffn_up_exps.weight", experts)):
            if quantized:
                writer.add_tensor(name, quantize(values, gguf.GGMLQuantizationType.Q8_0),
                                  raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(name, values.astype(np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    weights = {"blk.0.ffn_up_exps.weight": np.stack([np.full(64, 1.0), np.full(64, 0.0),
                                                     np.arange(64, dtype=np.float32)])}
    found = weighted_errors(tmp_path / "src.gguf", tmp_path / "q.gguf",
                            ["a.weight", "blk.0.ffn_up_exps.weight"], weights)
    q_dense = dequantize(quantize(dense, gguf.GGMLQuantizationType.Q8_0),
                         gguf.GGMLQuantizationType.Q8_0)
    src16 = dense.astype(np.float16).astype(np.float32)
    assert found["a.weight"] == pytest.approx(float(np.square(src16 - q_dense).sum()), rel=1e-5)
    expected = 0.0
    for e in range(3):
        q = dequantize(quantize(experts[e], gguf.GGMLQuantizationType.Q8_0),
                       gguf.GGMLQuantizationType.Q8_0)
        diff = np.square(experts[e].astype(np.float16).astype(np.float32) - q)
        expected += float(diff.sum(0) @ weights["blk.0.ffn_up_exps.weight"][e])
    assert found["blk.0.ffn_up_exps.weight"] == pytest.approx(expected, rel=1e-5)


def test_legacy_imatrix_is_read_per_call(tmp_path: Path) -> None:
    import struct

    path = tmp_path / "legacy.dat"
    name = b"blk.0.attn_q.weight"
    values = np.array([2.0, 4.0, 6.0], dtype=np.float32)
    path.write_bytes(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name
                     + struct.pack("<ii", 2, 3) + values.tobytes() + struct.pack("<i", 10))
    assert read_imatrix(path)["blk.0.attn_q.weight"].tolist() == [[1.0, 2.0, 3.0]]


def test_cli_optimize_for_a_gpu_uses_the_memory_model(tiny_qwen2moe: Path, tmp_path: Path) -> None:
    sensitivity = synthetic_table(tiny_qwen2moe).save(tmp_path / "s.json")
    found = {}
    for vram in ("0.008GB", "0.009GB"):
        run = subprocess.run(
            [sys.executable, "-m", "apex_gui.cli", "optimize", str(tiny_qwen2moe),
             "--sensitivity", str(sensitivity), "--vram", vram, "--ram", "1GB", "--ctx", "256",
             "--margin", "0", "--json"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        data = json.loads(run.stdout)
        assert data["fit"]["verdict"] == "full GPU offload"
        found[vram] = data
    # More memory buys a bigger plan and less predicted damage; the KV cache and buffers
    # leave less than the whole card to the weights.
    assert found["0.008GB"]["bytes"] < found["0.009GB"]["bytes"] < 9_000_000
    assert found["0.009GB"]["predicted_kld"] < found["0.008GB"]["predicted_kld"]
