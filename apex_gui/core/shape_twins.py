"""Sparse "shape twins" of big MoE models.

A shape twin is a GGUF file with the real header, the real metadata keys and the real tensor
table (names, shapes, types, offsets) of a published model, whose data region is a file hole:
the header is written, then the file is truncated up to its full size. A 400B twin costs a few
MB of disk, opens in the inspector like the real file and loads in ``llama-quantize --dry-run``
(llama.cpp reads hyperparameters and the tensor table, never the data, in a dry run).

Layouts follow llama.cpp's loaders (``src/models/<arch>.cpp``: which tensors each arch creates,
with which shapes) and its converter (``convert_hf_to_gguf.py`` / ``conversion/``: which keys
and which tensor types a real conversion writes). Hyperparameters are the published ones where
known; guesses are marked in comments next to the layout.

Qt-free; depends only on the standard library and ``gguf`` (for the quant block sizes).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

__all__ = [
    "TWIN_LAYOUTS",
    "TwinLayout",
    "TwinTensor",
    "twin_tensors",
    "twin_parameter_count",
    "write_mmproj_twin",
    "write_shape_twin",
]

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32  # general.alignment default; llama.cpp and gguf-split use it

TensorTypes = Callable[[str, tuple[int, ...]], str] | Mapping[str, str] | None


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwinLayout:
    """Hyperparameters of one published model, enough to rebuild its GGUF tensor table.

    Shapes use ggml order (``ne0`` first: the row length), as GGUF stores them.
    """

    name: str
    arch: str
    display_name: str
    n_layer: int  # trunk decoder blocks (without MTP / nextn blocks)
    n_embd: int
    n_vocab: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int  # dense FFN width (leading dense layers; also the expert width for llama/olmoe/granitemoe)
    n_expert: int
    n_expert_used: int
    n_ff_exp: int = 0
    n_expert_shared: int = 0
    n_ff_shexp: int = 0
    n_dense_lead: int = 0
    n_nextn: int = 0  # MTP / nextn blocks appended after the trunk (block_count = n_layer + n_nextn)
    context_length: int = 4096
    rope_freq_base: float = 10000.0
    rope_dim: int = 0  # 0: head_dim
    rms_eps: float = 1e-6
    tied_embeddings: bool = False
    attn_bias: bool = False  # q/k/v biases
    # tokenizer: "gpt2" (byte-level BPE: tokens, token_type, merges) or "llama" (SPM: + scores)
    tokenizer: str = "gpt2"
    tokenizer_pre: str = "default"
    bos_token_id: int | None = None
    eos_token_id: int = 2
    # hybrid / arch-specific shapes
    full_attention_interval: int = 0  # qwen35moe: every Nth layer is full attention
    ssm_conv_kernel: int = 0
    ssm_state_size: int = 0  # head_k_dim == head_v_dim
    ssm_group_count: int = 0  # linear-attention key heads
    ssm_time_step_rank: int = 0  # linear-attention value heads
    attention_layers: tuple[int, ...] = ()  # lfm2moe: which layers are attention (rest short-conv)
    shortconv_l_cache: int = 0
    sliding_window: int = 0
    q_lora_rank: int = 0  # MLA
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    fused_gate_up_exps: bool = False  # ffn_gate_up_exps instead of ffn_gate_exps + ffn_up_exps
    mla_kv_b: bool = False  # MLA: one attn_kv_b (older DeepSeek conversions) instead of k_b + v_b
    native_expert_type: str | None = None  # e.g. MXFP4 for gpt-oss: the type a real file ships
    # arch-specific metadata written as-is ("{arch}." is prefixed to keys starting with ".")
    extra_kv: tuple[tuple[str, object], ...] = ()
    # published figures, for tests and for the report
    published_total_params: float = 0.0
    published_active_params: float = 0.0
    notes: str = ""
    size_label: str = ""
    basename: str = ""  # general.basename; default: display name up to the first "-"

    @property
    def block_count(self) -> int:
        return self.n_layer + self.n_nextn


#: The layouts the app and the tests know, by short name.
TWIN_LAYOUTS: dict[str, TwinLayout] = {}


def _register(layout: TwinLayout) -> TwinLayout:
    TWIN_LAYOUTS[layout.name] = layout
    return layout


_register(TwinLayout(
    # Qwen/Qwen3.5-35B-A3B text config: hybrid Gated DeltaNet (3 of 4 layers) + gated full
    # attention (every 4th layer), 256 experts (8 routed + 1 shared, both 512 wide), MTP head
    # (mtp_num_hidden_layers = 1) converted as block 40 with nextn.* tensors.
    name="qwen3.5-35b-a3b", arch="qwen35moe", display_name="Qwen3.5-35B-A3B", size_label="35B-A3B",
    n_layer=40, n_nextn=1, n_embd=2048, n_vocab=248320,
    n_head=16, n_head_kv=2, head_dim=256, rope_dim=64,  # partial_rotary_factor 0.25
    n_ff=0, n_expert=256, n_expert_used=8, n_ff_exp=512, n_expert_shared=1, n_ff_shexp=512,
    context_length=262144, rope_freq_base=10_000_000.0, rms_eps=1e-6,
    full_attention_interval=4, ssm_conv_kernel=4, ssm_state_size=128, ssm_group_count=16,
    ssm_time_step_rank=32,
    tokenizer="gpt2", tokenizer_pre="qwen35", bos_token_id=None, eos_token_id=248046,
    extra_kv=((".rope.dimension_sections", [11, 11, 10, 0]),),
    published_total_params=35e9, published_active_params=3e9,
    notes="The published F16 file (64.6 GiB) was converted without the MTP block; current "
          "conversions keep it (block 40), which adds ~0.84B parameters (~1.6 GiB in BF16).",
))

_register(TwinLayout(
    # arcee-ai/Trinity-Large (AfmoeForCausalLM): 60 layers (6 leading dense), 3072 dim,
    # 48 query / 8 KV heads (head_dim 128), 256 experts + 1 shared, top-4, sigmoid routing,
    # gated attention, sandwich norms, 3 sliding-window (4096) : 1 global layers.
    # Guessed (not verified against config.json): moe_intermediate_size 3072, dense
    # intermediate_size 12288, route_scale 2.826, rope_theta 10000, context 262144.
    name="trinity-large-399b", arch="afmoe", display_name="Trinity-Large-Thinking",
    size_label="399B-A13B",
    n_layer=60, n_embd=3072, n_vocab=200192, n_head=48, n_head_kv=8, head_dim=128,
    n_ff=12288, n_expert=256, n_expert_used=4, n_ff_exp=3072, n_expert_shared=1,
    n_dense_lead=6, context_length=262144, rope_freq_base=10000.0, rms_eps=1e-5,
    sliding_window=4096, tokenizer="gpt2", tokenizer_pre="afmoe", bos_token_id=0,
    eos_token_id=3,
    extra_kv=((".expert_gating_func", ("u32", 2)), (".expert_weights_norm", True),
              (".expert_weights_scale", ("f32", 2.826))),
    published_total_params=399e9, published_active_params=13e9,
    notes="moe/dense FFN widths, route scale and rope base are plausible guesses.",
))

_register(TwinLayout(
    # mistralai/Mistral-Small-4-119B-2603: DeepSeek-V2 style MLA (q_lora 1024, kv_lora 256)
    # with 128 experts + 1 shared, top-4, all 36 layers MoE, experts stored fused
    # (ffn_gate_up_exps) by the converter. Guessed: 32 heads, qk_nope/qk_rope 64/64,
    # v_head_dim 128, moe_intermediate_size 2048 (gives 119.4B total / ~6.5B active as
    # published).
    name="mistral-small-4-119b", arch="mistral4", display_name="Mistral-Small-4-119B-2603",
    size_label="119B-A6.5B",
    n_layer=36, n_embd=4096, n_vocab=131072, n_head=32, n_head_kv=1, head_dim=128,
    n_ff=12288, n_expert=128, n_expert_used=4, n_ff_exp=2048, n_expert_shared=1,
    q_lora_rank=1024, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=64,
    v_head_dim=128, fused_gate_up_exps=True,
    context_length=1048576, rope_freq_base=10000.0, rms_eps=1e-6,
    tokenizer="gpt2", tokenizer_pre="tekken", bos_token_id=1, eos_token_id=2,
    extra_kv=((".expert_gating_func", ("u32", 1)), (".expert_weights_norm", True),
              (".expert_weights_scale", ("f32", 1.0)),
              (".rope.scaling.type", "yarn"), (".rope.scaling.factor", ("f32", 128.0)),
              (".rope.scaling.original_context_length", ("u32", 8192)),
              (".rope.scaling.yarn_log_multiplier", ("f32", 0.1))),
    published_total_params=119e9, published_active_params=6.5e9,
    notes="head count, MLA head dims and expert width are plausible guesses that match the "
          "published totals.",
))

_register(TwinLayout(
    # LiquidAI/LFM2.5-8B-A1B (lfm2moe): 24 layers, 2 leading dense, 18 short-conv + 6 GQA
    # layers, 32 experts top-4, no shared expert, tied embeddings, sigmoid routing with bias.
    name="lfm2.5-8b-a1b", arch="lfm2moe", display_name="LFM2.5-8B-A1B", size_label="8B-A1B",
    n_layer=24, n_embd=2048, n_vocab=65536, n_head=32, n_head_kv=8, head_dim=64,
    n_ff=7168, n_expert=32, n_expert_used=4, n_ff_exp=1792, n_dense_lead=2,
    attention_layers=(2, 6, 10, 14, 18, 21), shortconv_l_cache=3,
    context_length=128000, rope_freq_base=1_000_000.0, rms_eps=1e-5, tied_embeddings=True,
    tokenizer="gpt2", tokenizer_pre="lfm2", bos_token_id=1, eos_token_id=7,
    extra_kv=((".expert_gating_func", ("u32", 2)), (".expert_weights_norm", True)),
    published_total_params=8.3e9, published_active_params=1.5e9,
))

_register(TwinLayout(
    name="qwen3-30b-a3b", arch="qwen3moe", display_name="Qwen3-30B-A3B", size_label="30B-A3B",
    n_layer=48, n_embd=2048, n_vocab=151936, n_head=32, n_head_kv=4, head_dim=128,
    n_ff=6144, n_expert=128, n_expert_used=8, n_ff_exp=768,
    context_length=40960, rope_freq_base=1_000_000.0, rms_eps=1e-6,
    tokenizer="gpt2", tokenizer_pre="qwen2", bos_token_id=151643, eos_token_id=151645,
    published_total_params=30.5e9, published_active_params=3.3e9,
))

_register(TwinLayout(
    # Qwen/Qwen1.5-MoE-A2.7B: 60 experts top-4 (1408 wide: not a multiple of 256, so K-quants
    # fall back on ffn_down_exps) + a gated 5632-wide shared expert; q/k/v biases.
    name="qwen1.5-moe-a2.7b", arch="qwen2moe", display_name="Qwen1.5-MoE-A2.7B",
    size_label="14B-A2.7B",
    n_layer=24, n_embd=2048, n_vocab=151936, n_head=16, n_head_kv=16, head_dim=128,
    n_ff=5632, n_expert=60, n_expert_used=4, n_ff_exp=1408, n_expert_shared=1, n_ff_shexp=5632,
    context_length=8192, rope_freq_base=1_000_000.0, rms_eps=1e-6, attn_bias=True,
    tokenizer="gpt2", tokenizer_pre="qwen2", bos_token_id=151643, eos_token_id=151643,
    published_total_params=14.3e9, published_active_params=2.7e9,
))

_register(TwinLayout(
    # mistralai/Mixtral-8x7B-v0.1: arch "llama" with 8 experts top-2 (expert width = n_ff).
    name="mixtral-8x7b", arch="llama", display_name="Mixtral-8x7B-v0.1", size_label="8x7B",
    n_layer=32, n_embd=4096, n_vocab=32000, n_head=32, n_head_kv=8, head_dim=128,
    n_ff=14336, n_expert=8, n_expert_used=2,
    context_length=32768, rope_freq_base=1_000_000.0, rms_eps=1e-5,
    tokenizer="llama", tokenizer_pre="default", bos_token_id=1, eos_token_id=2,
    published_total_params=46.7e9, published_active_params=12.9e9,
))

_register(TwinLayout(
    # openai/gpt-oss-20b: 24 layers alternating sliding (128) / full attention, attention
    # sinks, biases everywhere, 32 experts top-4; the real GGUF ships MXFP4 experts.
    name="gpt-oss-20b", arch="gpt-oss", display_name="gpt-oss-20b", size_label="20B",
    basename="gpt-oss",
    n_layer=24, n_embd=2880, n_vocab=201088, n_head=64, n_head_kv=8, head_dim=64,
    n_ff=0, n_expert=32, n_expert_used=4, n_ff_exp=2880, attn_bias=True,
    context_length=131072, rope_freq_base=150000.0, rms_eps=1e-5, sliding_window=128,
    native_expert_type="MXFP4",
    tokenizer="gpt2", tokenizer_pre="gpt-4o", bos_token_id=199998, eos_token_id=200002,
    extra_kv=((".rope.scaling.type", "yarn"), (".rope.scaling.factor", ("f32", 32.0)),
              (".rope.scaling.original_context_length", ("u32", 4096))),
    published_total_params=20.9e9, published_active_params=3.6e9,
))

_register(TwinLayout(
    # zai-org/GLM-4.5-Air: 46 layers (layer 0 dense) + 1 MTP/nextn block, 96 heads / 8 KV,
    # partial rope (64 of 128), q/k/v biases, 128 experts top-8 + 1 shared, sigmoid routing.
    # The nextn block is written with eh_proj/enorm/hnorm/shared_head_norm (its optional
    # embed_tokens / shared_head_head copies are left out).
    name="glm-4.5-air", arch="glm4moe", display_name="GLM-4.5-Air", size_label="106B-A12B",
    n_layer=46, n_nextn=1, n_embd=4096, n_vocab=151552, n_head=96, n_head_kv=8, head_dim=128,
    rope_dim=64, n_ff=10944, n_expert=128, n_expert_used=8, n_ff_exp=1408, n_expert_shared=1,
    n_dense_lead=1, context_length=131072, rope_freq_base=1_000_000.0, rms_eps=1e-5,
    attn_bias=True, tokenizer="gpt2", tokenizer_pre="glm4", bos_token_id=151329,
    eos_token_id=151329,
    extra_kv=((".expert_gating_func", ("u32", 2)), (".expert_weights_norm", True),
              (".expert_weights_scale", ("f32", 1.0))),
    published_total_params=106e9, published_active_params=12e9,
))

_register(TwinLayout(
    # allenai/OLMoE-1B-7B-0924: 64 experts top-8 (1024 wide), full-width q/k norms.
    name="olmoe-1b-7b", arch="olmoe", display_name="OLMoE-1B-7B-0924", size_label="7B-A1B",
    n_layer=16, n_embd=2048, n_vocab=50304, n_head=16, n_head_kv=16, head_dim=128,
    n_ff=1024, n_expert=64, n_expert_used=8,
    context_length=4096, rope_freq_base=10000.0, rms_eps=1e-5,
    tokenizer="gpt2", tokenizer_pre="olmo", bos_token_id=None, eos_token_id=50279,
    published_total_params=6.9e9, published_active_params=1.3e9,
))

_register(TwinLayout(
    # ibm-granite/granite-3.0-3b-a800m: 40 experts top-8 (512 wide), tied embeddings, muP
    # scales.
    name="granite-3.0-3b-a800m", arch="granitemoe", display_name="granite-3.0-3b-a800m",
    size_label="3B-A800M",
    n_layer=32, n_embd=1536, n_vocab=49155, n_head=24, n_head_kv=8, head_dim=64,
    n_ff=512, n_expert=40, n_expert_used=8,
    context_length=4096, rope_freq_base=10000.0, rms_eps=1e-6, tied_embeddings=True,
    tokenizer="gpt2", tokenizer_pre="refact", bos_token_id=0, eos_token_id=0,
    extra_kv=((".logit_scale", ("f32", 6.0)), (".residual_scale", ("f32", 0.22)),
              (".embedding_scale", ("f32", 12.0)), (".attention.scale", ("f32", 0.015625))),
    published_total_params=3.3e9, published_active_params=0.8e9,
))


# --------------------------------------------------------------------------------------------
# tensor tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwinTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Table:
    def __init__(self) -> None:
        self.tensors: list[TwinTensor] = []

    def add(self, name: str, *shape: int) -> None:
        self.tensors.append(TwinTensor(name, tuple(int(d) for d in shape)))


def _blk(i: int, what: str) -> str:
    return f"blk.{i}.{what}"


def _qkv(t: _Table, i: int, n_embd: int, n_q: int, n_k: int, n_v: int, bias: bool) -> None:
    t.add(_blk(i, "attn_q.weight"), n_embd, n_q)
    t.add(_blk(i, "attn_k.weight"), n_embd, n_k)
    t.add(_blk(i, "attn_v.weight"), n_embd, n_v)
    if bias:
        t.add(_blk(i, "attn_q.bias"), n_q)
        t.add(_blk(i, "attn_k.bias"), n_k)
        t.add(_blk(i, "attn_v.bias"), n_v)


def _routed_experts(t: _Table, i: int, n_embd: int, n_ff: int, n_expert: int,
                    fused: bool = False) -> None:
    if fused:
        t.add(_blk(i, "ffn_gate_up_exps.weight"), n_embd, 2 * n_ff, n_expert)
    else:
        t.add(_blk(i, "ffn_gate_exps.weight"), n_embd, n_ff, n_expert)
        t.add(_blk(i, "ffn_up_exps.weight"), n_embd, n_ff, n_expert)
    t.add(_blk(i, "ffn_down_exps.weight"), n_ff, n_embd, n_expert)


def _shared_expert(t: _Table, i: int, n_embd: int, n_ff: int) -> None:
    t.add(_blk(i, "ffn_gate_shexp.weight"), n_embd, n_ff)
    t.add(_blk(i, "ffn_up_shexp.weight"), n_embd, n_ff)
    t.add(_blk(i, "ffn_down_shexp.weight"), n_ff, n_embd)


def _dense_ffn(t: _Table, i: int, n_embd: int, n_ff: int) -> None:
    t.add(_blk(i, "ffn_gate.weight"), n_embd, n_ff)
    t.add(_blk(i, "ffn_up.weight"), n_embd, n_ff)
    t.add(_blk(i, "ffn_down.weight"), n_ff, n_embd)


def _embeddings(t: _Table, L: TwinLayout, output_norm: str = "output_norm.weight") -> None:
    t.add("token_embd.weight", L.n_embd, L.n_vocab)
    t.add(output_norm, L.n_embd)
    if not L.tied_embeddings:
        t.add("output.weight", L.n_embd, L.n_vocab)


def _nextn(t: _Table, i: int, n_embd: int) -> None:
    t.add(_blk(i, "nextn.eh_proj.weight"), 2 * n_embd, n_embd)
    t.add(_blk(i, "nextn.enorm.weight"), n_embd)
    t.add(_blk(i, "nextn.hnorm.weight"), n_embd)
    t.add(_blk(i, "nextn.shared_head_norm.weight"), n_embd)


def _tensors_qwen35moe(L: TwinLayout) -> list[TwinTensor]:
    t = _Table()
    _embeddings(t, L)
    e, hd = L.n_embd, L.head_dim
    key_dim = L.ssm_state_size * L.ssm_group_count
    value_dim = L.ssm_state_size * L.ssm_time_step_rank
    for i in range(L.block_count):
        mtp = i >= L.n_layer
        recurrent = not mtp and (i + 1) % L.full_attention_interval != 0
        t.add(_blk(i, "attn_norm.weight"), e)
        t.add(_blk(i, "post_attention_norm.weight"), e)
        if recurrent:
            t.add(_blk(i, "attn_qkv.weight"), e, key_dim * 2 + value_dim)
            t.add(_blk(i, "attn_gate.weight"), e, value_dim)
            t.add(_blk(i, "ssm_conv1d.weight"), L.ssm_conv_kernel, key_dim * 2 + value_dim)
            t.add(_blk(i, "ssm_dt.bias"), L.ssm_time_step_rank)
            t.add(_blk(i, "ssm_a"), L.ssm_time_step_rank)
            t.add(_blk(i, "ssm_beta.weight"), e, L.ssm_time_step_rank)
            t.add(_blk(i, "ssm_alpha.weight"), e, L.ssm_time_step_rank)
            t.add(_blk(i, "ssm_norm.weight"), L.ssm_state_size)
            t.add(_blk(i, "ssm_out.weight"), value_dim, e)
        else:
            # gated full attention: attn_q carries the query and its output gate
            _qkv(t, i, e, hd * L.n_head * 2, hd * L.n_head_kv, hd * L.n_head_kv, False)
            t.add(_blk(i, "attn_output.weight"), hd * L.n_head, e)
            t.add(_blk(i, "attn_q_norm.weight"), hd)
            t.add(_blk(i, "attn_k_norm.weight"), hd)
        t.add(_blk(i, "ffn_gate_inp.weight"), e, L.n_expert)
        _routed_experts(t, i, e, L.n_ff_exp, L.n_expert)
        t.add(_blk(i, "ffn_gate_inp_shexp.weight"), e)
        _shared_expert(t, i, e, L.n_ff_shexp)
        if mtp:
            _nextn(t, i, e)
    return t.tensors


def _tensors_afmoe(L: TwinLayout) -> list[TwinTensor]:
    t = _Table()
    _embeddings(t, L)
    e, hd = L.n_embd, L.head_dim
    for i in range(L.n_layer):
        t.add(_blk(i, "attn_norm.weight"), e)
        t.add(_blk(i, "post_attention_norm.weight"), e)
        _qkv(t, i, e, hd * L.n_head, hd * L.n_head_kv, hd * L.n_head_kv, L.attn_bias)
        t.add(_blk(i, "attn_output.weight"), hd * L.n_head, e)
        t.add(_blk(i, "attn_q_norm.weight"), hd)
        t.add(_blk(i, "attn_k_norm.weight"), hd)
        t.add(_blk(i, "attn_gate.weight"), e, hd * L.n_head)
        t.add(_blk(i, "ffn_norm.weight"), e)
        t.add(_blk(i, "post_ffw_norm.weight"), e)
        if i >= L.n_dense_lead:
            t.add(_blk(i, "ffn_gate_inp.weight"), e, L.n_expert)
            t.add(_blk(i, "exp_probs_b.bias"), L.n_expert)
            _routed_experts(t, i, e, L.n_ff_exp, L.n_expert)
            if L.n_expert_shared:
                _shared_expert(t, i, e, L.n_ff_exp * L.n_expert_shared)
        else:
            _dense_ffn(t, i, e, L.n_ff)
    return t.tensors


def _tensors_mla(L: TwinLayout) -> list[TwinTensor]:
    """deepseek2 / mistral4: MLA attention with split k_b / v_b (as current conversions)."""
    t = _Table()
    _embeddings(t, L)
    e = L.n_embd
    qk_head = L.qk_nope_head_dim + L.qk_rope_head_dim
    for i in range(L.block_count):
        t.add(_blk(i, "attn_norm.weight"), e)
        if L.q_lora_rank:
            t.add(_blk(i, "attn_q_a_norm.weight"), L.q_lora_rank)
        t.add(_blk(i, "attn_kv_a_norm.weight"), L.kv_lora_rank)
        if L.q_lora_rank:
            t.add(_blk(i, "attn_q_a.weight"), e, L.q_lora_rank)
            t.add(_blk(i, "attn_q_b.weight"), L.q_lora_rank, L.n_head * qk_head)
        else:
            t.add(_blk(i, "attn_q.weight"), e, L.n_head * qk_head)
        t.add(_blk(i, "attn_kv_a_mqa.weight"), e, L.kv_lora_rank + L.qk_rope_head_dim)
        if L.mla_kv_b:
            t.add(_blk(i, "attn_kv_b.weight"), L.kv_lora_rank,
                  L.n_head * (L.qk_nope_head_dim + L.v_head_dim))
        else:
            t.add(_blk(i, "attn_k_b.weight"), L.qk_nope_head_dim, L.kv_lora_rank, L.n_head)
            t.add(_blk(i, "attn_v_b.weight"), L.kv_lora_rank, L.v_head_dim, L.n_head)
        t.add(_blk(i, "attn_output.weight"), L.n_head * L.v_head_dim, e)
        t.add(_blk(i, "ffn_norm.weight"), e)
        if i < L.n_dense_lead:
            _dense_ffn(t, i, e, L.n_ff)
        else:
            t.add(_blk(i, "ffn_gate_inp.weight"), e, L.n_expert)
            _routed_experts(t, i, e, L.n_ff_exp, L.n_expert, L.fused_gate_up_exps)
            _shared_expert(t, i, e, L.n_ff_exp * L.n_expert_shared)
        if i >= L.n_layer:
            _nextn(t, i, e)
    return t.tensors


def _tensors_lfm2moe(L: TwinLayout) -> list[TwinTensor]:
    t = _Table()
    _embeddings(t, L, output_norm="token_embd_norm.weight")
    e, hd = L.n_embd, L.head_dim
    for i in range(L.n_layer):
        t.add(_blk(i, "ffn_norm.weight"), e)
        if i >= L.n_dense_lead:
            t.add(_blk(i, "ffn_gate_inp.weight"), e, L.n_expert)
            _routed_experts(t, i, e, L.n_ff_exp, L.n_expert)
            t.add(_blk(i, "exp_probs_b.bias"), L.n_expert)
        else:
            _dense_ffn(t, i, e, L.n_ff)
        t.add(_blk(i, "attn_norm.weight"), e)
        if i in L.attention_layers:
            t.add(_blk(i, "attn_q_norm.weight"), hd)
            t.add(_blk(i, "attn_k_norm.weight"), hd)
            _qkv(t, i, e, e, hd * L.n_head_kv, hd * L.n_head_kv, False)
            t.add(_blk(i, "attn_output.weight"), e, e)
        else:
            t.add(_blk(i, "shortconv.conv.weight"), L.shortconv_l_cache, e)
            t.add(_blk(i, "shortconv.in_proj.weight"), e, 3 * e)
            t.add(_blk(i, "shortconv.out_proj.weight"), e, e)
    return t.tensors


def _tensors_standard_moe(L: TwinLayout) -> list[TwinTensor]:
    """qwen3moe, qwen2moe, llama (Mixtral), olmoe, granitemoe."""
    t = _Table()
    _embeddings(t, L)
    e, hd = L.n_embd, L.head_dim
    n_ff_exp = L.n_ff_exp or L.n_ff
    for i in range(L.n_layer):
        t.add(_blk(i, "attn_norm.weight"), e)
        _qkv(t, i, e, hd * L.n_head, hd * L.n_head_kv, hd * L.n_head_kv, L.attn_bias)
        t.add(_blk(i, "attn_output.weight"), hd * L.n_head, e)
        if L.arch == "qwen3moe":
            t.add(_blk(i, "attn_k_norm.weight"), hd)
            t.add(_blk(i, "attn_q_norm.weight"), hd)
        elif L.arch == "olmoe":  # OLMoE normalises the whole q / k projections
            t.add(_blk(i, "attn_q_norm.weight"), e)
            t.add(_blk(i, "attn_k_norm.weight"), e)
        t.add(_blk(i, "ffn_norm.weight"), e)
        t.add(_blk(i, "ffn_gate_inp.weight"), e, L.n_expert)
        _routed_experts(t, i, e, n_ff_exp, L.n_expert)
        if L.arch == "qwen2moe":
            t.add(_blk(i, "ffn_gate_inp_shexp.weight"), e)
            _shared_expert(t, i, e, L.n_ff_shexp)
    return t.tensors


def _tensors_gpt_oss(L: TwinLayout) -> list[TwinTensor]:
    t = _Table()
    _embeddings(t, L)
    e, hd = L.n_embd, L.head_dim
    for i in range(L.n_layer):
        t.add(_blk(i, "attn_norm.weight"), e)
        t.add(_blk(i, "post_attention_norm.weight"), e)
        _qkv(t, i, e, hd * L.n_head, hd * L.n_head_kv, hd * L.n_head_kv, True)
        t.add(_blk(i, "attn_output.weight"), hd * L.n_head, e)
        t.add(_blk(i, "attn_output.bias"), e)
        t.add(_blk(i, "attn_sinks.weight"), L.n_head)
        t.add(_blk(i, "ffn_gate_inp.weight"), e, L.n_expert)
        t.add(_blk(i, "ffn_gate_inp.bias"), L.n_expert)
        _routed_experts(t, i, e, L.n_ff_exp, L.n_expert)
        t.add(_blk(i, "ffn_gate_exps.bias"), L.n_ff_exp, L.n_expert)
        t.add(_blk(i, "ffn_up_exps.bias"), L.n_ff_exp, L.n_expert)
        t.add(_blk(i, "ffn_down_exps.bias"), e, L.n_expert)
    return t.tensors


def _tensors_glm4moe(L: TwinLayout) -> list[TwinTensor]:
    t = _Table()
    _embeddings(t, L)
    e, hd = L.n_embd, L.head_dim
    for i in range(L.block_count):
        t.add(_blk(i, "attn_norm.weight"), e)
        _qkv(t, i, e, hd * L.n_head, hd * L.n_head_kv, hd * L.n_head_kv, L.attn_bias)
        t.add(_blk(i, "attn_output.weight"), hd * L.n_head, e)
        t.add(_blk(i, "post_attention_norm.weight"), e)
        if i >= L.n_dense_lead:
            t.add(_blk(i, "ffn_gate_inp.weight"), e, L.n_expert)
            t.add(_blk(i, "exp_probs_b.bias"), L.n_expert)
            _routed_experts(t, i, e, L.n_ff_exp, L.n_expert)
            _shared_expert(t, i, e, L.n_ff_exp * L.n_expert_shared)
        else:
            _dense_ffn(t, i, e, L.n_ff)
        if i >= L.n_layer:
            _nextn(t, i, e)
    return t.tensors


_TENSOR_BUILDERS: dict[str, Callable[[TwinLayout], list[TwinTensor]]] = {
    "qwen35moe": _tensors_qwen35moe,
    "afmoe": _tensors_afmoe,
    "mistral4": _tensors_mla,
    "deepseek2": _tensors_mla,
    "lfm2moe": _tensors_lfm2moe,
    "qwen3moe": _tensors_standard_moe,
    "qwen2moe": _tensors_standard_moe,
    "llama": _tensors_standard_moe,
    "olmoe": _tensors_standard_moe,
    "granitemoe": _tensors_standard_moe,
    "gpt-oss": _tensors_gpt_oss,
    "glm4moe": _tensors_glm4moe,
}


def resolve_layout(layout: str | TwinLayout) -> TwinLayout:
    """The layout itself, or the registered layout of that name (clear error otherwise)."""
    if isinstance(layout, TwinLayout):
        return layout
    try:
        return TWIN_LAYOUTS[layout]
    except KeyError:
        known = ", ".join(sorted(TWIN_LAYOUTS))
        raise KeyError(f"unknown shape-twin layout {layout!r}; known layouts: {known}") from None


def twin_tensors(layout: str | TwinLayout) -> list[TwinTensor]:
    """The tensor table (names and ggml shapes) a real conversion of this model has."""
    L = resolve_layout(layout)
    try:
        builder = _TENSOR_BUILDERS[L.arch]
    except KeyError:
        raise ValueError(f"no tensor table for architecture {L.arch!r}") from None
    return builder(L)


def twin_parameter_count(layout: str | TwinLayout) -> int:
    """Total parameters in the twin's tensor table."""
    return sum(t.n_elements for t in twin_tensors(layout))


