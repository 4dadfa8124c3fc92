"""Small runnable Mixture-of-Experts GGUFs with real tensor names and random weights.

The files carry the real architecture metadata and exactly the tensors llama.cpp expects for
``qwen2moe`` or ``qwen3moe``, plus a byte-level SPM tokenizer, so the real tools (quantize,
imatrix, perplexity, bench) load and run them. They back the demo model the app opens when it
starts without one, and every end-to-end test.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # gguf is imported where used: it costs ~0.1 s and most callers never write.
    import gguf

Architecture = Literal["qwen2moe", "qwen3moe"]
WeightDtype = Literal["f16", "f32", "bf16"]

SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("qwen2moe", "qwen3moe")
SUPPORTED_DTYPES: tuple[str, ...] = ("f16", "f32", "bf16")

#: Token ids of the byte-level SPM vocabulary: three specials, then ``<0x00>``..``<0xFF>``.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_SPECIAL_TOKENS = 3
VOCAB_SIZE = N_SPECIAL_TOKENS + 256

#: Standard deviation of the random weights: small enough that activations stay finite.
WEIGHT_STD = 0.02


@dataclass(frozen=True)
class SyntheticModelSpec:
    """Shape, dtype and seed of one synthetic MoE model."""

    arch: Architecture = "qwen2moe"
    n_layer: int = 6
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_expert: int = 8
    n_expert_used: int = 2
    n_ff_exp: int = 256
    n_ff_shexp: int = 256  # shared-expert width; qwen2moe only
    context_length: int = 2048
    seed: int = 0
    dtype: WeightDtype = "f16"
    name: str = "APEX synthetic MoE"
    rms_norm_eps: float = 1e-6
    rope_freq_base: float = 1_000_000.0

    def __post_init__(self) -> None:
        if self.arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported synthetic architecture {self.arch!r}; "
                f"choose one of {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"unsupported weight dtype {self.dtype!r}; choose one of {', '.join(SUPPORTED_DTYPES)}"
            )
        positive = ("n_layer", "n_embd", "n_head", "n_head_kv", "n_expert", "n_expert_used",
                    "n_ff_exp", "context_length")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"SyntheticModelSpec.{name} must be > 0, got {getattr(self, name)}")
        if self.arch == "qwen2moe" and self.n_ff_shexp <= 0:
            raise ValueError("SyntheticModelSpec.n_ff_shexp must be > 0 for qwen2moe")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.n_head % self.n_head_kv:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_head_kv ({self.n_head_kv})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.n_expert_used > self.n_expert:
            raise ValueError(
                f"n_expert_used ({self.n_expert_used}) cannot exceed n_expert ({self.n_expert})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_q(self) -> int:
        return self.head_dim * self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv

    @property
    def has_shared_expert(self) -> bool:
        return self.arch == "qwen2moe"

    @property
    def feed_forward_length(self) -> int:
        """``{arch}.feed_forward_length`` as the real checkpoints set it."""
        # Qwen1.5-MoE stores the shared-expert width; Qwen3-MoE stores n_expert_used * n_ff_exp.
        if self.has_shared_expert:
            return self.n_ff_shexp
        return self.n_expert_used * self.n_ff_exp

    def fingerprint(self) -> str:
        """Short stable hash of every field: names a cached file built from this spec."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


#: What the app opens when started without a model: big enough for a believable heatmap.
DEMO_SPEC = SyntheticModelSpec(arch="qwen2moe", n_layer=24, n_expert=4, seed=1234,
                               name="APEX demo qwen2moe")
#: A few MB each: fast in tests.
TINY_QWEN2MOE = SyntheticModelSpec(arch="qwen2moe", n_layer=2, n_expert=4, seed=1,
                                   name="APEX tiny qwen2moe")
TINY_QWEN3MOE = SyntheticModelSpec(arch="qwen3moe", n_layer=2, n_expert=4, seed=2,
                                   name="APEX tiny qwen3moe")
#: Expert width 288 = 9 * 32: ``ffn_down_exps`` rows defeat 256-wide K/IQ blocks, so
#: llama-quantize takes its fallback path (Q4_K -> Q5_0, Q6_K -> Q8_0, IQ* -> IQ4_NL).
FALLBACK_SPEC = SyntheticModelSpec(arch="qwen2moe", n_layer=2, n_expert=4, n_ff_exp=288, seed=3,
                                   name="APEX fallback qwen2moe")

PRESETS: dict[str, SyntheticModelSpec] = {
    "demo": DEMO_SPEC,
    "tiny-qwen2moe": TINY_QWEN2MOE,
    "tiny-qwen3moe": TINY_QWEN3MOE,
    "fallback": FALLBACK_SPEC,
}


