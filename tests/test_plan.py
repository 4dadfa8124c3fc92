"""Profiles and precision plans: documented types per band, exact sizes, real llama-quantize."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.types import UnknownTypeError
from apex_gui.core.jobs.baselines import baseline_plan, parse_dry_run
from apex_gui.core.jobs.quantize import quantize_argv
from apex_gui.core.jobs.tools import child_environment
from apex_gui.core.plan.detect import detect_profile
from apex_gui.core.plan.precision import (
    PrecisionPlan, is_quantizable, plan_from_gguf, plan_from_profile,
)
from apex_gui.core.plan.profiles import (
    ProfileError, builtin_profiles, get_profile, load_profile_file, save_user_profile,
    user_profiles,
)
from apex_gui.core.plan.tensor_type_file import plan_from_tensor_type_file

# The method's table (apex-method.md): experts edge/near/middle, shared edge/middle,
# attention edge/middle, token_embd, output.
DOCUMENTED = {
    "quality": (("Q6_K", "Q5_K", "IQ4_XS"), ("Q8_0", "Q8_0"), ("Q6_K", "Q6_K"), "Q6_K", "Q6_K"),
    "balanced": (("Q6_K", "Q5_K", "Q5_K"), ("Q8_0", "Q8_0"), ("Q6_K", "Q6_K"), "Q6_K", "Q6_K"),
    "compact": (("Q4_K", "Q3_K", "Q3_K"), ("Q6_K", "Q6_K"), ("Q4_K", "Q4_K"), "Q4_K", "Q6_K"),
    "mini": (("Q3_K", "Q3_K", "IQ2_S"), ("Q5_K", "Q4_K"), ("Q4_K", "Q3_K"), "Q3_K", "Q6_K"),
    "nano": (("Q3_K", "IQ2_S", "IQ2_XXS"), ("Q5_K", "Q4_K"), ("Q4_K", "Q3_K"), "Q3_K", "Q6_K"),
    "micro": (("Q3_K", "IQ2_XS", "IQ1_M"), ("Q5_K", "Q4_K"), ("Q4_K", "Q3_K"), "Q3_K", "Q6_K"),
}


def reference_band(layer: int, n_layer: int, group: str) -> int:
    """The reference generator's rules, written out independently of profiles.py."""
    if group == "routed":
        if layer <= 4 or layer >= n_layer - 5:
            return 0
        return 1 if layer <= 9 or layer >= n_layer - 10 else 2
    if group == "shared":
        return 0 if layer <= 4 or layer >= n_layer - 5 else 1
    return 0 if layer <= 2 or layer >= n_layer - 3 else 1


@pytest.fixture(scope="module")
def qwen35_twin(tmp_path_factory) -> Path:
    return write_shape_twin(tmp_path_factory.mktemp("twins") / "qwen35.gguf", "qwen3.5-35b-a3b")[0]


@pytest.fixture(scope="module")
def trinity_twin(tmp_path_factory) -> Path:
    return write_shape_twin(tmp_path_factory.mktemp("twins") / "trinity.gguf", "trinity-large-399b")[0]


def test_builtin_profiles_are_the_twelve_in_quality_order():
    keys = list(builtin_profiles())
    assert keys[:12] == ["quality", "i-quality", "balanced", "i-balanced", "compact", "i-compact",
                         "mini", "i-mini", "nano", "i-nano", "micro", "i-micro"]
    assert get_profile("I-Quality").uses_imatrix and not get_profile("quality").uses_imatrix
    with pytest.raises(ValueError, match="known: quality"):
        get_profile("ultra")