# --------------------------------------------------------------------------------------------
# tensor types
# --------------------------------------------------------------------------------------------

# What convert_hf_to_gguf keeps in F32 whatever the output type (besides 1-D tensors, norms and
# tensors whose name does not end in ".weight").
_ALWAYS_F32_PARTS = (".ffn_gate_inp.", ".ffn_gate_inp_shexp.", ".ssm_conv1d.", ".shortconv.conv.")


def _ggml_type(name: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType[name.upper()]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}") from None


def _default_type(layout: TwinLayout, name: str, shape: tuple[int, ...], dtype: str) -> str:
    if (len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
            or any(p in name for p in _ALWAYS_F32_PARTS)):
        return "F32"
    if layout.native_expert_type and "_exps." in name:
        return layout.native_expert_type
    return dtype.upper()


def _tensor_nbytes(type_: GGMLQuantizationType, shape: tuple[int, ...], name: str) -> int:
    block, type_size = GGML_QUANT_SIZES[type_]
    if shape[0] % block:
        raise ValueError(
            f"tensor {name}: row length {shape[0]} is not a multiple of the {type_.name} block "
            f"size {block}; pick another type for it")
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


_FILE_TYPE_BY_GGML: dict[str, LlamaFileType] = {
    "F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16,
    "BF16": LlamaFileType.MOSTLY_BF16, "Q4_0": LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": LlamaFileType.MOSTLY_Q4_1, "Q5_0": LlamaFileType.MOSTLY_Q5_0,
    "Q5_1": LlamaFileType.MOSTLY_Q5_1, "Q8_0": LlamaFileType.MOSTLY_Q8_0,
    "Q2_K": LlamaFileType.MOSTLY_Q2_K, "Q3_K": LlamaFileType.MOSTLY_Q3_K_M,
    "Q4_K": LlamaFileType.MOSTLY_Q4_K_M, "Q5_K": LlamaFileType.MOSTLY_Q5_K_M,
    "Q6_K": LlamaFileType.MOSTLY_Q6_K, "IQ2_XXS": LlamaFileType.MOSTLY_IQ2_XXS,
    "IQ2_XS": LlamaFileType.MOSTLY_IQ2_XS, "IQ2_S": LlamaFileType.MOSTLY_IQ2_S,
    "IQ3_XXS": LlamaFileType.MOSTLY_IQ3_XXS, "IQ3_S": LlamaFileType.MOSTLY_IQ3_S,
    "IQ1_S": LlamaFileType.MOSTLY_IQ1_S, "IQ1_M": LlamaFileType.MOSTLY_IQ1_M,
    "IQ4_NL": LlamaFileType.MOSTLY_IQ4_NL, "IQ4_XS": LlamaFileType.MOSTLY_IQ4_XS,
    "TQ1_0": LlamaFileType.MOSTLY_TQ1_0, "TQ2_0": LlamaFileType.MOSTLY_TQ2_0,
    "MXFP4": LlamaFileType.MOSTLY_MXFP4_MOE,
}


