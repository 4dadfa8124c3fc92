"""What a context costs: model geometry, KV cache, recurrent state and compute buffers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apex_gui.core.gguf.model import MixerKind
from apex_gui.core.gguf.types import ggml_type
from apex_gui.core.settings import KV_CACHE_TYPES
from apex_gui.core.units import MiB

if TYPE_CHECKING:
    from apex_gui.core.gguf.model import ModelInfo


# KV_CACHE_TYPES (llama.cpp's -ctk / -ctv types) lives with the settings, which check it.
#: llama-fit-params' default per-device margin (``--fit-target``).
DEFAULT_MARGIN = 1024 * MiB
#: llama.cpp's default physical batch (``-ub``).
DEFAULT_UBATCH = 512
#: What a vision projector needs beyond its weights while encoding one image. The CLIP graph
#: is not modelled; 256 MiB covers a ~768 px image through a 27-block ViT with flash attention.
MMPROJ_COMPUTE_ALLOWANCE = 256 * MiB
#: Draft tokens per step for ``--spec-type draft-mtp`` (common_params_speculative draft.n_max):
#: recurrent layers keep that many rollback snapshots.
MTP_DRAFT_MAX = 3

# Calibration of the compute buffer, from the compute buffers llama.cpp printed for the
# synthetic models and the shape twins (tests/logs): per token of the physical batch, the
# widest FFN stage holds ~3 F32 activations of its width and ~20 bytes per embedding
# dimension stay resident.
_COMPUTE_FFN_FLOATS = 3
_COMPUTE_EMBD_BYTES = 20
# Without flash attention, what sits beside the KQ scores: ~28 bytes per embedding dimension.
_COMPUTE_NOFA_EMBD_BYTES = 28


def pad256(n: int) -> int:
    """``GGML_PAD(n, 256)``: llama.cpp pads every context to a multiple of 256 cells."""
    return -(-int(n) // 256) * 256


def kv_row_bytes(type_name: str, n_elements: int) -> int:
    """``ggml_row_size``: bytes of one KV row of ``n_elements`` values in ``type_name``."""
    kind = ggml_type(type_name)
    if n_elements % kind.block_size:
        raise ValueError(f"a {kind.name} KV cache needs rows that are a multiple of "
                         f"{kind.block_size} values, this model has {n_elements}; "
                         "use -ctk/-ctv f16")
    return n_elements // kind.block_size * kind.block_bytes


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ContextSettings:
    """The context a model is run with (the llama-server flags that size memory)."""

    n_ctx: int = 4096  # -c
    n_seq: int = 1  # -np
    type_k: str = "f16"  # -ctk
    type_v: str = "f16"  # -ctv
    flash_attn: bool = True  # -fa on
    n_ubatch: int = DEFAULT_UBATCH  # -ub
    kv_unified: bool = False  # --kv-unified (llama-server's default only with -np auto)
    swa_full: bool = False  # --swa-full
    use_mtp: bool = False  # --spec-type draft-mtp: loads the MTP block, its KV and a draft ctx

    def __post_init__(self) -> None:
        if self.n_ctx <= 0 or self.n_seq <= 0 or self.n_ubatch <= 0:
            raise ValueError("context, parallel sequences and ubatch must be positive")
        for name in (self.type_k, self.type_v):
            if name.lower() not in KV_CACHE_TYPES:
                raise ValueError(f"unknown KV cache type {name!r}; use one of "
                                 f"{', '.join(KV_CACHE_TYPES)}")
        if not self.flash_attn and ggml_type(self.type_v).block_size > 1:
            raise ValueError(f"a quantized V cache ({self.type_v}) needs flash attention "
                             "(-fa on); llama.cpp refuses it otherwise")

    @property
    def n_ctx_padded(self) -> int:
        return pad256(self.n_ctx)

    @property
    def n_stream(self) -> int:
        return 1 if self.kv_unified else self.n_seq

    @property
    def cells_per_stream(self) -> int:
        """``n_ctx_seq``: KV cells of each stream (llama_context's padding and split)."""
        if self.kv_unified:
            return self.n_ctx_padded
        return pad256(self.n_ctx_padded // self.n_seq) if self.n_seq > 1 else self.n_ctx_padded


@dataclass(frozen=True)
class Placement:
    """Where weights go: ``-ngl``, ``--n-cpu-moe`` and ``-ts``."""

    n_gpu_layers: int | None = None  # None: all (llama.cpp's default -ngl -1 / 999)
    n_cpu_moe: int = 0  # routed experts of layers 0..n-1 stay in RAM; >= layers: --cpu-moe
    tensor_split: tuple[float, ...] | None = None  # -ts; None: by free memory


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ModelGeometry:
    """The hyper-parameters that size memory, read once from a model's metadata."""

    architecture: str
    n_layer: int  # trunk blocks
    n_layer_all: int  # with MTP / nextn blocks (what -ngl counts)
    n_embd: int
    n_vocab: int
    n_head: tuple[int, ...]  # per block
    n_head_kv: tuple[int, ...]  # per block; 0 where the block has no KV cache
    head_dim_k: int
    head_dim_v: int
    head_dim_k_swa: int
    head_dim_v_swa: int
    is_mla: bool
    n_swa: int
    swa_layers: frozenset[int]
    attention_layers: frozenset[int]  # trunk blocks with a KV cache
    recurrent_layers: frozenset[int]  # trunk blocks with recurrent state
    mtp_layers: frozenset[int]
    n_embd_r: int  # F32 values per sequence per recurrent layer
    n_embd_s: int
    n_ffn_width: int  # widest FFN stage per token (routed experts used, shared, dense)
    context_length: int

    @classmethod
    def from_model(cls, model: ModelInfo) -> ModelGeometry:
        """Read the geometry the way llama.cpp's hparams loader does."""
        n_all = max(model.block_count, len(model.layers))
        heads = model.per_layer("attention.head_count")
        heads_kv = model.per_layer("attention.head_count_kv", default=-1)
        heads = (heads + [0] * n_all)[:n_all]
        # A missing head_count_kv means MHA (llama.cpp defaults it to head_count).
        heads_kv = [h if kv < 0 else kv for h, kv in zip(heads, (heads_kv + [-1] * n_all))]
        mtp = frozenset(l.index for l in model.layers if l.is_mtp)
        attention: set[int] = set()
        recurrent: set[int] = set()
        swa: set[int] = set()
        for layer in model.layers:
            if layer.is_mtp:
                continue
            if layer.mixer in (MixerKind.LINEAR_ATTENTION, MixerKind.SHORT_CONV):
                recurrent.add(layer.index)
            elif layer.mixer in (MixerKind.FULL_ATTENTION, MixerKind.SLIDING_WINDOW,
                                 MixerKind.MLA) and heads_kv[layer.index] > 0:
                attention.add(layer.index)
                if layer.mixer is MixerKind.SLIDING_WINDOW:
                    swa.add(layer.index)
        kv_heads = tuple(heads_kv[i] if (i in attention or i in mtp) else 0 for i in range(n_all))
        hd_k, hd_v = model.head_dim_k, model.head_dim_v
        n_embd = int(model.hparam("embedding_length", 0) or 0)
        r, s = _recurrent_widths(model, n_embd)
        n_used = model.n_expert_used
        ff_exp = int(model.hparam("expert_feed_forward_length", 0) or 0)
        ff_shexp = int(model.hparam("expert_shared_feed_forward_length", 0) or 0)
        ff_dense = max(model.per_layer("feed_forward_length") or [0])
        if ff_shexp == 0 and model.n_expert_shared:
            ff_shexp = ff_exp * model.n_expert_shared
        return cls(
            architecture=model.architecture,
            n_layer=model.n_layer,
            n_layer_all=n_all,
            n_embd=n_embd,
            n_vocab=model.vocab_size,
            n_head=tuple(heads),
            n_head_kv=kv_heads,
            head_dim_k=hd_k,
            head_dim_v=hd_v,
            head_dim_k_swa=int(model.hparam("attention.key_length_swa", 0) or 0) or hd_k,
            head_dim_v_swa=int(model.hparam("attention.value_length_swa", 0) or 0) or hd_v,
            is_mla=model.hparam("attention.key_length_mla") is not None,
            n_swa=model.sliding_window,
            swa_layers=frozenset(swa),
            attention_layers=frozenset(attention),
            recurrent_layers=frozenset(recurrent),
            mtp_layers=mtp,
            n_embd_r=r,
            n_embd_s=s,
            n_ffn_width=max(ff_exp * max(n_used, 1), ff_shexp, ff_dense),
            context_length=model.context_length,
        )

    def kv_width(self, layer: int) -> tuple[int, int]:
        """(K, V) values per cell of one block; V is 0 for MLA (K-only cache)."""
        heads = self.n_head_kv[layer]
        if heads <= 0:
            return 0, 0
        swa = layer in self.swa_layers
        k = (self.head_dim_k_swa if swa else self.head_dim_k) * heads
        v = (self.head_dim_v_swa if swa else self.head_dim_v) * heads
        return k, 0 if self.is_mla else v


def _recurrent_widths(model: ModelInfo, n_embd: int) -> tuple[int, int]:
    """(n_embd_r, n_embd_s) as llama_hparams computes them (Mamba / DeltaNet / LFM2 forms)."""
    l_cache = int(model.hparam("shortconv.l_cache", 0) or 0)
    if l_cache:
        return n_embd * (l_cache - 1), 0
    d_conv = int(model.hparam("ssm.conv_kernel", 0) or 0)
    d_inner = int(model.hparam("ssm.inner_size", 0) or 0)
    d_state = int(model.hparam("ssm.state_size", 0) or 0)
    n_group = int(model.hparam("ssm.group_count", 0) or 0)
    r = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state)
    return r, d_state * d_inner


# ----------------------------------------------------------------------------- KV and state


@dataclass(frozen=True)
class KvCacheEstimate:
    """KV cache and recurrent state per block, in bytes, for one context."""

    k_bytes: tuple[int, ...]
    v_bytes: tuple[int, ...]
    recurrent_bytes: tuple[int, ...]
    cells_full: int  # cells per stream of full-attention blocks
    cells_swa: int  # cells per stream of sliding-window blocks (0 if none)
    n_stream: int

    @property
    def kv_bytes(self) -> int:
        return sum(self.k_bytes) + sum(self.v_bytes)

    @property
    def state_bytes(self) -> int:
        return sum(self.recurrent_bytes)

    def layer_bytes(self, layer: int) -> int:
        return self.k_bytes[layer] + self.v_bytes[layer] + self.recurrent_bytes[layer]


def swa_cells(geom: ModelGeometry, ctx: ContextSettings) -> int:
    """Cells per stream of a sliding-window cache (llama_kv_cache_iswa)."""
    base = ctx.cells_per_stream
    if ctx.swa_full or geom.n_swa <= 0:
        return base
    window = geom.n_swa * (ctx.n_seq if ctx.kv_unified else 1) + ctx.n_ubatch
    return pad256(min(base, window))


def recurrent_state_bytes(geom: ModelGeometry, ctx: ContextSettings) -> int:
    """F32 r + s rows of one recurrent block: one per sequence, plus MTP rollback snapshots."""
    n_rs_seq = MTP_DRAFT_MAX if ctx.use_mtp else 0
    rows = max(1, ctx.n_seq) * (1 + n_rs_seq)
    return (geom.n_embd_r + geom.n_embd_s) * 4 * rows


def kv_cache_estimate(geom: ModelGeometry, ctx: ContextSettings) -> KvCacheEstimate:
    """KV cache per block for ``ctx``; MTP blocks only when speculative decoding uses them."""
    cells = ctx.cells_per_stream
    cells_swa = swa_cells(geom, ctx) if geom.swa_layers else 0
    k_bytes: list[int] = []
    v_bytes: list[int] = []
    state: list[int] = []
    per_state = recurrent_state_bytes(geom, ctx)
    for layer in range(geom.n_layer_all):
        k_width, v_width = geom.kv_width(layer)
        has_kv = layer in geom.attention_layers or (ctx.use_mtp and layer in geom.mtp_layers)
        if not has_kv or k_width == 0:
            k_bytes.append(0)
            v_bytes.append(0)
        else:
            n = (cells_swa if layer in geom.swa_layers else cells) * ctx.n_stream
            k_bytes.append(kv_row_bytes(ctx.type_k, k_width) * n)
            # A quantized V needs flash attention; without it V is stored transposed and
            # padded to the widest layer, which only matters for variable widths.
            v_bytes.append(kv_row_bytes(ctx.type_v, v_width) * n if v_width else 0)
        state.append(per_state if layer in geom.recurrent_layers else 0)
    return KvCacheEstimate(tuple(k_bytes), tuple(v_bytes), tuple(state), cells, cells_swa,
                           ctx.n_stream)


# ----------------------------------------------------------------------------- compute


def compute_buffer_bytes(geom: ModelGeometry, ctx: ContextSettings, *, holds_output: bool,
                         holds_layers: bool = True) -> int:
    """Estimated compute buffer of one device.

    The graph allocator reuses memory, so the buffer is one peak, not a sum of everything:
    the attention masks (inputs that live through every block) and ~20 bytes per embedding
    dimension per token stay resident, and on top of them comes the larger of a block's FFN
    activations (3 F32 values of the widest FFN stage) and, on the device holding the output,
    the logits scratch (``n_vocab * n_ubatch`` F32). Without flash attention the KQ scores
    (F32, every head) and an F32 mask are a block's peak instead.

    Calibrated on llama.cpp's own compute buffers (``tests/logs``): the synthetic models'
    measured CPU buffers and ``llama-fit-params`` on the Qwen3.5 / Trinity / Mistral-4 / LFM2
    shape twins, all within ~3%.
    """
    ub = ctx.n_ubatch
    masks: list[int] = []
    if holds_layers:
        # One mask per cache, [n_kv, n_ubatch / n_stream, 1, n_stream]: n_kv * n_ubatch values.
        if geom.attention_layers - geom.swa_layers or ctx.use_mtp:
            masks.append(ctx.cells_per_stream)
        if geom.swa_layers:
            masks.append(swa_cells(geom, ctx))
    resident = ub * _COMPUTE_EMBD_BYTES * geom.n_embd
    logits = ub * 4 * geom.n_vocab if holds_output else 0
    ffn = ub * _COMPUTE_FFN_FLOATS * 4 * geom.n_ffn_width if holds_layers else 0
    if ctx.flash_attn or not masks:
        return resident + sum(n_kv * ub * 2 for n_kv in masks) + max(ffn, logits)
    n_head = max(geom.n_head) if geom.n_head else 0
    scores = max(masks) * ub * (n_head * 4 + 4) + ub * _COMPUTE_NOFA_EMBD_BYTES * geom.n_embd
    return max(resident + max(ffn, logits), scores)


def host_compute_bytes(geom: ModelGeometry, ctx: ContextSettings) -> int:
    """The pinned host compute buffer of a fully offloaded model (input embeddings)."""
    return ctx.n_ubatch * geom.n_embd * 4 * 2
