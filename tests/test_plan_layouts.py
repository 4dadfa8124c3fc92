"""Plans against the real llama-quantize on more layouts than the Qwen3.5 twin: MLA (fused
and split kv_b), LFM2 short convolution with tied embeddings, gpt-oss rows that are not a
multiple of 256, GLM MTP blocks; byte-exact sizes with an imatrix; models without shared
experts or without attention in some layers; detection of files llama-quantize really wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from apex_gui.cli import main as cli_main
from apex_gui.core.fixtures.twin_layouts import TWIN_LAYOUTS
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.jobs.baselines import baseline_plan, parse_dry_run
from apex_gui.core.jobs.quantize import quantize_argv
from apex_gui.core.jobs.tools import child_environment
from apex_gui.core.plan.detect import detect_profile
from apex_gui.core.plan.detect import profile_from_plan
from apex_gui.core.plan.precision import (
    PrecisionPlan, is_quantizable, plan_from_gguf, plan_from_profile,
)
from apex_gui.core.plan.profiles import builtin_profiles, get_profile

# The deepseek2 loader's older MLA form: one attn_kv_b, no q_lora, a dense lead and MTP.
DEEPSEEK2_KV_B = replace(
    TWIN_LAYOUTS["mistral-small-4-119b"], name="deepseek2-kv-b", arch="deepseek2",
    q_lora_rank=0, mla_kv_b=True, n_dense_lead=1, n_nextn=1, fused_gate_up_exps=False,
    n_layer=24)
LAYOUTS = {**TWIN_LAYOUTS, DEEPSEEK2_KV_B.name: DEEPSEEK2_KV_B}


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelInfo]:
    folder = tmp_path_factory.mktemp("verify-twins")
    return {name: open_model(write_shape_twin(folder / f"{name}.gguf", layout)[0])
            for name, layout in LAYOUTS.items()}


def dry_run(llama_tools, plan: PrecisionPlan, folder: Path) -> dict[str, str]:
    """Per-tensor types llama-quantize --dry-run chooses for the plan's exported file."""
    types_file = plan.write_tensor_type_file(folder / "plan.txt")
    argv = quantize_argv(plan, llama_tools.path("quantize"), plan.model.path,
                              folder / "never.gguf", types_file, threads=1)
    argv.insert(1, "--dry-run")
    result = subprocess.run(argv, capture_output=True, text=True, env=child_environment())
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (folder / "never.gguf").exists()
    return parse_dry_run(result.stdout + result.stderr)


# --------------------------------------------------------------------------------------------
# llama-quantize --dry-run agrees on every kind of layout
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "profile_key"), [
    ("mistral-small-4-119b", "i-mini"),  # MLA q_a/q_b/kv_a_mqa/k_b/v_b, fused gate_up experts
    ("deepseek2-kv-b", "compact"),  # MLA attn_q + attn_kv_b, dense lead, MTP block
    ("lfm2.5-8b-a1b", "quality"),  # short conv, dense lead, no shared expert, tied embeddings
    ("lfm2.5-8b-a1b", "i-micro"),
    ("gpt-oss-20b", "quality"),  # rows of 2880: every K/IQ type falls back; MXFP4 source
    ("gpt-oss-20b", "i-nano"),
    ("glm-4.5-air", "balanced"),  # MTP block with its own experts, dense lead, q/k/v biases
    ("granite-3.0-3b-a800m", "compact"),  # tied embeddings
    ("trinity-large-399b", "trinity-gradient"),  # five-band user layout on 60 layers
])
def test_dry_run_gives_the_plans_type_for_every_tensor(twins, llama_tools, tmp_path, name,
                                                       profile_key):
    model = twins[name]
    plan = plan_from_profile(model, get_profile(profile_key))
    # A hand edit on top, so the check is not only the profile's bands.
    middle = model.n_layer // 2
    plan.set_cells(plan.row_cells(middle), "Q5_K")
    chosen = dry_run(llama_tools, plan, tmp_path)
    assert len(chosen) == len(model.tensors)
    assert chosen == {name: plan.effective_type(name) for name in plan.types}


def test_gpt_oss_fallbacks_are_flagged_with_the_type_they_become(twins):
    plan = plan_from_profile(twins["gpt-oss-20b"], get_profile("quality"))
    fallbacks = {p.tensor: (p.planned, p.effective) for p in plan.problems()
                 if p.kind == "fallback"}
    assert fallbacks["blk.0.ffn_down_exps.weight"] == ("Q6_K", "Q8_0")
    assert fallbacks["blk.12.ffn_up_exps.weight"] == ("IQ4_XS", "IQ4_NL")
    assert fallbacks["blk.7.ffn_gate_exps.weight"] == ("Q5_K", "Q5_1")
    # The size counts the fallback types, not the planned ones.
    tensor = plan.model.tensor("blk.12.ffn_up_exps.weight")
    assert plan.tensor_bytes(tensor.name) == tensor.n_elements // 32 * 18