def _infer_file_type(bytes_by_type: Mapping[str, int]) -> int:
    """general.file_type as llama.cpp would label the mixture: its dominant quantized type."""
    quantized = {t: b for t, b in bytes_by_type.items() if t not in ("F32", "F16", "BF16")}
    pool = quantized or {t: b for t, b in bytes_by_type.items() if t != "F32"} or bytes_by_type
    dominant = max(pool, key=lambda t: pool[t])
    ft = _FILE_TYPE_BY_GGML.get(dominant)
    return int(ft) if ft is not None else int(LlamaFileType.GUESSED)


def _resolve_types(layout: TwinLayout, tensors: list[TwinTensor], dtype: str,
                   tensor_types: TensorTypes) -> list[GGMLQuantizationType]:
    _ggml_type(dtype)  # validate early
    out: list[GGMLQuantizationType] = []
    for t in tensors:
        chosen: str | None = None
        if callable(tensor_types):
            chosen = tensor_types(t.name, t.shape)
        elif tensor_types is not None:
            chosen = tensor_types.get(t.name)
        out.append(_ggml_type(chosen or _default_type(layout, t.name, t.shape, dtype)))
    return out


# --------------------------------------------------------------------------------------------
# GGUF encoding
# --------------------------------------------------------------------------------------------

