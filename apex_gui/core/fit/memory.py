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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from apex_gui.core.fit.context_memory import (
    ContextSettings, KvCacheEstimate, MMPROJ_COMPUTE_ALLOWANCE, ModelGeometry, Placement,
    compute_buffer_bytes, host_compute_bytes, kv_cache_estimate,
)
from apex_gui.core.gguf.roles import TensorRole, classify_kind, split_name


__all__ = [
    "MMPROJ_COMPUTE_ALLOWANCE",
    "ContextSettings",
    "Placement",
    "ModelGeometry",
    "LayerWeights",
    "WeightTable",
    "KvCacheEstimate",
    "DeviceUsage",
    "MemoryEstimate",
    "kv_cache_estimate",
    "compute_buffer_bytes",
    "weight_table",
    "layer_devices",
    "estimate_memory",
    "host_compute_bytes",
    "with_context",
]


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


def with_context(ctx: ContextSettings, n_ctx: int) -> ContextSettings:
    """The same settings at another context length."""
    return replace(ctx, n_ctx=n_ctx)