@pytest.mark.parametrize("name", ["lfm2.5-8b-a1b", "granite-3.0-3b-a800m", "gpt-oss-20b",
                                  "qwen3.5-35b-a3b", "mistral-small-4-119b"])
@pytest.mark.parametrize("profile_key", ["compact", "mini"])
def test_embedding_and_output_follow_the_base_types_rules(twins, llama_tools, name, profile_key):
    """What llama-quantize gives token_embd/output with the profile's base TYPE and no flags
    (tied embeddings take the output rule: Q6_K) is what the plan pins."""
    model = twins[name]
    profile = get_profile(profile_key)
    plan = plan_from_profile(model, profile)
    by_base_rules = baseline_plan(model, profile.base_type, llama_tools)
    for tensor in ("token_embd.weight", "output.weight"):
        if tensor in plan.types:
            assert plan.effective_type(tensor) == by_base_rules.types[tensor], tensor


# --------------------------------------------------------------------------------------------
# models without shared experts or without attention in some layers: no junk entries
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lfm2.5-8b-a1b", "qwen3-30b-a3b", "olmoe-1b-7b", "gpt-oss-20b",
                                  "mixtral-8x7b", "qwen3.5-35b-a3b"])
def test_plan_entries_are_exactly_the_models_quantizable_tensors(twins, name):
    model = twins[name]
    plan = plan_from_profile(model, get_profile("i-compact"))
    lines = plan.tensor_type_file_text().split()
    patterns = [re.compile(line.rsplit("=", 1)[0]) for line in lines]
    quantizable = [t.name for t in model.tensors if is_quantizable(t.name, t.shape)]
    # one line per quantizable tensor, each matching that tensor and nothing else
    assert len(lines) == len(quantizable)
    for pattern, tensor in zip(patterns, quantizable):
        assert [t.name for t in model.tensors if pattern.search(t.name)] == [tensor]
    has_shared = any(t.role is TensorRole.SHARED_EXPERT for t in model.tensors)
    if not has_shared:
        assert not any("shexp" in line for line in lines)
        assert plan.band_cells("shared_experts", 0) == []
        assert "shared expert" not in json.dumps(
            {r.value: b for r, b in plan.bits_per_weight_by_role().items()})
    # every cell belongs to a tensor the model has; layers without attention get none
    for layer, kind in plan.cells():
        assert plan.cell_tensors(layer, kind)
    for layer in model.layers:
        kinds = {kind for (index, kind) in plan.cells() if index == layer.index}
        if layer.mixer.name in ("SHORT_CONV", "LINEAR_ATTENTION"):
            assert not kinds & {"attn_q", "attn_k", "attn_v", "attn_output"}, layer
    assert [p for p in plan.problems(have_imatrix=True) if p.kind == "unknown-type"] == []


def test_a_profile_made_from_a_plan_of_a_model_without_shared_experts(twins):
    model = twins["lfm2.5-8b-a1b"]
    plan = plan_from_profile(model, get_profile("compact"))
    plan.set_cells(plan.row_cells(12), "Q6_K")
    profile, notes = profile_from_plan(plan, "my-lfm2", "My LFM2")
    again = plan_from_profile(model, profile)
    assert again.diff(plan) == {}
    assert again.total_bytes() == plan.total_bytes()
    # the tied embedding's type went to the output rule, not to the embedding of other models
    assert profile.output_tensor_type == "Q6_K"
    assert profile.token_embedding_type == get_profile("compact").token_embedding_type
    assert notes == [] or all("mix types" in note for note in notes)


# --------------------------------------------------------------------------------------------
# byte-exact with an imatrix, and detection of files llama-quantize really wrote
# --------------------------------------------------------------------------------------------


def make_imatrix(llama_tools, model: Path, text: str, output: Path, fmt: str = "gguf") -> Path:
    calibration = output.with_suffix(".txt")
    calibration.write_text(text)
    result = subprocess.run(
        [str(llama_tools.path("imatrix")), "-m", str(model), "-f", str(calibration),
         "-o", str(output), "--output-format", fmt, "-c", "128", "--chunks", "3", "-t", "2",
         "--no-log-prefix", "--log-colors", "off"],
        capture_output=True, text=True, env=child_environment())
    assert result.returncode == 0 and output.exists(), result.stderr[-2000:]
    return output