_T_U8, _T_I8, _T_U16, _T_I16, _T_U32, _T_I32, _T_F32, _T_BOOL, _T_STR, _T_ARR, _T_U64, _T_I64, \
    _T_F64 = range(13)
_SCALAR_FMT = {"u8": (_T_U8, "<B"), "i8": (_T_I8, "<b"), "u16": (_T_U16, "<H"),
               "i16": (_T_I16, "<h"), "u32": (_T_U32, "<I"), "i32": (_T_I32, "<i"),
               "f32": (_T_F32, "<f"), "u64": (_T_U64, "<Q"), "i64": (_T_I64, "<q"),
               "f64": (_T_F64, "<d"), "bool": (_T_BOOL, "<?")}


def _gguf_str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


class _Typed:
    """A pre-encoded value (type id + payload); used for the big tokenizer arrays."""

    __slots__ = ("type_id", "payload")

    def __init__(self, type_id: int, payload: bytes) -> None:
        self.type_id = type_id
        self.payload = payload


_PACK_U64 = struct.Struct("<Q").pack


def _str_array(items: Iterable[str]) -> _Typed:
    encoded = [s.encode("utf-8") for s in items]
    body = b"".join([_PACK_U64(len(b)) + b for b in encoded])
    return _Typed(_T_ARR, struct.pack("<IQ", _T_STR, len(encoded)) + body)