def preset(name: str) -> SyntheticModelSpec:
    """A preset spec by name, with an error listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown synthetic model preset {name!r}; known: {', '.join(PRESETS)}"
        ) from None


def expected_tensor_shapes(spec: SyntheticModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor the architecture needs, in file order, with GGUF dims (``ne``, fastest first)."""
    e, v, q, kv = spec.n_embd, VOCAB_SIZE, spec.n_embd_q, spec.n_embd_kv
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (e, v),
        "output_norm.weight": (e,),
        "output.weight": (e, v),
    }
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (e,)
        shapes[b + "attn_q.weight"] = (e, q)
        shapes[b + "attn_k.weight"] = (e, kv)
        shapes[b + "attn_v.weight"] = (e, kv)
        if spec.arch == "qwen2moe":
            shapes[b + "attn_q.bias"] = (q,)
            shapes[b + "attn_k.bias"] = (kv,)
            shapes[b + "attn_v.bias"] = (kv,)
        else:
            shapes[b + "attn_q_norm.weight"] = (spec.head_dim,)
            shapes[b + "attn_k_norm.weight"] = (spec.head_dim,)
        shapes[b + "attn_output.weight"] = (q, e)
        shapes[b + "ffn_norm.weight"] = (e,)
        shapes[b + "ffn_gate_inp.weight"] = (e, spec.n_expert)
        shapes[b + "ffn_gate_exps.weight"] = (e, spec.n_ff_exp, spec.n_expert)
        shapes[b + "ffn_up_exps.weight"] = (e, spec.n_ff_exp, spec.n_expert)
        shapes[b + "ffn_down_exps.weight"] = (spec.n_ff_exp, e, spec.n_expert)
        if spec.has_shared_expert:
            shapes[b + "ffn_gate_inp_shexp.weight"] = (e,)
            shapes[b + "ffn_gate_shexp.weight"] = (e, spec.n_ff_shexp)
            shapes[b + "ffn_up_shexp.weight"] = (e, spec.n_ff_shexp)
            shapes[b + "ffn_down_shexp.weight"] = (spec.n_ff_shexp, e)
    return shapes


def _stays_f32(name: str, shape: tuple[int, ...]) -> bool:
    # Norms, biases and the 1-D shared-expert gate stay F32, as in converted checkpoints.
    return len(shape) == 1 or name.endswith(".bias")


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def _file_type(dtype: str) -> gguf.LlamaFileType:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }[dtype]


def _tensor_payload(
    values: np.ndarray, dtype: str
) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """The array to store for ``values`` in ``dtype``, and the raw GGML type when numpy has none."""
    import gguf

    if dtype == "f32":
        return values.astype(np.float32, copy=False), None
    if dtype == "f16":
        return values.astype(np.float16), None
    # numpy has no bfloat16: keep the top 16 bits of the float32 with round-to-nearest-even.
    bits = values.astype(np.float32, copy=False).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16), gguf.GGMLQuantizationType.BF16


def _add_tokenizer(writer: gguf.GGUFWriter) -> None:
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def _add_hparams(writer: gguf.GGUFWriter, spec: SyntheticModelSpec) -> None:
    writer.add_name(spec.name)
    writer.add_file_type(_file_type(spec.dtype))
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.feed_forward_length)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_layer_norm_rms_eps(spec.rms_norm_eps)
    writer.add_rope_freq_base(spec.rope_freq_base)
    writer.add_expert_count(spec.n_expert)
    writer.add_expert_used_count(spec.n_expert_used)
    writer.add_expert_feed_forward_length(spec.n_ff_exp)
    if spec.has_shared_expert:
        writer.add_expert_shared_feed_forward_length(spec.n_ff_shexp)
    else:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)


def _add_tensors(writer: gguf.GGUFWriter, spec: SyntheticModelSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    for name, ne in expected_tensor_shapes(spec).items():
        shape = tuple(reversed(ne))  # numpy is row-major: slowest dimension first
        if _is_norm(name):
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
            continue
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(WEIGHT_STD)
        if _stays_f32(name, ne):
            writer.add_tensor(name, values)
            continue
        data, raw_dtype = _tensor_payload(values, spec.dtype)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)


def write_synthetic_model(path: str | os.PathLike[str], spec: SyntheticModelSpec) -> Path:
    """Write a runnable synthetic MoE GGUF to ``path`` atomically and return the path."""
    import gguf

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: it creates the file 0600, and the model should get the usual umask mode.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        writer = gguf.GGUFWriter(tmp, spec.arch)
        try:
            _add_hparams(writer, spec)
            _add_tokenizer(writer)
            _add_tensors(writer, spec)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def is_valid_synthetic_model(path: str | os.PathLike[str], spec: SyntheticModelSpec) -> bool:
    """True when ``path`` is a complete GGUF with exactly ``spec``'s tensors and architecture."""
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
        arch_field = reader.get_field("general.architecture")
        if arch_field is None or arch_field.contents() != spec.arch:
            return False
        found = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
        if found != expected_tensor_shapes(spec):
            return False
        # A truncated file yields short views rather than an error on some numpy versions.
        return all(t.data.nbytes == t.n_bytes for t in reader.tensors)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def demo_model_path(cache_dir: str | os.PathLike[str], spec: SyntheticModelSpec = DEMO_SPEC) -> Path:
    """The demo model under ``cache_dir``: built on first use, reused while it stays valid."""
    path = Path(cache_dir) / f"apex-demo-{spec.arch}-{spec.fingerprint()}.gguf"
    if path.is_file() and is_valid_synthetic_model(path, spec):
        return path
    return write_synthetic_model(path, spec)