def quantize(llama_tools, plan: PrecisionPlan, output: Path) -> Path:
    types_file = plan.write_tensor_type_file(output.with_suffix(".types.txt"))
    argv = quantize_argv(plan, llama_tools.path("quantize"), plan.model.path, output, types_file,
                              threads=2)
    result = subprocess.run(argv, capture_output=True, text=True, env=child_environment())
    assert result.returncode == 0, result.stderr[-2000:]
    return output


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_size_is_exact_with_an_imatrix(tiny_qwen2moe, llama_tools, text_words, tmp_path, fmt):
    imatrix = make_imatrix(llama_tools, tiny_qwen2moe, text_words(500), tmp_path / f"im.{fmt}", fmt)
    plan = plan_from_profile(open_model(tiny_qwen2moe), get_profile("i-mini"))
    plan.imatrix = str(imatrix)
    without = plan_from_profile(plan.model, get_profile("i-mini")).total_bytes()
    quant = open_model(quantize(llama_tools, plan, tmp_path / "q.gguf"))
    # the header stamp (file, dataset, entries, chunks) is counted to the byte
    assert plan.total_bytes() == quant.file_size
    assert plan.total_bytes() > without
    assert {t.name: t.type_name for t in quant.tensors} == \
        {name: plan.effective_type(name) for name in plan.types}
    assert quant.metadata["quantize.imatrix.file"] == str(imatrix)
    assert quant.looks_imatrix_quantized and quant.file_type == "Q3_K_M"
    # requantizing that quant with the imatrix again replaces the stamp, it does not add one
    again = plan_from_gguf(quant)
    again.set_cells(again.row_cells(0), "Q4_K")
    again.imatrix = str(imatrix)
    assert again.total_bytes() == quantize(llama_tools, again, tmp_path / "r.gguf").stat().st_size


def test_size_is_exact_with_a_long_imatrix_path(tiny_qwen3moe, llama_tools, text_words, tmp_path):
    """llama-quantize keeps 127 bytes of the imatrix path in the header."""
    folder = tmp_path / ("deep-folder-name-" * 8)
    folder.mkdir()
    imatrix = make_imatrix(llama_tools, tiny_qwen3moe, text_words(500), folder / "im.gguf")
    plan = plan_from_profile(open_model(tiny_qwen3moe), get_profile("i-compact"))
    plan.imatrix = str(imatrix)
    assert len(str(imatrix)) > 127
    quant = quantize(llama_tools, plan, tmp_path / "q.gguf")
    assert plan.total_bytes() == quant.stat().st_size
    assert open_model(quant).metadata["quantize.imatrix.file"] == str(imatrix)[:127]


@pytest.fixture(scope="module")
def deep_imatrix(deep_model, llama_tools, tmp_path_factory) -> Path:
    from conftest import words

    return make_imatrix(llama_tools, deep_model, words(500),
                        tmp_path_factory.mktemp("deep-im") / "imatrix.gguf")


def _detect_after_quantizing(profile_key: str, deep_model: Path, deep_imatrix: Path,
                             llama_tools, folder: Path) -> None:
    profile = get_profile(profile_key)
    plan = plan_from_profile(open_model(deep_model), profile)
    if profile.uses_imatrix:
        plan.imatrix = str(deep_imatrix)
    quant = quantize(llama_tools, plan, folder / "q.gguf")
    matches = detect_profile(open_model(quant))
    best = matches[0]
    # Mini/Nano/Micro cannot be made without an imatrix: the file is their I- variant's.
    expected = f"i-{profile_key}" if profile_key in ("mini", "nano", "micro") else profile_key
    assert (best.profile.key, best.exact) == (expected, True), best.describe()
    assert not matches[1].exact  # the runner-up differs somewhere: the name is not a tie
    assert plan.total_bytes() == quant.stat().st_size


@pytest.mark.parametrize("profile_key", ["quality", "i-quality", "balanced", "i-balanced",
                                         "compact", "i-compact", "trinity-gradient"])