def _num_array(kind: str, values: Iterable[float | int]) -> _Typed:
    vals = list(values)
    type_id, fmt = _SCALAR_FMT[kind]
    body = struct.pack("<" + fmt[1] * len(vals), *vals) if vals else b""
    return _Typed(_T_ARR, struct.pack("<IQ", type_id, len(vals)) + body)


def _encode_value(value: object) -> tuple[int, bytes]:
    if isinstance(value, _Typed):
        return value.type_id, value.payload
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        type_id, fmt = _SCALAR_FMT[value[0]]
        return type_id, struct.pack(fmt, value[1])
    if isinstance(value, bool):
        return _T_BOOL, struct.pack("<?", value)
    if isinstance(value, int):
        return _T_U32, struct.pack("<I", value)
    if isinstance(value, float):
        return _T_F32, struct.pack("<f", value)
    if isinstance(value, str):
        return _T_STR, _gguf_str(value)
    if isinstance(value, list):
        if all(isinstance(v, bool) for v in value):
            t = _num_array("bool", value)
        elif all(isinstance(v, int) for v in value):
            t = _num_array("i32", value)
        elif all(isinstance(v, float) for v in value):
            t = _num_array("f32", value)
        else:
            t = _str_array(str(v) for v in value)
        return t.type_id, t.payload
    raise TypeError(f"cannot encode metadata value {value!r}")


