"""Tensor roles: what a tensor is for, read from its llama.cpp name.

APEX chooses precision per role, so every tensor of every architecture must land in a
role; names this module does not know become ``OTHER`` (shown, never dropped).
"""

from __future__ import annotations

import re
from enum import Enum
from functools import lru_cache


class TensorRole(Enum):
    ROUTED_EXPERT = "routed expert"
    SHARED_EXPERT = "shared expert"
    ROUTER = "router"
    ATTENTION = "attention"
    LINEAR_ATTENTION = "linear attention / SSM"
    SHORT_CONV = "short convolution"
    DENSE_FFN = "dense FFN"
    EMBEDDING = "embedding"
    OUTPUT = "output"
    NORM = "norm"
    MTP = "MTP / nextn"
    OTHER = "other"


# At most 9 digits: int() refuses very long digit strings, and no model has 10^9 blocks.
_LAYER_NAME = re.compile(r"^blk\.(\d{1,9})\.(.+)$", re.DOTALL)
_SUFFIXES = (".weight", ".bias", ".scale")

# ``ffn_gate.3``: one tensor per expert, as Mixtral files converted before the experts were
# merged into ``ffn_*_exps`` store them (llama.cpp no longer loads them, quantize still reads them).
_ROUTED = re.compile(r"^ffn_(gate|up|down|gate_up)_(ch)?exps$|^ffn_(gate|up|down)\.\d{1,6}$")
_SHARED = re.compile(r"^ffn_(gate|up|down)_(shexp|chexp)$")
_ROUTER = frozenset({"ffn_gate_inp", "ffn_gate_inp_shexp", "exp_probs_b", "ffn_gate_tid2eid",
                     "ffn_exp_probs_b"})
_ATTENTION = frozenset({
    "attn_q", "attn_k", "attn_v", "attn_output", "attn_qkv", "attn_gate", "attn_q_a",
    "attn_q_b", "attn_kv_a_mqa", "attn_kv_b", "attn_k_b", "attn_v_b", "attn_sinks",
    "attn_out", "attn_rel_b", "attn_sink",
})
_DENSE_FFN = frozenset({"ffn_gate", "ffn_up", "ffn_down", "ffn_gate_up"})


def split_name(name: str) -> tuple[int | None, str, str]:
    """``blk.3.attn_q.weight`` -> (3, "attn_q", "weight"); ``output.weight`` -> (None, "output", "weight")."""
    match = _LAYER_NAME.match(name)
    layer: int | None = None
    rest = name
    if match:
        layer = int(match.group(1))
        rest = match.group(2)
    for suffix in _SUFFIXES:
        if rest.endswith(suffix):
            return layer, rest[: -len(suffix)], suffix[1:]
    return layer, rest, ""


@lru_cache(maxsize=8192)
def classify_kind(kind: str, in_layer: bool) -> TensorRole:
    """The role of a tensor kind (its name without ``blk.N.`` and ``.weight``)."""
    if kind.startswith("nextn.") or kind.startswith("mtp."):
        return TensorRole.NORM if kind.endswith("norm") else TensorRole.MTP
    if kind.endswith("_norm") or kind.endswith("norm") or kind.endswith("_ln"):
        return TensorRole.NORM
    if _ROUTED.match(kind):
        return TensorRole.ROUTED_EXPERT
    if _SHARED.match(kind):
        return TensorRole.SHARED_EXPERT
    if kind in _ROUTER:
        return TensorRole.ROUTER
    if kind in _ATTENTION:
        return TensorRole.ATTENTION
    if kind.startswith("ssm_") or kind.startswith("time_mix_"):
        return TensorRole.LINEAR_ATTENTION
    if kind.startswith("shortconv."):
        return TensorRole.SHORT_CONV
    if kind in _DENSE_FFN:
        return TensorRole.DENSE_FFN
    if not in_layer:
        if kind in ("token_embd", "per_layer_token_embd", "token_types", "position_embd"):
            return TensorRole.EMBEDDING
        if kind == "output":
            return TensorRole.OUTPUT
    return TensorRole.OTHER


def classify(name: str) -> TensorRole:
    """The role of a full tensor name."""
    layer, kind, _ = split_name(name)
    return classify_kind(kind, layer is not None)


# Column order of the heatmap and of every per-layer table.
_KIND_ORDER = (
    "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_up_exps",
    "ffn_gate_chexps", "ffn_up_chexps", "ffn_down_chexps",
    "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp",
    "attn_q", "attn_q_a", "attn_q_b", "attn_k", "attn_v", "attn_qkv", "attn_kv_a_mqa",
    "attn_kv_b", "attn_k_b", "attn_v_b", "attn_gate", "attn_output", "attn_sinks",
    "ssm_in", "ssm_ba", "ssm_alpha", "ssm_beta", "ssm_out",
    "shortconv.in_proj", "shortconv.out_proj",
    "ffn_gate", "ffn_up", "ffn_down",
    "nextn.eh_proj", "nextn.embed_tokens", "nextn.shared_head_head",
)
# Routers sit after the quantizable roles: they are never quantized, so they close the row.
_ROLE_ORDER = {role: index for index, role in enumerate(
    [r for r in TensorRole if r is not TensorRole.ROUTER] + [TensorRole.ROUTER])}


def kind_sort_key(kind: str) -> tuple[int, int, str]:
    """Sort kinds by role, then in the conventional column order, then by name."""
    role = classify_kind(kind, True)
    try:
        position = _KIND_ORDER.index(kind)
    except ValueError:
        position = len(_KIND_ORDER)
    return (_ROLE_ORDER[role], position, kind)


_SHORT_LABELS = {
    "ffn_gate_exps": "exp gate", "ffn_up_exps": "exp up", "ffn_down_exps": "exp down",
    "ffn_gate_up_exps": "exp gate+up", "ffn_gate_shexp": "sh gate", "ffn_up_shexp": "sh up",
    "ffn_down_shexp": "sh down", "attn_output": "attn out", "attn_kv_a_mqa": "kv_a_mqa",
    "shortconv.in_proj": "conv in", "shortconv.out_proj": "conv out",
    "nextn.eh_proj": "mtp eh", "nextn.shared_head_head": "mtp head",
    "nextn.embed_tokens": "mtp embd",
}


def kind_label(kind: str) -> str:
    """A short column label for a tensor kind."""
    return _SHORT_LABELS.get(kind, kind)