def test_detection_names_the_profile_of_a_real_quant(profile_key, deep_model, deep_imatrix,
                                                     llama_tools, tmp_path):
    _detect_after_quantizing(profile_key, deep_model, deep_imatrix, llama_tools, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("profile_key", ["mini", "i-mini", "nano", "i-nano", "micro", "i-micro"])
def test_detection_names_the_profile_of_a_real_iq_quant(profile_key, deep_model, deep_imatrix,
                                                        llama_tools, tmp_path):
    _detect_after_quantizing(profile_key, deep_model, deep_imatrix, llama_tools, tmp_path)


def test_plain_and_i_variants_plan_the_same_types(deep_model):
    model = open_model(deep_model)
    for key in ("quality", "balanced", "compact", "mini", "nano", "micro"):
        plain, variant = (plan_from_profile(model, get_profile(k)) for k in (key, f"i-{key}"))
        assert plain.types == variant.types, key
    keys = [k for k in builtin_profiles() if not k.startswith("i-")]
    sizes = {k: plan_from_profile(model, get_profile(k)).total_bytes() for k in keys}
    assert len(set(sizes.values())) == len(keys)  # every plain profile differs on 21 layers


# --------------------------------------------------------------------------------------------
# what the user reads: estimate --all, inspect
# --------------------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli_main(list(argv))
    return code, capsys.readouterr().out


def test_estimate_all_table_is_readable(capsys, tiny_qwen2moe, twins):
    code, out = run_cli(capsys, "estimate", str(twins["lfm2.5-8b-a1b"].path), "--all",
                        "--no-baselines")
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("quant"))
    assert header.split() == ["quant", "size", "GB", "size", "GiB", "bytes", "bpw", "experts",
                              "bpw", "imatrix"]
    rows = {line[:22].strip(): line for line in lines if line.startswith("APEX ")}
    assert len(rows) == len(builtin_profiles())
    assert rows["APEX Compact"].split()[-1] == "-"
    assert rows["APEX I-Compact"].split()[-1] == "used"
    assert rows["APEX Mini"].split()[-1] == "required"
    # right-aligned: the exact byte counts end in the same column on every row
    ends = {re.search(r"\d{1,3}(,\d{3})+", line).end() for line in rows.values()}
    assert len(ends) == 1
    assert any(line.startswith("bpw: bits per weight") for line in lines)
    # A few-MB model is shown in MB, not as 0.00 GB on every row.
    code, out = run_cli(capsys, "estimate", str(tiny_qwen2moe), "--all", "--no-baselines")
    assert "size MB" in out and "0.00" not in out


def test_estimate_all_json_has_numbers_not_strings(capsys, twins):
    code, out = run_cli(capsys, "estimate", str(twins["qwen3-30b-a3b"].path), "--all",
                        "--no-baselines", "--json")
    rows = json.loads(out)["rows"]
    assert code == 0 and all(isinstance(row["routed_bpw"], float) for row in rows)
    assert {row["imatrix"] for row in rows} == {None, "used", "required"}


def test_estimate_all_sizes_the_baselines_by_llama_quantize(capsys, tiny_qwen2moe, llama_tools):
    code, out = run_cli(capsys, "estimate", str(tiny_qwen2moe), "--all", "--json")
    rows = {row["name"]: row for row in json.loads(out)["rows"]}
    model = open_model(tiny_qwen2moe)
    assert rows["Q4_K_M"]["total_bytes"] == baseline_plan(model, "Q4_K_M", llama_tools).total_bytes()
    assert rows["IQ2_M"]["imatrix"] == "required" and rows["Q8_0"]["imatrix"] is None
    assert isinstance(rows["Q4_K_M"]["routed_bpw"], float)


def test_inspect_names_mla_layers_plainly(capsys, twins):
    code, out = run_cli(capsys, "inspect", str(twins["mistral-small-4-119b"].path))
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert code == 0 and len(rows) == 36 and {row[1] for row in rows} == {"mla"}
    assert "mixer: mla = multi-head latent attention" in out
    code, out = run_cli(capsys, "inspect", str(twins["qwen3.5-35b-a3b"].path))
    assert "mixer: full = full attention, linear = linear attention / SSM" in out


def test_an_imatrix_not_made_yet_or_unreadable_is_estimated_not_fatal(tiny_qwen2moe, tmp_path):
    """A queue plans the quant before its imatrix exists; a broken file must not crash sizing."""
    plan = plan_from_profile(open_model(tiny_qwen2moe), get_profile("i-compact"))
    without = plan.total_bytes()
    plan.imatrix = str(tmp_path / "later" / "imatrix.gguf")
    queued = plan.total_bytes()
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(bytes(range(256)) * 40)
    plan.imatrix = str(garbage)
    assert queued > without and plan.total_bytes() > without


def test_plan_command_with_an_imatrix_sizes_and_prints_it(capsys, tiny_qwen2moe, llama_tools,
                                                          text_words, tmp_path):
    imatrix = make_imatrix(llama_tools, tiny_qwen2moe, text_words(500), tmp_path / "im.gguf")
    code, out = run_cli(capsys, "plan", str(tiny_qwen2moe), "--profile", "i-mini", "--imatrix",
                        str(imatrix), "-o", str(tmp_path / "plan.txt"))
    plan = plan_from_profile(open_model(tiny_qwen2moe), get_profile("i-mini"))
    plan.imatrix = str(imatrix)
    assert code == 0 and f"({plan.total_bytes():,} bytes)" in out and " MB " in out
    assert f"--imatrix {imatrix}" in out and "add --imatrix FILE" not in out
    assert quantize(llama_tools, plan, tmp_path / "q.gguf").stat().st_size == plan.total_bytes()