def _encode_kv(kv: list[tuple[str, object]]) -> bytes:
    out = bytearray()
    for key, value in kv:
        type_id, payload = _encode_value(value)
        out += _gguf_str(key)
        out += struct.pack("<I", type_id)
        out += payload
    return bytes(out)


def _pad(n: int, align: int = ALIGNMENT) -> int:
    return (n + align - 1) // align * align


@dataclass
class _Shard:
    kv: list[tuple[str, object]]
    tensors: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = field(
        default_factory=list)  # name, shape, type, nbytes


def _write_gguf_sparse(path: Path, shard: _Shard) -> None:
    """Write header + tensor infos, then extend the file to full size as a hole (atomic)."""
    header = bytearray()
    header += GGUF_MAGIC
    header += struct.pack("<IQQ", GGUF_VERSION, len(shard.tensors), len(shard.kv))
    header += _encode_kv(shard.kv)
    offset = 0
    for name, shape, type_, nbytes in shard.tensors:
        header += _gguf_str(name)
        header += struct.pack("<I", len(shape))
        header += struct.pack(f"<{len(shape)}Q", *shape)
        header += struct.pack("<IQ", int(type_), offset)
        offset += _pad(nbytes)
    data_start = _pad(len(header))
    header += b"\x00" * (data_start - len(header))
    total = data_start + offset

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.truncate(total)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> list[str]:
    """GPT-2 byte-level alphabet: the first 256 tokens of every byte-level BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]  # GPT-2 vocabulary order: printable bytes first


_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _tokenizer_kv(L: TwinLayout) -> list[tuple[str, object]]:
    """Synthetic tokens, but arrays of the real length and kind (the header size is real)."""
    key = (L.n_vocab, L.tokenizer, L.tokenizer_pre, L.bos_token_id, L.eos_token_id)
    cached = _TOKENIZER_CACHE.get(key)
    if cached is None:
        cached = _TOKENIZER_CACHE[key] = _build_tokenizer_kv(L)
    return cached


# Encoding a 250k-entry vocabulary takes a few tenths of a second; twins of one model share it.
_TOKENIZER_CACHE: dict[tuple[object, ...], list[tuple[str, object]]] = {}


def _build_tokenizer_kv(L: TwinLayout) -> list[tuple[str, object]]:
    n = L.n_vocab
    kv: list[tuple[str, object]] = [("tokenizer.ggml.model", L.tokenizer)]
    if L.tokenizer == "llama":
        specials = ["<unk>", "<s>", "</s>"]
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        rest = [f"\u2581tok{i}" for i in range(n - len(specials) - 256)]
        tokens = specials + byte_tokens + rest
        types = [2, 3, 3] + [6] * 256 + [1] * len(rest)
        scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(rest))]
        kv += [
            ("tokenizer.ggml.tokens", _str_array(tokens)),
            ("tokenizer.ggml.scores", _num_array("f32", scores)),
            ("tokenizer.ggml.token_type", _num_array("i32", types)),
        ]
    else:
        alphabet = _bytes_to_unicode()
        n_special = min(64, n // 100)
        n_regular = n - 256 - n_special
        tokens = alphabet + [f"tok{i}" for i in range(n_regular)] \
            + [f"<|special_{i}|>" for i in range(n_special)]
        types = [1] * (256 + n_regular) + [3] * n_special
        # a merge per learned token, as byte-level BPE vocabularies have
        merges = [f"{alphabet[i % 256]} tok{i}" for i in range(n_regular)]
        kv += [
            ("tokenizer.ggml.pre", L.tokenizer_pre),
            ("tokenizer.ggml.tokens", _str_array(tokens)),
            ("tokenizer.ggml.token_type", _num_array("i32", types)),
            ("tokenizer.ggml.merges", _str_array(merges)),
        ]
    if L.bos_token_id is not None:
        kv.append(("tokenizer.ggml.bos_token_id", ("u32", L.bos_token_id)))
    kv.append(("tokenizer.ggml.eos_token_id", ("u32", L.eos_token_id)))
    kv.append(("tokenizer.ggml.padding_token_id", ("u32", L.eos_token_id)))
    kv.append(("tokenizer.ggml.add_bos_token", L.bos_token_id is not None
               and L.tokenizer == "llama"))
    kv.append(("tokenizer.chat_template", _CHAT_TEMPLATE))
    return kv


def _arch_kv(L: TwinLayout) -> list[tuple[str, object]]:
    a = L.arch
    kv: list[tuple[str, object]] = [
        (f"{a}.block_count", ("u32", L.block_count)),
        (f"{a}.context_length", ("u32", L.context_length)),
        (f"{a}.embedding_length", ("u32", L.n_embd)),
    ]
    if L.n_ff:
        kv.append((f"{a}.feed_forward_length", ("u32", L.n_ff)))
    if a == "lfm2moe":
        heads_kv = [L.n_head_kv if i in L.attention_layers else 0 for i in range(L.n_layer)]
        kv += [(f"{a}.attention.head_count", ("u32", L.n_head)),
               (f"{a}.attention.head_count_kv", _num_array("i32", heads_kv))]
    else:
        kv += [(f"{a}.attention.head_count", ("u32", L.n_head)),
               (f"{a}.attention.head_count_kv", ("u32", L.n_head_kv))]
    kv += [(f"{a}.rope.freq_base", ("f32", L.rope_freq_base)),
           (f"{a}.attention.layer_norm_rms_epsilon", ("f32", L.rms_eps))]
    if a in ("mistral4", "deepseek2"):
        kv += [
            (f"{a}.vocab_size", ("u32", L.n_vocab)),
            (f"{a}.attention.q_lora_rank", ("u32", L.q_lora_rank)),
            (f"{a}.attention.kv_lora_rank", ("u32", L.kv_lora_rank)),
            (f"{a}.attention.key_length", ("u32", L.kv_lora_rank + L.qk_rope_head_dim)),
            (f"{a}.attention.value_length", ("u32", L.kv_lora_rank)),
            (f"{a}.attention.key_length_mla", ("u32", L.qk_nope_head_dim + L.qk_rope_head_dim)),
            (f"{a}.attention.value_length_mla", ("u32", L.v_head_dim)),
            (f"{a}.rope.dimension_count", ("u32", L.qk_rope_head_dim)),
        ]
    elif L.head_dim * L.n_head != L.n_embd or a in ("qwen35moe", "afmoe", "gpt-oss"):
        kv += [(f"{a}.attention.key_length", ("u32", L.head_dim)),
               (f"{a}.attention.value_length", ("u32", L.head_dim))]
    if a not in ("mistral4", "deepseek2"):
        kv.append((f"{a}.rope.dimension_count", ("u32", L.rope_dim or L.head_dim)))
    kv += [(f"{a}.expert_count", ("u32", L.n_expert)),
           (f"{a}.expert_used_count", ("u32", L.n_expert_used))]
    if L.n_ff_exp:
        kv.append((f"{a}.expert_feed_forward_length", ("u32", L.n_ff_exp)))
    if L.n_ff_shexp:
        kv.append((f"{a}.expert_shared_feed_forward_length", ("u32", L.n_ff_shexp)))
    if L.n_expert_shared and a in ("afmoe", "mistral4", "deepseek2", "glm4moe"):
        kv.append((f"{a}.expert_shared_count", ("u32", L.n_expert_shared)))
    if L.n_dense_lead or a in ("mistral4", "deepseek2"):
        kv.append((f"{a}.leading_dense_block_count", ("u32", L.n_dense_lead)))
    if L.n_nextn:
        kv.append((f"{a}.nextn_predict_layers", ("u32", L.n_nextn)))
    if L.sliding_window:
        kv.append((f"{a}.attention.sliding_window", ("u32", L.sliding_window)))
    if a == "qwen35moe":
        kv += [
            (f"{a}.ssm.conv_kernel", ("u32", L.ssm_conv_kernel)),
            (f"{a}.ssm.state_size", ("u32", L.ssm_state_size)),
            (f"{a}.ssm.group_count", ("u32", L.ssm_group_count)),
            (f"{a}.ssm.time_step_rank", ("u32", L.ssm_time_step_rank)),
            (f"{a}.ssm.inner_size", ("u32", L.ssm_state_size * L.ssm_time_step_rank)),
            (f"{a}.full_attention_interval", ("u32", L.full_attention_interval)),
        ]
    if a == "lfm2moe":
        kv.append((f"{a}.shortconv.l_cache", ("u32", L.shortconv_l_cache)))
    for key, value in L.extra_kv:
        kv.append((f"{a}{key}" if key.startswith(".") else key, value))
    return kv


def _general_kv(L: TwinLayout, file_type: int, quantized: bool) -> list[tuple[str, object]]:
    kv: list[tuple[str, object]] = [
        ("general.architecture", L.arch),
        ("general.type", "model"),
        ("general.name", L.display_name),
        ("general.basename", L.basename or L.display_name.split("-")[0]),
        ("general.size_label", L.size_label or "unknown"),
        ("general.file_type", ("u32", file_type)),
    ]
    if quantized:
        kv.append(("general.quantization_version", ("u32", 2)))
    return kv


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------

def _split_path(path: Path, i: int, n: int) -> Path:
    """llama.cpp's split naming: PREFIX-00001-of-00003.gguf (PREFIX = path without .gguf)."""
    stem = path.name[:-5] if path.name.endswith(".gguf") else path.name
    return path.with_name(f"{stem}-{i + 1:05d}-of-{n:05d}.gguf")


