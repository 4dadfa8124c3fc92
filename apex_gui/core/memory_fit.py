"""How much memory a model needs where: weights, KV cache, recurrent state and compute buffers.

The model follows what llama.cpp really does when it loads a GGUF (read from its sources:
``llama-model.cpp`` for layer placement, ``llama-kv-cache.cpp`` / ``llama-kv-cache-iswa.cpp``
for the attention caches, ``llama-memory-recurrent.cpp`` for SSM / linear-attention state,
``llama-context.cpp`` for context padding and pipeline parallelism) and is checked against the
figures llama.cpp itself prints when it loads the synthetic models (``tests/logs/load_*.log``).

Placement rules reproduced here:

* ``-ngl N``: the *output* layer counts as layer ``n_layer_all`` (MTP blocks included) and is
  offloaded first; ``token_embd`` always stays on the CPU (a tied output gets its own copy on
  the output device). Offloaded layers are split across GPUs in proportion to free memory
  (llama.cpp's ``upper_bound`` over the cumulative split), unless a tensor split is given.
* ``--n-cpu-moe N`` keeps ``ffn_(up|down|gate|gate_up)_(ch|)exps`` of layers ``0..N-1`` in RAM;
  ``--cpu-moe`` all of them. With CPU-resident weights the largest of them is copied to the
  GPU for prompt processing (op offload), so that GPU needs room for it.
* Each layer's KV cache and recurrent state live with the layer.

Memory facts:

* Context: ``n_ctx`` is padded to 256. With ``-np N`` and no unified KV, each of the N
  streams gets ``pad256(n_ctx / N)`` cells.
* Full attention: ``K = row(type_k, head_dim_k * n_head_kv(il)) * cells``, V alike.
* Sliding-window layers: ``pad256(min(cells, n_swa * (N if unified else 1) + n_ubatch))``
  cells per stream unless ``--swa-full``.
* MLA (``attention.key_length_mla`` present, as current DeepSeek-2 / Mistral-4 conversions
  write): K only, ``key_length * n_head_kv`` wide (576 for DeepSeek-V3: kv_lora_rank + rope).
* Recurrent layers: F32 ``r`` (conv) and ``s`` (state) rows per sequence, independent of
  context: ``r = (d_conv - 1) * (d_inner + 2 * n_group * d_state)`` (``n_embd * (l_cache - 1)``
  for LFM2 short convolutions) and ``s = d_state * d_inner``.
* Compute buffers are an estimate calibrated on measured CPU buffers (see
  :func:`compute_buffer_bytes`); the output device also holds the logits scratch
  ``n_vocab * n_ubatch * 4``.

Everything is in bytes. Qt-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .quant_types import ggml_type
from .roles import TensorRole, classify_kind, split_name

if TYPE_CHECKING:  # only for annotations: this module works on plain data
    from .model import ModelInfo

__all__ = [
    "KV_CACHE_TYPES",
    "DEFAULT_MARGIN",
    "DEFAULT_UBATCH",
    "MMPROJ_COMPUTE_ALLOWANCE",
    "ContextSettings",
    "Placement",
    "ModelGeometry",
    "LayerWeights",
    "WeightTable",
    "KvCacheEstimate",
    "DeviceUsage",
    "MemoryEstimate",
    "LoadLogMemory",
    "pad256",
    "kv_row_bytes",
    "kv_cache_estimate",
    "recurrent_state_bytes",
    "compute_buffer_bytes",
    "weight_table",
    "layer_devices",
    "estimate_memory",
    "parse_load_log",
    "parse_fit_print",
    "swa_cells",
    "host_compute_bytes",
    "with_context",
]

MiB = 1024**2

#: KV cache types llama.cpp accepts for ``-ctk`` / ``-ctv``.
KV_CACHE_TYPES: tuple[str, ...] = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
                                   "iq4_nl", "f32")
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
        from .model import MixerKind  # local: model.py is heavier than this module needs

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


# ----------------------------------------------------------------------------- weights

_EXPERT_OVERRIDE = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")


@dataclass
class LayerWeights:
    """Bytes of one block: routed experts (what --n-cpu-moe moves) and everything else."""

    experts: int = 0
    other: int = 0
    largest_expert_tensor: int = 0

    @property
    def total(self) -> int:
        return self.experts + self.other


@dataclass
class WeightTable:
    """A model's weight bytes grouped the way llama.cpp places them."""

    layers: list[LayerWeights]
    token_embd: int  # stays on the CPU
    output: int  # the output "layer": output.weight, output_norm...
    mtp_layers: frozenset[int] = field(default_factory=frozenset)
    tied_output: bool = False  # no output.weight: the output reuses token_embd

    @property
    def total(self) -> int:
        return self.token_embd + self.output + sum(l.total for l in self.layers)

    def output_bytes(self, on_gpu: bool) -> int:
        """The output layer's bytes where it is placed.

        A tied output is created from token_embd (TENSOR_DUPLICATED): on the CPU it is the
        same tensor, on a GPU a second copy.
        """
        return self.output + (self.token_embd if self.tied_output and on_gpu else 0)