@pytest.mark.parametrize("key", list(DOCUMENTED))
@pytest.mark.parametrize("twin_name", ["qwen35_twin", "trinity_twin"])
def test_every_profile_gives_the_documented_type_per_role_and_band(key, twin_name, request):
    model = open_model(request.getfixturevalue(twin_name))
    experts, shared, attention, embedding, output = DOCUMENTED[key]
    for variant in (key, f"i-{key}"):
        plan = plan_from_profile(model, get_profile(variant))
        n_layer = model.n_layer
        checked = set()
        for tensor in model.tensors:
            if not is_quantizable(tensor.name, tensor.shape):
                assert plan.types[tensor.name] == tensor.type_name, tensor.name
                continue
            layer = tensor.layer
            mtp = layer is not None and layer >= n_layer
            position = 0 if mtp else layer  # the MTP block counts as one more edge layer
            if tensor.role is TensorRole.ROUTED_EXPERT:
                expected = experts[reference_band(position, n_layer, "routed")]
            elif tensor.role is TensorRole.SHARED_EXPERT:
                expected = shared[reference_band(position, n_layer, "shared")]
            elif tensor.role in (TensorRole.ATTENTION, TensorRole.LINEAR_ATTENTION,
                                 TensorRole.MTP):
                expected = attention[reference_band(position, n_layer, "attention")]
            elif tensor.role is TensorRole.DENSE_FFN:
                expected = shared[0]
            elif tensor.role is TensorRole.EMBEDDING:
                expected = embedding
            elif tensor.role is TensorRole.OUTPUT:
                expected = output
            else:
                expected = get_profile(variant).default_type
            assert plan.types[tensor.name] == expected, (variant, tensor.name)
            checked.add(tensor.role)
        assert TensorRole.ROUTED_EXPERT in checked and TensorRole.SHARED_EXPERT in checked


def test_mtp_block_and_never_quantized_tensors(qwen35_twin):
    model = open_model(qwen35_twin)
    assert model.n_mtp_layers == 1 and model.n_layer == 40
    plan = plan_from_profile(model, get_profile("quality"))
    mtp_experts = [t for t in model.tensors_in_layer(40) if t.role is TensorRole.ROUTED_EXPERT]
    assert mtp_experts and all(plan.types[t.name] == "Q6_K" for t in mtp_experts)
    routers = [t for t in model.tensors if t.role is TensorRole.ROUTER]
    assert routers and all(plan.types[t.name] == t.type_name for t in routers)
    assert all(not plan.cell_editable(t.layer, t.kind) for t in routers)
    conv = [t for t in model.tensors if t.kind == "ssm_conv1d"]
    assert conv and all(plan.types[t.name] == t.type_name for t in conv)


def test_lfm2_dense_leading_layers_and_short_conv_follow_the_rules(tmp_path):
    model = open_model(write_shape_twin(tmp_path / "lfm2.gguf", "lfm2.5-8b-a1b")[0])
    plan = plan_from_profile(model, get_profile("compact"))
    dense = [t for t in model.tensors if t.role is TensorRole.DENSE_FFN]
    assert dense and {t.layer for t in dense} == {0, 1}
    assert all(plan.types[t.name] == "Q6_K" for t in dense)  # edge shared-expert type
    conv = [t for t in model.tensors if t.kind in ("shortconv.in_proj", "shortconv.out_proj")]
    assert conv and all(plan.types[t.name] == "Q4_K" for t in conv)
    # no shared experts in this model: no shared cells, no junk entries
    assert not any(kind.endswith("_shexp") for kind in model.kinds)


def test_mla_attention_follows_attention_type(tmp_path):
    model = open_model(write_shape_twin(tmp_path / "m4.gguf", "mistral-small-4-119b")[0])
    plan = plan_from_profile(model, get_profile("mini"))
    mla = [t for t in model.tensors if t.kind in ("attn_q_a", "attn_q_b", "attn_kv_a_mqa",
                                                    "attn_kv_b", "attn_k_b", "attn_v_b")
           and is_quantizable(t.name, t.shape)]
    assert mla
    for tensor in mla:
        expected = "Q4_K" if tensor.layer <= 2 or tensor.layer >= model.n_layer - 3 else "Q3_K"
        assert plan.types[tensor.name] == expected, tensor.name