def _distribute(sizes: list[int], n_splits: int) -> list[int]:
    """First tensor index of each shard: contiguous runs of about equal bytes, none empty."""
    if n_splits > len(sizes):
        raise ValueError(f"cannot split {len(sizes)} tensors into {n_splits} shards")
    total = sum(_pad(s) for s in sizes)
    starts = [0]
    acc = 0
    for i, s in enumerate(sizes):
        if len(starts) < n_splits and i > starts[-1] and acc >= total * len(starts) / n_splits:
            starts.append(i)
        acc += _pad(s)
    while len(starts) < n_splits:  # a few huge tensors at the end: peel off singles
        starts.append(len(sizes) - (n_splits - len(starts)))
    return starts


def _write_model(path: Path, general: list[tuple[str, object]], rest: list[tuple[str, object]],
                 entries: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]],
                 n_splits: int) -> list[Path]:
    path = Path(path)
    if n_splits <= 1:
        _write_gguf_sparse(path, _Shard(kv=general + rest, tensors=entries))
        return [path]
    starts = _distribute([e[3] for e in entries], n_splits) + [len(entries)]
    written: list[Path] = []
    for i in range(n_splits):
        # as llama-gguf-split: all metadata in the first shard only, split keys appended
        split_kv: list[tuple[str, object]] = [
            ("split.no", ("u16", i)),
            ("split.count", ("u16", n_splits)),
            ("split.tensors.count", ("i32", len(entries))),
        ]
        kv = (general + rest + split_kv) if i == 0 else split_kv
        shard_path = _split_path(path, i, n_splits)
        _write_gguf_sparse(shard_path, _Shard(kv=kv, tensors=entries[starts[i]:starts[i + 1]]))
        written.append(shard_path)
    return written