def weight_table(tensor_bytes: Mapping[str, int], geom: ModelGeometry) -> WeightTable:
    """Group per-tensor bytes (a GGUF's ``{t.name: t.nbytes}`` or a plan's) by placement."""
    layers = [LayerWeights() for _ in range(geom.n_layer_all)]
    token_embd = output = 0
    has_output = False
    for name, nbytes in tensor_bytes.items():
        layer, kind, _ = split_name(name)
        if layer is None:
            if kind == "token_embd":
                token_embd += nbytes
            else:
                has_output = has_output or kind == "output"
                output += nbytes
            continue
        if layer >= len(layers):
            layers.extend(LayerWeights() for _ in range(layer + 1 - len(layers)))
        slot = layers[layer]
        if _EXPERT_OVERRIDE.search(name) and classify_kind(kind, True) is TensorRole.ROUTED_EXPERT:
            slot.experts += nbytes
            slot.largest_expert_tensor = max(slot.largest_expert_tensor, nbytes)
        else:
            slot.other += nbytes
    return WeightTable(layers, token_embd, output, geom.mtp_layers, tied_output=not has_output)


def layer_devices(n_layer_all: int, n_gpu_layers: int, fractions: Sequence[float]) -> list[int]:
    """Device of each block and of the output (index ``n_layer_all``); -1 is the CPU.

    llama.cpp: ``i_gpu_start = max(n_layer_all + 1 - ngl, 0)``; block ``il`` goes to the first
    device whose cumulative split exceeds ``(il - i_gpu_start) / act_gpu_layers``.
    """
    n_dev = len(fractions)
    if n_dev == 0:
        return [-1] * (n_layer_all + 1)
    total = sum(fractions)
    if total <= 0:
        raise ValueError("the tensor split must have a positive sum")
    cumulative, acc = [], 0.0
    for value in fractions:
        acc += value
        cumulative.append(acc / total)
    start = max(n_layer_all + 1 - n_gpu_layers, 0)
    active = min(n_gpu_layers, n_layer_all + 1)
    devices = []
    for il in range(n_layer_all + 1):
        if il < start or il - start >= active:
            devices.append(-1)
            continue
        position = (il - start) / active
        # std::upper_bound: first element strictly greater than position
        device = next((i for i, c in enumerate(cumulative) if c > position), n_dev - 1)
        devices.append(device)
    return devices