def test_edits_undo_redo_and_live_size(qwen35_twin):
    model = open_model(qwen35_twin)
    plan = plan_from_profile(model, get_profile("quality"))
    seen = []
    unsubscribe = plan.subscribe(seen.append)
    before = plan.total_bytes()
    cell = (20, "ffn_down_exps")
    tensor = plan.cell_tensors(*cell)[0]
    change = plan.set_cells([cell], "Q8_0")
    assert change is not None and seen[-1] is change
    expected_delta = (model.tensor(tensor).n_elements // 32 * 34
                      - model.tensor(tensor).n_elements // 256 * 136)
    assert plan.total_bytes() - before == expected_delta
    plan.set_cells(plan.row_cells(21), "Q4_K")
    plan.set_cells(plan.column_cells("ffn_up_exps"), "Q5_K")
    plan.set_cells(plan.rectangle_cells(range(10, 12), ["attn_qkv", "attn_gate"]), "Q8_0")
    plan.set_cells(plan.band_cells("routed_experts", 2), "IQ3_S")
    assert plan.cell_type(20, "ffn_down_exps") == "IQ3_S"
    for _ in range(5):
        assert plan.undo() is not None
    assert plan.undo() is None
    assert plan.total_bytes() == before
    assert plan.redo() is not None and plan.cell_type(*cell) == "Q8_0"
    unsubscribe()
    count = len(seen)
    plan.undo()
    assert len(seen) == count
    with pytest.raises(UnknownTypeError):
        plan.set_cells([cell], "Q7_X")


def test_problems_flag_fallback_and_missing_imatrix(fallback_model):
    model = open_model(fallback_model)
    plan = plan_from_profile(model, get_profile("quality"))
    fallbacks = [p for p in plan.problems() if p.kind == "fallback"]
    assert fallbacks and all("ffn_down_exps" in p.tensor for p in fallbacks)
    assert {(p.planned, p.effective) for p in fallbacks} <= {("Q6_K", "Q8_0"), ("Q5_K", "Q5_1"),
                                                              ("IQ4_XS", "IQ4_NL")}
    plan.set_cells([(0, "ffn_up_exps")], "IQ2_XXS")
    assert any(p.kind == "needs-imatrix" for p in plan.problems())
    assert not any(p.kind == "needs-imatrix" for p in plan.problems(have_imatrix=True))


def _quantize(llama_tools, plan: PrecisionPlan, source: Path, output: Path) -> subprocess.CompletedProcess:
    tensor_types = plan.write_tensor_type_file(output.with_suffix(".types.txt"))
    argv = quantize_argv(plan, llama_tools.path("quantize"), source, output, tensor_types, threads=2)
    return subprocess.run(argv, capture_output=True, text=True, env=child_environment())


@pytest.mark.parametrize("profile_key", ["quality", "compact"])
@pytest.mark.parametrize("fixture", ["tiny_qwen2moe", "tiny_qwen3moe", "fallback_model"])
def test_real_llama_quantize_applies_the_plan_exactly(fixture, profile_key, request, llama_tools,
                                                      tmp_path):
    source = request.getfixturevalue(fixture)
    model = open_model(source)
    plan = plan_from_profile(model, get_profile(profile_key))
    # Vary the plan by hand so the check is not just the profile's uniform bands.
    plan.set_cells([(1, "ffn_up_exps")], "Q8_0")
    plan.set_cells([(0, "attn_output")], "Q5_K")
    output = tmp_path / "out.gguf"
    result = _quantize(llama_tools, plan, source, output)
    assert result.returncode == 0, result.stderr[-2000:]
    written = open_model(output)
    assert {t.name: t.type_name for t in written.tensors} == \
        {name: plan.effective_type(name) for name in plan.types}
    real = output.stat().st_size
    assert abs(plan.total_bytes() - real) <= 0.001 * real, (plan.total_bytes(), real)
    assert plan_from_gguf(written).total_bytes() == real


def test_dry_run_agrees_with_the_plan_on_a_twin(qwen35_twin, llama_tools, tmp_path):
    model = open_model(qwen35_twin)
    plan = plan_from_profile(model, get_profile("compact"))
    plan.set_cells([(7, "ffn_gate_exps")], "IQ4_XS")
    tensor_types = plan.write_tensor_type_file(tmp_path / "plan.txt")
    argv = quantize_argv(plan, llama_tools.path("quantize"), qwen35_twin, tmp_path / "x.gguf",
                              tensor_types, threads=1)
    argv.insert(1, "--dry-run")
    result = subprocess.run(argv, capture_output=True, text=True, env=child_environment())
    assert result.returncode == 0, result.stderr[-2000:]
    types = parse_dry_run(result.stdout + result.stderr)
    assert len(types) == len(model.tensors)
    assert types == {name: plan.effective_type(name) for name in plan.types}
    assert not (tmp_path / "x.gguf").exists()


def _reference_style_file(model, profile_key: str) -> str:
    """A config as the reference generator writes it: unanchored ``blk.N.name=TYPE`` lines,
    15 per layer, including lines for tensors this model does not have."""
    experts, shared, attention, _, _ = DOCUMENTED[profile_key.removeprefix("i-")]
    lines = []
    for layer in range(model.n_layer + model.n_mtp_layers):
        position = 0 if layer >= model.n_layer else layer
        e = experts[reference_band(position, model.n_layer, "routed")]
        s = shared[reference_band(position, model.n_layer, "shared")]
        a = attention[reference_band(position, model.n_layer, "attention")]
        for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            lines.append(f"blk.{layer}.{name}={e}")
        for name in ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"):
            lines.append(f"blk.{layer}.{name}={s}")
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_qkv", "attn_gate",
                     "ssm_in", "ssm_out", "ssm_alpha"):
            lines.append(f"blk.{layer}.{name}={a}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("profile_key", ["quality", "compact", "i-mini"])
def test_reference_style_config_imports_to_the_same_plan(qwen35_twin, profile_key, tmp_path):
    model = open_model(qwen35_twin)
    profile = get_profile(profile_key)
    config = tmp_path / "reference.txt"
    config.write_text(_reference_style_file(model, profile_key))
    imported = plan_from_tensor_type_file(model, config, profile.base_type, profile)
    native = plan_from_profile(model, profile)
    # ssm_beta and nextn tensors have no reference line: they follow the profile too.
    assert imported.diff(native) == {}
    assert imported.total_bytes() == native.total_bytes()
    anchored = tmp_path / "anchored.txt"
    native.write_tensor_type_file(anchored)
    assert plan_from_tensor_type_file(model, anchored, profile.base_type).diff(native) == {}


def test_tensor_type_file_matching_is_llama_quantizes(tiny_qwen2moe, tmp_path):
    model = open_model(tiny_qwen2moe)
    config = tmp_path / "c.txt"
    # upper-case pattern (lower-cased by llama-quantize), first match wins
    config.write_text("BLK\\.0\\.FFN_UP_EXPS=Q8_0 ffn_up_exps=Q4_K ffn=Q5_K\n")
    plan = plan_from_tensor_type_file(model, config, "Q6_K")
    assert plan.types["blk.0.ffn_up_exps.weight"] == "Q8_0"
    assert plan.types["blk.1.ffn_up_exps.weight"] == "Q4_K"
    assert plan.types["blk.1.ffn_down_shexp.weight"] == "Q5_K"
    assert plan.types["blk.1.attn_q.weight"] == "Q6_K"  # unmatched: the base type's
    config.write_text("ffn_up_exps:Q4_K\n")
    with pytest.raises(ValueError, match="not PATTERN=TYPE"):
        plan_from_tensor_type_file(model, config, "Q6_K")


@pytest.mark.parametrize("profile_key", ["quality", "balanced", "compact", "i-mini", "i-nano",
                                         "i-micro", "i-quality"])
def test_detection_names_the_profile_a_file_was_made_from(profile_key, tmp_path):
    source = open_model(write_shape_twin(tmp_path / "src.gguf", "qwen3.5-35b-a3b")[0])
    plan = plan_from_profile(source, get_profile(profile_key))
    types = {name: plan.effective_type(name) for name in plan.types}
    quant = write_shape_twin(tmp_path / "quant.gguf", "qwen3.5-35b-a3b", tensor_types=types)[0]
    model = open_model(quant)
    best = detect_profile(model)[0]
    # A plain profile that needs no imatrix is named plainly; IQ2/IQ1 files are I-variants.
    expected = profile_key if plan.needs_imatrix() or not profile_key.startswith("i-") \
        else profile_key.removeprefix("i-")
    if plan.needs_imatrix() and not expected.startswith("i-"):
        expected = "i-" + expected
    assert best.profile.key == expected and best.exact, best.describe()


def test_detection_reports_the_closest_profile_and_its_differences(tmp_path):
    source = open_model(write_shape_twin(tmp_path / "src.gguf", "qwen3.5-35b-a3b")[0])
    plan = plan_from_profile(source, get_profile("compact"))
    plan.set_cells(plan.row_cells(20), "Q8_0")
    types = {name: plan.effective_type(name) for name in plan.types}
    model = open_model(write_shape_twin(tmp_path / "q.gguf", "qwen3.5-35b-a3b", tensor_types=types)[0])
    best = detect_profile(model)[0]
    assert best.profile.key == "compact" and not best.exact
    assert all(name.startswith("blk.20.") for name in best.differences)
    expected_share = (sum(model.tensor(n).nbytes for n in best.differences)
                      / sum(t.nbytes for t in model.tensors))
    assert best.differing_share == pytest.approx(expected_share)
    assert 0 < best.differing_share < 0.1


def test_user_profiles_round_trip_and_bad_files_are_named(tmp_path):
    from dataclasses import replace

    mine = replace(get_profile("compact"), key="my-compact", label="My Compact", builtin=False)
    path = save_user_profile(mine)
    assert path.parent.name == "profiles"
    assert get_profile("my-compact").routed_experts == mine.routed_experts
    with pytest.raises(ProfileError, match="built-in"):
        save_user_profile(get_profile("quality"))
    (path.parent / "broken.toml").write_text('key = "x"\nbase_type = "Q9_K"\n')
    profiles, problems = user_profiles()
    assert "my-compact" in profiles and any("broken.toml" in p and "base_type" in p for p in problems)
    bad = tmp_path / "bad.toml"
    bad.write_text("key = [")
    with pytest.raises(ProfileError, match="bad.toml: not valid TOML"):
        load_profile_file(bad)


def test_trinity_five_band_layout_is_expressible(trinity_twin):
    model = open_model(trinity_twin)
    plan = plan_from_profile(model, get_profile("trinity-gradient"))
    expected = {0: "Q8_0", 4: "Q8_0", 5: "Q6_K", 9: "Q6_K", 10: "IQ4_XS", 49: "IQ4_XS",
                50: "Q6_K", 54: "Q6_K", 55: "Q8_0", 59: "Q8_0"}
    for layer, type_name in expected.items():
        if plan.cell_type(layer, "ffn_up_exps") is not None:
            assert plan.cell_type(layer, "ffn_up_exps") == type_name, layer


def test_baseline_size_matches_the_file_llama_quantize_writes(tiny_qwen2moe, llama_tools, tmp_path):
    model = open_model(tiny_qwen2moe)
    plan = baseline_plan(model, "Q4_K_M", llama_tools)
    output = tmp_path / "q4km.gguf"
    result = subprocess.run([str(llama_tools.path("quantize")), str(tiny_qwen2moe), str(output),
                             "Q4_K_M", "2"], capture_output=True, text=True, env=child_environment())
    assert result.returncode == 0
    written = open_model(output)
    assert {t.name: t.type_name for t in written.tensors} == plan.types
    assert plan.total_bytes() == output.stat().st_size


def test_incremental_size_after_edits_equals_a_full_recount(trinity_twin):
    """Speed is the benchmark's (benchmarks/bench_plan.py); here the incremental total that
    makes single-cell edits cheap must equal a plan built from scratch with the same types."""
    model = open_model(trinity_twin)
    plan = plan_from_profile(model, get_profile("quality"))
    plan.set_cells([(30, "ffn_down_exps")], "Q8_0")
    plan.set_cells(plan.row_cells(7), "IQ2_S")
    plan.set_cells(plan.column_cells("attn_q"), "Q4_K")
    plan.undo()
    fresh = PrecisionPlan(model, dict(plan.types), plan.base_type)
    assert plan.total_bytes() == fresh.total_bytes()
    assert plan.tensor_bytes_map() == fresh.tensor_bytes_map()


def test_quant_file_names_follow_the_published_naming():
    from apex_gui.core.plan.profiles import quant_file_name

    assert quant_file_name("/m/Qwen3.5-35B-A3B-BF16.gguf", "I-Quality") == \
        "Qwen3.5-35B-A3B-APEX-I-Quality.gguf"
    assert quant_file_name("demo.gguf", "Trinity 5-band") == "demo-APEX-Trinity-5-band.gguf"
    assert quant_file_name("x-f16.gguf", "Mini") == "x-APEX-Mini.gguf"
