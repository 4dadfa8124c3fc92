"""Tensor roles for every architecture the issue lists, from the names llama.cpp's loaders
create (``src/models/<arch>.cpp`` and ``src/llama-arch.cpp`` of the bundled build), not from
the shape twins, which carry only one conversion of each layout; and the type table against
the llama-quantize that is installed.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.roles import TensorRole, classify
from apex_gui.core.gguf.types import (
    FILE_TYPE_NAMES, FTYPE_DEFAULT_TYPE, TYPES, UnknownTypeError, effective_type,
)
from apex_gui.core.jobs.tools import child_environment
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile

R = TensorRole
ROUTED, SHARED, ROUTER, ATTN = R.ROUTED_EXPERT, R.SHARED_EXPERT, R.ROUTER, R.ATTENTION
LINEAR, CONV, DENSE, NORM, MTP = R.LINEAR_ATTENTION, R.SHORT_CONV, R.DENSE_FFN, R.NORM, R.MTP

# Names each loader creates (blk.N.<kind>.<suffix>), written out by hand from the source.
COMMON = {"token_embd.weight": R.EMBEDDING, "output.weight": R.OUTPUT,
          "output_norm.weight": NORM, "blk.1.attn_norm.weight": NORM,
          "blk.1.ffn_gate_inp.weight": ROUTER}
QKV = {"blk.1.attn_q.weight": ATTN, "blk.1.attn_k.weight": ATTN, "blk.1.attn_v.weight": ATTN,
       "blk.1.attn_output.weight": ATTN}
EXPERTS = {"blk.1.ffn_gate_exps.weight": ROUTED, "blk.1.ffn_up_exps.weight": ROUTED,
           "blk.1.ffn_down_exps.weight": ROUTED}
SHEXP = {"blk.1.ffn_gate_shexp.weight": SHARED, "blk.1.ffn_up_shexp.weight": SHARED,
         "blk.1.ffn_down_shexp.weight": SHARED}
DENSE_FFN = {"blk.0.ffn_gate.weight": DENSE, "blk.0.ffn_up.weight": DENSE,
             "blk.0.ffn_down.weight": DENSE}
NEXTN = {"blk.9.nextn.eh_proj.weight": MTP, "blk.9.nextn.embed_tokens.weight": MTP,
         "blk.9.nextn.shared_head_head.weight": MTP, "blk.9.nextn.enorm.weight": NORM,
         "blk.9.nextn.hnorm.weight": NORM, "blk.9.nextn.shared_head_norm.weight": NORM}

ARCHITECTURES: dict[str, dict[str, TensorRole]] = {
    "qwen35moe": {
        **COMMON, **QKV, **EXPERTS, **SHEXP, **NEXTN,
        "blk.1.attn_post_norm.weight": NORM, "blk.3.attn_q_norm.weight": NORM,
        "blk.3.attn_k_norm.weight": NORM,
        # gated delta-net layers
        "blk.0.attn_qkv.weight": ATTN, "blk.0.attn_gate.weight": ATTN,
        "blk.0.ssm_conv1d.weight": LINEAR, "blk.0.ssm_dt.bias": LINEAR, "blk.0.ssm_a": LINEAR,
        "blk.0.ssm_beta.weight": LINEAR, "blk.0.ssm_alpha.weight": LINEAR,
        "blk.0.ssm_norm.weight": NORM, "blk.0.ssm_out.weight": LINEAR,
        # create_tensor_gate_up_exps: fused where the converter fuses them
        "blk.1.ffn_gate_up_exps.weight": ROUTED, "blk.1.ffn_gate_inp_shexp.weight": ROUTER,
    },
    "afmoe": {
        **COMMON, **QKV, **EXPERTS, **SHEXP, **DENSE_FFN,
        "blk.1.attn_gate.weight": ATTN, "blk.1.attn_q_norm.weight": NORM,
        "blk.1.attn_k_norm.weight": NORM, "blk.1.post_attention_norm.weight": NORM,
        "blk.1.ffn_norm.weight": NORM, "blk.1.post_ffw_norm.weight": NORM,
        "blk.1.exp_probs_b.bias": ROUTER,
    },
    "deepseek2": {  # and mistral4, which uses the same loader
        **COMMON, **EXPERTS, **SHEXP, **DENSE_FFN, **NEXTN,
        "blk.1.attn_q.weight": ATTN, "blk.1.attn_q_a.weight": ATTN, "blk.1.attn_q_b.weight": ATTN,
        "blk.1.attn_q_a_norm.weight": NORM, "blk.1.attn_kv_a_mqa.weight": ATTN,
        "blk.1.attn_kv_a_norm.weight": NORM, "blk.1.attn_kv_b.weight": ATTN,
        "blk.1.attn_k_b.weight": ATTN, "blk.1.attn_v_b.weight": ATTN,
        "blk.1.attn_output.weight": ATTN, "blk.1.ffn_gate_up_exps.weight": ROUTED,
        "blk.1.exp_probs_b.bias": ROUTER,
    },
    "lfm2moe": {
        **{k: v for k, v in COMMON.items() if k != "output.weight"}, **QKV, **EXPERTS, **DENSE_FFN,
        "token_embd_norm.weight": NORM, "blk.1.attn_q_norm.weight": NORM,
        "blk.1.attn_k_norm.weight": NORM, "blk.1.ffn_norm.weight": NORM,
        "blk.0.shortconv.conv.weight": CONV, "blk.0.shortconv.in_proj.weight": CONV,
        "blk.0.shortconv.out_proj.weight": CONV, "blk.1.exp_probs_b.bias": ROUTER,
    },
    "qwen3moe": {**COMMON, **QKV, **EXPERTS, "blk.1.attn_q_norm.weight": NORM,
                 "blk.1.attn_k_norm.weight": NORM, "blk.1.ffn_norm.weight": NORM},
    "qwen2moe": {**COMMON, **QKV, **EXPERTS, **SHEXP, "blk.1.attn_q.bias": ATTN,
                 "blk.1.attn_k.bias": ATTN, "blk.1.attn_v.bias": ATTN,
                 "blk.1.ffn_gate_inp_shexp.weight": ROUTER, "blk.1.ffn_norm.weight": NORM},
    "llama": {  # Mixtral: merged experts, and the per-expert tensors of older conversions
        **COMMON, **QKV, **EXPERTS, "blk.1.ffn_norm.weight": NORM,
        "blk.1.ffn_gate.0.weight": ROUTED, "blk.1.ffn_up.7.weight": ROUTED,
        "blk.1.ffn_down.3.weight": ROUTED,
    },
    "gpt-oss": {
        **COMMON, **QKV, **EXPERTS, "blk.1.attn_sinks.weight": ATTN,
        "blk.1.attn_q.bias": ATTN, "blk.1.attn_output.bias": ATTN,
        "blk.1.post_attention_norm.weight": NORM, "blk.1.ffn_gate_inp.bias": ROUTER,
        "blk.1.ffn_gate_exps.bias": ROUTED, "blk.1.ffn_down_exps.bias": ROUTED,
    },
    "glm4moe": {
        **COMMON, **QKV, **EXPERTS, **SHEXP, **DENSE_FFN, **NEXTN,
        "blk.1.attn_q.bias": ATTN, "blk.1.attn_q_norm.weight": NORM,
        "blk.1.post_attention_norm.weight": NORM, "blk.1.exp_probs_b.bias": ROUTER,
    },
    "olmoe": {**COMMON, **QKV, **EXPERTS, "blk.1.attn_q_norm.weight": NORM,
              "blk.1.attn_k_norm.weight": NORM, "blk.1.ffn_norm.weight": NORM},
    "granitemoe": {**COMMON, **QKV, **EXPERTS, **SHEXP, "blk.1.ffn_norm.weight": NORM,
                   "rope_freqs.weight": R.OTHER},
    "grovemoe": {  # the architecture with chunk experts ("chexps")
        **COMMON, **QKV, **EXPERTS, "blk.1.ffn_gate_chexps.weight": ROUTED,
        "blk.1.ffn_up_chexps.weight": ROUTED, "blk.1.ffn_down_chexps.weight": ROUTED,
    },
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_loader_name_gets_its_role(arch: str) -> None:
    wrong = {name: (classify(name), role) for name, role in ARCHITECTURES[arch].items()
             if classify(name) is not role}
    assert wrong == {}


def test_roles_the_issue_lists_are_all_reached() -> None:
    reached = {role for names in ARCHITECTURES.values() for role in names.values()}
    assert reached == set(TensorRole)


def test_names_nobody_knows_are_other() -> None:
    for name in ("blk.0.mystery.weight", "v.blk.0.attn_q.weight", "blk.0.ffn_gate.x.weight",
                 "mm.0.weight"):
        assert classify(name) is R.OTHER, name


# --------------------------------------------------------------------------------------------
# the type table against llama.cpp
# --------------------------------------------------------------------------------------------


def test_every_llama_quantize_type_is_known(llama_tools) -> None:
    """Every TYPE the installed llama-quantize lists has a default tensor type here."""
    result = subprocess.run([str(llama_tools.path("quantize")), "--help"], capture_output=True,
                            text=True, env=child_environment())
    listed = re.findall(r"^\s+(?:\d+\s+or\s+)?([A-Z0-9_]+)\s+:", result.stdout + result.stderr,
                        re.MULTILINE)
    listed = [name for name in listed if name != "COPY"]
    assert len(listed) > 30
    aliases = {"Q3_K", "Q4_K", "Q5_K"}  # "alias for Q4_K_M"
    assert sorted(set(listed) - aliases - set(FTYPE_DEFAULT_TYPE)) == []


def test_q2_0_type_and_file_type() -> None:
    """ggml-common.h: QK2_0 = 64, block = f16 scale + 64/4 bytes; llama.h: ftype 41."""
    q2_0 = TYPES["Q2_0"]
    assert (q2_0.type_id, q2_0.block_size, q2_0.block_bytes) == (42, 64, 18)
    assert FILE_TYPE_NAMES[41] == "Q2_0" and FTYPE_DEFAULT_TYPE["Q2_0"] == "Q2_0"
    assert effective_type("Q2_0", 96) == "Q4_0"  # tensor_type_fallback: Q2_0 -> Q4_0


def test_a_type_llama_quantize_cannot_write_is_refused_before_the_plan_changes(fallback_model):
    """Q1_0 (block 128) has no fallback: llama-quantize stops on rows it does not divide
    (ffn_down_exps rows of 288 here); the plan refuses the edit and stays as it was."""
    model = open_model(fallback_model)
    plan = plan_from_profile(model, get_profile("quality"))
    assert plan.set_cells([(0, "ffn_up_exps")], "Q1_0") is not None  # rows of 256 divide 128
    before = (dict(plan.types), plan.total_bytes(), len(plan.problems()))
    with pytest.raises(UnknownTypeError, match=r"blk\.1\.ffn_down_exps\.weight: rows of 288"):
        plan.set_cells([(0, "ffn_up_exps"), (1, "ffn_down_exps")], "Q1_0")
    with pytest.raises(UnknownTypeError, match="no fallback"):
        plan.set_tensor_types({"blk.0.ffn_down_exps.weight": "NVFP4"})
    assert (dict(plan.types), plan.total_bytes(), len(plan.problems())) == before
    assert plan.undo() is not None and plan.cell_type(0, "ffn_up_exps") == "Q6_K"
    assert not plan.can_undo()