# ----------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class DeviceUsage:
    """What one device (or the host) holds, in bytes."""

    name: str
    weights: int
    kv: int
    recurrent: int
    compute: int
    extra: int = 0  # vision projector weights + its compute allowance, op-offload copies
    layers: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.recurrent + self.compute + self.extra


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-device memory of one model + context + placement."""

    devices: tuple[DeviceUsage, ...]
    host: DeviceUsage
    n_gpu_layers: int
    n_cpu_moe: int
    kv: KvCacheEstimate

    @property
    def gpu_total(self) -> int:
        return sum(d.total for d in self.devices)

    @property
    def total(self) -> int:
        return self.gpu_total + self.host.total


def _fractions(devices_free: Sequence[int], placement: Placement) -> list[float]:
    if placement.tensor_split is not None:
        if len(placement.tensor_split) != len(devices_free):
            raise ValueError(f"the tensor split has {len(placement.tensor_split)} values for "
                             f"{len(devices_free)} devices")
        return list(placement.tensor_split)
    return [float(max(free, 0)) for free in devices_free]


def estimate_memory(
    geom: ModelGeometry,
    weights: WeightTable,
    ctx: ContextSettings,
    devices_free: Sequence[int] = (),
    placement: Placement = Placement(),
    *,
    device_names: Sequence[str] | None = None,
    mmproj_bytes: int = 0,
) -> MemoryEstimate:
    """Memory on each GPU and on the host for a placement; no devices means CPU only.

    ``devices_free`` sizes the default layer split (llama.cpp splits by free memory).
    ``mmproj_bytes`` (a vision projector's tensor bytes) goes to the first GPU (mtmd's main
    device) with :data:`MMPROJ_COMPUTE_ALLOWANCE`, or to the host without GPUs.
    """
    n_all = geom.n_layer_all
    n_dev = len(devices_free)
    ngl = n_all + 1 if placement.n_gpu_layers is None else max(0, placement.n_gpu_layers)
    owner = layer_devices(n_all, ngl if n_dev else 0, _fractions(devices_free, placement))
    kv = kv_cache_estimate(geom, ctx)
    loaded = [i for i in range(n_all) if ctx.use_mtp or i not in geom.mtp_layers]

    dev_weights = [0] * n_dev
    dev_kv = [0] * n_dev
    dev_state = [0] * n_dev
    dev_layers: list[list[int]] = [[] for _ in range(n_dev)]
    host_weights = weights.token_embd
    host_kv = host_state = 0
    cpu_expert_max = 0
    for il in loaded:
        lw = weights.layers[il] if il < len(weights.layers) else LayerWeights()
        experts_on_cpu = il < placement.n_cpu_moe
        dev = owner[il]
        if experts_on_cpu:
            host_weights += lw.experts
            cpu_expert_max = max(cpu_expert_max, lw.largest_expert_tensor)
        if dev < 0:
            host_weights += lw.other + (0 if experts_on_cpu else lw.experts)
            host_kv += kv.k_bytes[il] + kv.v_bytes[il]
            host_state += kv.recurrent_bytes[il]
            continue
        dev_weights[dev] += lw.other + (0 if experts_on_cpu else lw.experts)
        dev_kv[dev] += kv.k_bytes[il] + kv.v_bytes[il]
        dev_state[dev] += kv.recurrent_bytes[il]
        dev_layers[dev].append(il)
    out_dev = owner[n_all]
    if out_dev < 0:
        host_weights += weights.output_bytes(on_gpu=False)
    else:
        dev_weights[out_dev] += weights.output_bytes(on_gpu=True)

    usages: list[DeviceUsage] = []
    names = list(device_names) if device_names else [f"GPU{i}" for i in range(n_dev)]
    for i in range(n_dev):
        holds_layers = bool(dev_layers[i])
        holds_output = out_dev == i
        compute = (compute_buffer_bytes(geom, ctx, holds_output=holds_output,
                                        holds_layers=holds_layers)
                   if holds_layers or holds_output else 0)
        if ctx.use_mtp and holds_output:
            compute += compute_buffer_bytes(geom, ctx, holds_output=True, holds_layers=False)
        extra = 0
        if i == 0:
            extra += mmproj_bytes + (MMPROJ_COMPUTE_ALLOWANCE if mmproj_bytes else 0)
            # op offload: CPU-resident expert weights are copied here for prompt batches
            extra += cpu_expert_max
        usages.append(DeviceUsage(names[i], dev_weights[i], dev_kv[i], dev_state[i], compute,
                                  extra, tuple(dev_layers[i])))

    all_on_gpu = n_dev > 0 and out_dev >= 0 and all(owner[il] >= 0 for il in loaded)
    if n_dev == 0:
        host_compute = compute_buffer_bytes(geom, ctx, holds_output=True)
    elif all_on_gpu and placement.n_cpu_moe == 0:
        host_compute = host_compute_bytes(geom, ctx)
    else:
        # CPU-side blocks (or CPU experts) run their stage in a host compute buffer.
        host_compute = compute_buffer_bytes(geom, ctx, holds_output=out_dev < 0)
    output_buffer = geom.n_vocab * 4 * ctx.n_seq  # logits of one output per sequence
    host_extra = output_buffer + (mmproj_bytes + MMPROJ_COMPUTE_ALLOWANCE
                                  if mmproj_bytes and n_dev == 0 else 0)
    host = DeviceUsage("host RAM", host_weights, host_kv, host_state, host_compute, host_extra)
    return MemoryEstimate(tuple(usages), host, ngl if n_dev else 0, placement.n_cpu_moe, kv)


# ----------------------------------------------------------------------------- llama.cpp logs

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size\s*=\s*" + _NUM + r" MiB")
_KV_BUF = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size\s*=\s*" + _NUM + r" MiB")
_KV_SIZE = re.compile(
    r"llama_kv_cache: size =\s*" + _NUM + r" MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/(\d+) "
    r"seqs\), K \((\w+)\):\s*" + _NUM + r" MiB, V \((\w+)\):\s*" + _NUM + r" MiB")
_RS_BUF = re.compile(r"llama_memory_recurrent:\s+(\S+) RS buffer size\s*=\s*" + _NUM + r" MiB")
_COMPUTE_BUF = re.compile(r"(?:sched_reserve|llama_context):\s+(\S+) compute buffer size\s*=\s*"
                          + _NUM + r" MiB")
_OUTPUT_BUF = re.compile(r"llama_context:\s+(\S+)\s+output buffer size\s*=\s*" + _NUM + r" MiB")
_N_CTX = re.compile(r"llama_context: n_ctx\s*=\s*(\d+)")


@dataclass
class LoadLogMemory:
    """The memory figures llama.cpp prints while loading a model (MiB per buffer name).

    A log may hold more than one load (``--fit`` probes first with no allocation and prints
    zero-sized buffers); every figure is the last non-zero one seen, so the real load wins.
    """

    model_mib: dict[str, float] = field(default_factory=dict)
    kv_buffer_mib: dict[str, float] = field(default_factory=dict)
    recurrent_mib: dict[str, float] = field(default_factory=dict)
    compute_mib: dict[str, float] = field(default_factory=dict)
    output_mib: dict[str, float] = field(default_factory=dict)
    kv_size_mib: float | None = None
    kv_cells: int | None = None
    kv_layers: int | None = None
    type_k: str | None = None
    type_v: str | None = None
    n_ctx: int | None = None

    @property
    def kv_mib(self) -> float:
        """Total KV cache (the ``llama_kv_cache: size =`` line, else the buffers' sum)."""
        if self.kv_size_mib is not None:
            return self.kv_size_mib
        return sum(self.kv_buffer_mib.values())

    @property
    def total_mib(self) -> float:
        return (sum(self.model_mib.values()) + sum(self.kv_buffer_mib.values())
                + sum(self.recurrent_mib.values()) + sum(self.compute_mib.values())
                + sum(self.output_mib.values()))


def _set(table: dict[str, float], key: str, value: str) -> None:
    number = float(value)
    if number > 0 or key not in table:
        table[key] = number


def parse_load_log(lines: Iterable[str]) -> LoadLogMemory:
    """Read the buffer sizes out of a llama.cpp load log (llama-completion, -server, -cli)."""
    found = LoadLogMemory()
    for line in lines:
        if match := _MODEL_BUF.search(line):
            _set(found.model_mib, match.group(1), match.group(2))
        elif match := _KV_SIZE.search(line):
            if float(match.group(1)) > 0 or found.kv_size_mib is None:
                found.kv_size_mib = float(match.group(1))
                found.kv_cells = int(match.group(2))
                found.kv_layers = int(match.group(3))
                found.type_k, found.type_v = match.group(6), match.group(8)
        elif match := _KV_BUF.search(line):
            _set(found.kv_buffer_mib, match.group(1), match.group(2))
        elif match := _RS_BUF.search(line):
            _set(found.recurrent_mib, match.group(1), match.group(2))
        elif match := _COMPUTE_BUF.search(line):
            _set(found.compute_mib, match.group(1), match.group(2))
        elif match := _OUTPUT_BUF.search(line):
            _set(found.output_mib, match.group(1), match.group(2))
        elif match := _N_CTX.search(line):
            found.n_ctx = int(match.group(1))
    return found


_FIT_PRINT = re.compile(r"^\s*(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def parse_fit_print(lines: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """``llama-fit-params --fit-print on`` stdout: device -> (model, context, compute) MiB."""
    table: dict[str, tuple[int, int, int]] = {}
    for line in lines:
        if match := _FIT_PRINT.match(line):
            table[match.group(1)] = (int(match.group(2)), int(match.group(3)),
                                     int(match.group(4)))
    return table


def with_context(ctx: ContextSettings, n_ctx: int) -> ContextSettings:
    """The same settings at another context length."""
    return replace(ctx, n_ctx=n_ctx)