def write_shape_twin(
    path: str | os.PathLike[str],
    layout_name_or_layout: str | TwinLayout,
    *,
    dtype: str = "bf16",
    tensor_types: TensorTypes = None,
    n_splits: int = 1,
    file_type: int | None = None,
) -> list[Path]:
    """Write a sparse twin of a model: real header and tensor table, data region a hole.

    ``dtype`` is the type of every tensor a conversion would store in the output type (norms,
    biases, routers and conv kernels stay F32, as convert_hf_to_gguf writes them).
    ``tensor_types`` (a ``(name, shape) -> type name`` function, or a name -> type mapping;
    a falsy answer keeps the default) writes the twin of an already-quantized file; byte sizes
    come from ``gguf.constants.GGML_QUANT_SIZES``. ``general.file_type`` is the dominant
    quantized type unless ``file_type`` is given. ``n_splits > 1`` writes
    ``NAME-0000i-of-0000N.gguf`` shards as llama-gguf-split does. Returns the written paths.
    """
    L = resolve_layout(layout_name_or_layout)
    tensors = twin_tensors(L)
    types = _resolve_types(L, tensors, dtype, tensor_types)
    entries = []
    bytes_by_type: dict[str, int] = {}
    for t, ty in zip(tensors, types):
        nbytes = _tensor_nbytes(ty, t.shape, t.name)
        entries.append((t.name, t.shape, ty, nbytes))
        bytes_by_type[ty.name] = bytes_by_type.get(ty.name, 0) + nbytes
    quantized = any(k not in ("F32", "F16", "BF16") for k in bytes_by_type)
    ft = file_type if file_type is not None else _infer_file_type(bytes_by_type)
    general = _general_kv(L, ft, quantized)
    rest = _arch_kv(L) + _tokenizer_kv(L)
    return _write_model(Path(path), general, rest, entries, n_splits)


# --------------------------------------------------------------------------------------------
# vision projector
# --------------------------------------------------------------------------------------------

def _mmproj_tensors(*, n_layer: int, n_embd: int, n_ff: int, patch: int, n_pos: int,
                    proj_dim: int, merge: int) -> list[TwinTensor]:
    t = _Table()
    t.add("v.patch_embd.weight", patch, patch, 3, n_embd)
    t.add("v.patch_embd.weight.1", patch, patch, 3, n_embd)
    t.add("v.patch_embd.bias", n_embd)
    t.add("v.position_embd.weight", n_embd, n_pos)
    for i in range(n_layer):
        p = f"v.blk.{i}."
        t.add(p + "ln1.weight", n_embd)
        t.add(p + "ln1.bias", n_embd)
        t.add(p + "attn_qkv.weight", n_embd, 3 * n_embd)
        t.add(p + "attn_qkv.bias", 3 * n_embd)
        t.add(p + "attn_out.weight", n_embd, n_embd)
        t.add(p + "attn_out.bias", n_embd)
        t.add(p + "ln2.weight", n_embd)
        t.add(p + "ln2.bias", n_embd)
        t.add(p + "ffn_up.weight", n_embd, n_ff)
        t.add(p + "ffn_up.bias", n_ff)
        t.add(p + "ffn_down.weight", n_ff, n_embd)
        t.add(p + "ffn_down.bias", n_embd)
    merged = n_embd * merge * merge
    t.add("v.post_ln.weight", n_embd)
    t.add("v.post_ln.bias", n_embd)
    t.add("mm.0.weight", merged, merged)
    t.add("mm.0.bias", merged)
    t.add("mm.2.weight", merged, proj_dim)
    t.add("mm.2.bias", proj_dim)
    return t.tensors


def write_mmproj_twin(
    path: str | os.PathLike[str],
    *,
    name: str = "Qwen3.5-35B-A3B",
    n_layer: int = 27,
    n_embd: int = 1152,
    n_ff: int = 4304,
    n_head: int = 16,
    patch_size: int = 16,
    image_size: int = 768,
    n_pos: int = 2304,
    projection_dim: int = 2048,
    spatial_merge_size: int = 2,
    dtype: str = "f16",
) -> Path:
    """Write a sparse twin of a ``clip`` vision projector (Qwen3-VL style, ~0.89 GB in F16).

    Defaults follow the Qwen3.5 vision tower (27 blocks, 1152 wide, 2x2 patch merger into the
    2048-wide text model); weights are ``dtype``, biases, norms and position embeddings F32.
    """
    tensors = _mmproj_tensors(n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, patch=patch_size,
                              n_pos=n_pos, proj_dim=projection_dim, merge=spatial_merge_size)
    weight_type = _ggml_type(dtype)
    entries = []
    for t in tensors:
        f32 = (len(t.shape) <= 1 or not t.name.endswith((".weight", ".weight.1"))
               or t.name == "v.position_embd.weight" or ".ln" in t.name or "post_ln" in t.name)
        ty = GGMLQuantizationType.F32 if f32 else weight_type
        entries.append((t.name, t.shape, ty, _tensor_nbytes(ty, t.shape, t.name)))
    kv: list[tuple[str, object]] = [
        ("general.architecture", "clip"),
        ("general.type", "mmproj"),
        ("general.name", name),
        ("general.file_type", ("u32", int(_FILE_TYPE_BY_GGML.get(weight_type.name,
                                                                 LlamaFileType.MOSTLY_F16)))),
        ("clip.has_vision_encoder", True),
        ("clip.projector_type", "qwen3vl_merger"),
        ("clip.use_gelu", True),
        ("clip.vision.image_size", ("u32", image_size)),
        ("clip.vision.patch_size", ("u32", patch_size)),
        ("clip.vision.embedding_length", ("u32", n_embd)),
        ("clip.vision.feed_forward_length", ("u32", n_ff)),
        ("clip.vision.block_count", ("u32", n_layer)),
        ("clip.vision.projection_dim", ("u32", projection_dim)),
        ("clip.vision.attention.head_count", ("u32", n_head)),
        ("clip.vision.attention.layer_norm_epsilon", ("f32", 1e-6)),
        ("clip.vision.spatial_merge_size", ("u32", spatial_merge_size)),
        ("clip.vision.image_mean", _num_array("f32", [0.5, 0.5, 0.5])),
        ("clip.vision.image_std", _num_array("f32", [0.5, 0.5, 0.5])),
    ]
    out = Path(path)
    _write_gguf_sparse(out, _Shard(kv=kv, tensors=entries))
    return out
