"""Which APEX tier fits this machine, how, and with which llama-server flags.

For each candidate (a profile's plan, or any per-tensor byte table) the ladder is:

(a) full GPU offload fits every device with its margin;
(b) else routed experts in system RAM: the smallest ``--n-cpu-moe N`` that fits (attention,
    shared experts, KV cache and the output stay on the GPUs);
(c) else partial offload: the largest ``-ngl`` that fits;
(d) else it does not fit (suggest a smaller tier, a shorter context or a quantized KV cache).

Without a GPU the check is against system RAM alone (CPU only). Unified-memory devices
(DGX Spark, Apple) share one pool with the host, so host allocations count against it.

The recommended tier is the highest-quality candidate (candidates come in quality order)
whose best outcome is (a); failing that, the highest-quality candidate with the best split.
Among the candidates with that outcome and comfortable headroom, the one with the lowest KL
divergence then wins (measured, predicted or published: :mod:`apex_gui.core.fit.quality_rank`).
Headroom is the smallest free space left on any GPU (or in RAM for CPU only):
comfortable at >= 10 % of that device, tight below, none when it does not fit.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from apex_gui.core.fit.context_memory import (
    DEFAULT_MARGIN, DEFAULT_UBATCH, ContextSettings, ModelGeometry, Placement, pad256,
)
from apex_gui.core.fit.hardware import GpuDevice, HardwareSnapshot
from apex_gui.core.fit.memory import MemoryEstimate, WeightTable, estimate_memory, weight_table

if TYPE_CHECKING:
    from apex_gui.core.fit.quality_rank import QualityFigure
    from apex_gui.core.gguf.model import ModelInfo
    from apex_gui.core.plan.profiles import Profile

__all__ = [
    "COMFORTABLE_SHARE",
    "Candidate",
    "FitResult",
    "Headroom",
    "MachineMemory",
    "Recommendation",
    "Verdict",
    "balanced_split",
    "packed_split",
    "evaluate",
    "file_candidate",
    "profile_candidates",
    "recommend",
    "server_command",
    "usable_by_one_process",
]

#: Headroom share of a device at which a fit counts as comfortable.
COMFORTABLE_SHARE = 0.10
#: ``-ngl`` value that means "every layer" whatever the model (llama.cpp clamps it).
ALL_LAYERS = 999


class Verdict(Enum):
    FULL_GPU = "full GPU offload"
    EXPERTS_IN_RAM = "routed experts in system RAM"
    PARTIAL = "partial GPU offload"
    CPU_ONLY = "CPU only"
    DOES_NOT_FIT = "does not fit"

    @property
    def rank(self) -> int:
        """Lower is better."""
        return list(Verdict).index(self)


class Headroom(Enum):
    COMFORTABLE = "comfortable"
    TIGHT = "tight"
    NONE = "none"


@dataclass(frozen=True)
class MachineMemory:
    """The memory to fit into: GPUs (free bytes count) and available system RAM."""

    gpus: tuple[GpuDevice, ...]
    ram_available: int
    notes: tuple[str, ...] = ()
    #: RPC workers (``host:port``) whose devices lead ``gpus``, as llama.cpp orders them
    #: (see :func:`apex_gui.core.fit.cluster.machine_with_workers`).
    rpc_workers: tuple[str, ...] = ()

    @classmethod
    def from_snapshot(cls, snap: HardwareSnapshot) -> MachineMemory:
        """The probed machine as one llama.cpp process can use it (one MIG instance at most)."""
        gpus, notes = usable_by_one_process(snap.gpus)
        return cls(gpus, snap.system.available_bytes, snap.notes + notes)

    @property
    def unified(self) -> bool:
        return any(g.unified_memory for g in self.gpus)

    @property
    def capacities(self) -> list[int]:
        return [g.free_bytes for g in self.gpus]


def usable_by_one_process(
    gpus: Sequence[GpuDevice],
) -> tuple[tuple[GpuDevice, ...], tuple[str, ...]]:
    """The devices one llama.cpp process can place a model on, and a note when some are dropped.

    CUDA enumerates a single MIG instance per process, however many exist (NVIDIA's MIG user
    guide), so a model cannot be split across MIG instances: the plan uses the instance with
    the most free memory and says how to select it.
    """
    migs = [g for g in gpus if g.is_mig]
    if len(migs) <= 1:
        return tuple(gpus), ()
    chosen = max(migs, key=lambda g: g.free_bytes)
    kept = tuple(g for g in gpus if not g.is_mig or g is chosen)
    note = (f"{len(migs)} MIG instances found, but one llama.cpp process can use only one: "
            f"planning for {chosen.name} ({chosen.free_bytes / 1e9:.1f} GB free); start "
            f"llama-server with CUDA_VISIBLE_DEVICES={chosen.uuid} to use it.")
    return kept, (note,)


@dataclass(frozen=True)
class Candidate:
    """One file to fit: per-tensor bytes, its size on disk and the path the command names."""

    key: str
    label: str
    tensor_bytes: Mapping[str, int]
    file_bytes: int
    path: str


@dataclass(frozen=True)
class FitResult:
    """The best outcome of one candidate on one machine."""

    candidate: Candidate
    verdict: Verdict
    placement: Placement
    estimate: MemoryEstimate
    headroom_bytes: int
    headroom_share: float
    headroom: Headroom
    max_context: int | None
    command: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def flags(self) -> str:
        """The placement flags the verdict assumes (``-ngl 999 --n-cpu-moe 12``)."""
        parts = []
        if self.verdict is Verdict.CPU_ONLY:
            return "-ngl 0"
        if self.verdict is Verdict.DOES_NOT_FIT:
            return "-"
        ngl = self.placement.n_gpu_layers
        parts.append(f"-ngl {ALL_LAYERS if ngl is None else ngl}")
        if self.placement.n_cpu_moe:
            parts.append(f"--n-cpu-moe {self.placement.n_cpu_moe}")
        if self.placement.tensor_split is not None:
            parts.append("-ts " + ",".join(f"{v:g}" for v in self.placement.tensor_split))
        return " ".join(parts)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


@dataclass(frozen=True)
class Recommendation:
    results: tuple[FitResult, ...]
    recommended: FitResult | None
    context: ContextSettings
    machine: MachineMemory
    margin: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: When nothing fits: how many machines like this one (it plus rpc-server workers) would
    #: hold the smallest candidate; None when something fits or even 16 would not.
    machines_needed: int | None = None
    #: The KL divergence figures the tiers were ranked by (profile key -> figure), which
    #: kind was used ("measured", "predicted", "published"; None: not ranked) and why.
    quality: Mapping[str, QualityFigure] = field(default_factory=dict)
    quality_basis: str | None = None
    quality_note: str | None = None


# ----------------------------------------------------------------------------- fitting


def _gpu_slack(estimate: MemoryEstimate, machine: MachineMemory) -> list[int]:
    """Free bytes left on each GPU after the estimate (before the margin)."""
    slack = []
    for i, (device, usage) in enumerate(zip(machine.gpus, estimate.devices)):
        need = usage.total
        if device.unified_memory and i == 0:
            need += estimate.host.total  # one pool: the host's share comes out of it too
        slack.append(device.free_bytes - need)
    return slack


def _fits(estimate: MemoryEstimate, machine: MachineMemory, margin: int) -> bool:
    if any(s < margin for s in _gpu_slack(estimate, machine)):
        return False
    return machine.unified or estimate.host.total <= machine.ram_available


def _gpus_fit(estimate: MemoryEstimate, machine: MachineMemory, margin: int) -> bool:
    return all(s >= margin for s in _gpu_slack(estimate, machine))


def _smallest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """Smallest value in [lo, hi] with ok(value) true, ok being monotonic (False..True)."""
    if lo > hi or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """Largest value in [lo, hi] with ok(value) true, ok being monotonic (True..False)."""
    if lo > hi or not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class FitInputs:
    geom: ModelGeometry
    weights: WeightTable
    machine: MachineMemory
    margin: int
    mmproj_bytes: int

    def estimate(self, ctx: ContextSettings, placement: Placement) -> MemoryEstimate:
        return estimate_memory(self.geom, self.weights, ctx, self.machine.capacities, placement,
                               device_names=[g.name for g in self.machine.gpus],
                               mmproj_bytes=self.mmproj_bytes)


def _expert_layers(weights: WeightTable) -> int:
    """Blocks up to the last one with routed experts: --n-cpu-moe beyond that is --cpu-moe."""
    last = 0
    for index, layer in enumerate(weights.layers):
        if layer.experts and index not in weights.mtp_layers:
            last = index + 1
    return last


def _sizes_and_room(inputs: FitInputs, ctx: ContextSettings,
                    n_cpu_moe: int) -> tuple[list[int], list[int]]:
    """Bytes of each offloadable layer (blocks, then the output) and each GPU's room for them."""
    geom, weights = inputs.geom, inputs.weights
    probe = inputs.estimate(ctx, Placement(n_cpu_moe=n_cpu_moe))
    kv = probe.kv
    sizes = []
    for il in range(geom.n_layer_all):
        layer = weights.layers[il] if il < len(weights.layers) else None
        loaded = ctx.use_mtp or il not in geom.mtp_layers
        size = 0
        if layer is not None and loaded:
            size = layer.other + (0 if il < n_cpu_moe else layer.experts)
        sizes.append(size + kv.layer_bytes(il))
    sizes.append(weights.output_bytes(on_gpu=True))
    room = [max(g.free_bytes - inputs.margin - d.compute - d.extra, 1)
            for g, d in zip(inputs.machine.gpus, probe.devices)]
    return sizes, room


def balanced_split(inputs: FitInputs, ctx: ContextSettings,
                   n_cpu_moe: int = 0) -> tuple[float, ...] | None:
    """A ``-ts`` that gives each GPU a share of the *bytes* in proportion to its room.

    llama.cpp's default split counts layers, not bytes; models whose blocks differ in size
    (leading dense blocks, a heavy output layer) overflow the last GPU although the total
    fits. The split is returned as layer counts (llama.cpp normalises them); None for one GPU.
    """
    gpus = inputs.machine.gpus
    if len(gpus) < 2:
        return None
    sizes, room = _sizes_and_room(inputs, ctx, n_cpu_moe)
    total, budget = sum(sizes), sum(room)
    counts = [0] * len(gpus)
    device, filled = 0, 0
    for index, size in enumerate(sizes):
        target = room[device] * total / budget
        remaining_devices = len(gpus) - device - 1
        must_leave = len(sizes) - index <= remaining_devices  # every GPU gets a layer
        if device < len(gpus) - 1 and counts[device] and (filled + size > target or must_leave):
            device, filled = device + 1, 0
        counts[device] += 1
        filled += size
    return tuple(float(c) for c in counts)


def packed_split(inputs: FitInputs, ctx: ContextSettings,
                 n_cpu_moe: int = 0) -> tuple[float, ...] | None:
    """A ``-ts`` that fills each GPU in turn with as many whole layers as its room takes.

    Layers are indivisible and differ in size once some blocks' experts are in RAM, so a
    proportional split can leave one GPU a layer over while another has room: whether a
    given ``--n-cpu-moe`` fits then jumps up and down with N. Filling in order fits whenever
    any in-order split does, which keeps "the smallest N that fits" well defined. None for
    one GPU.
    """
    gpus = inputs.machine.gpus
    if len(gpus) < 2:
        return None
    sizes, room = _sizes_and_room(inputs, ctx, n_cpu_moe)
    counts = [0] * len(gpus)
    device, filled = 0, 0
    for index, size in enumerate(sizes):
        must_leave = len(sizes) - index <= len(gpus) - device - 1  # every GPU gets a layer
        if (device < len(gpus) - 1 and counts[device]
                and (filled + size > room[device] or must_leave)):
            device, filled = device + 1, 0
        counts[device] += 1
        filled += size
    return tuple(float(c) for c in counts)


def _neighbour_splits(split: tuple[float, ...]) -> list[tuple[float, ...]]:
    """``split`` with one layer moved across one device boundary, each way."""
    variants = []
    for i in range(len(split) - 1):
        for give, take in ((i, i + 1), (i + 1, i)):
            if split[give] > 1:
                moved = list(split)
                moved[give] -= 1
                moved[take] += 1
                variants.append(tuple(moved))
    return variants


def _placements(inputs: FitInputs, ctx: ContextSettings, n_cpu_moe: int = 0) -> list[Placement]:
    """The default split, then (several GPUs) a byte-balanced -ts, its neighbours and a
    packed -ts.

    Layers are indivisible, so the balanced split can leave one GPU a layer over while a
    split one layer different, or one that fills the GPUs in turn, fits: trying them finds
    the smaller --n-cpu-moe. The balanced split comes first as it spreads the headroom.
    """
    options = [Placement(n_cpu_moe=n_cpu_moe)]
    split = balanced_split(inputs, ctx, n_cpu_moe)
    if split is not None:
        splits = [split, *_neighbour_splits(split)]
        packed = packed_split(inputs, ctx, n_cpu_moe)
        if packed is not None and packed not in splits:
            splits.append(packed)
        options += [Placement(n_cpu_moe=n_cpu_moe, tensor_split=s) for s in splits]
    return options


def best_outcome(inputs: FitInputs, ctx: ContextSettings) -> tuple[Verdict, Placement]:
    machine, margin = inputs.machine, inputs.margin
    if not machine.gpus:
        placement = Placement(n_gpu_layers=0)
        fits = inputs.estimate(ctx, placement).host.total <= machine.ram_available
        return (Verdict.CPU_ONLY if fits else Verdict.DOES_NOT_FIT), placement
    full = Placement()
    for placement in _placements(inputs, ctx):
        if _fits(inputs.estimate(ctx, placement), machine, margin):
            return Verdict.FULL_GPU, placement
    n_expert_layers = _expert_layers(inputs.weights)
    if n_expert_layers:
        def gpus_fit(k: int) -> bool:
            return any(_gpus_fit(inputs.estimate(ctx, p), machine, margin)
                       for p in _placements(inputs, ctx, k))

        n = _smallest(1, n_expert_layers, gpus_fit)
        if n is not None:
            for placement in _placements(inputs, ctx, n):
                if _fits(inputs.estimate(ctx, placement), machine, margin):
                    return Verdict.EXPERTS_IN_RAM, placement
    n_all = inputs.geom.n_layer_all
    ngl = _largest(1, n_all, lambda k: _gpus_fit(
        inputs.estimate(ctx, Placement(n_gpu_layers=k)), machine, margin))
    if ngl is not None:
        placement = Placement(n_gpu_layers=ngl)
        if _fits(inputs.estimate(ctx, placement), machine, margin):
            return Verdict.PARTIAL, placement
    return Verdict.DOES_NOT_FIT, full


def _headroom(estimate: MemoryEstimate, machine: MachineMemory, verdict: Verdict,
              margin: int) -> tuple[int, float, Headroom]:
    if machine.gpus:
        slack = _gpu_slack(estimate, machine)
        index = min(range(len(slack)), key=lambda i: slack[i] / max(machine.gpus[i].free_bytes, 1))
        left, capacity = slack[index], machine.gpus[index].free_bytes
    else:
        left, capacity = machine.ram_available - estimate.host.total, machine.ram_available
        margin = 0
    share = left / capacity if capacity > 0 else 0.0
    if verdict is Verdict.DOES_NOT_FIT or left < margin:
        band = Headroom.NONE
    elif share >= COMFORTABLE_SHARE:
        band = Headroom.COMFORTABLE
    else:
        band = Headroom.TIGHT
    return left, share, band


def _max_context(inputs: FitInputs, ctx: ContextSettings, verdict: Verdict,
                 placement: Placement) -> int | None:
    """Largest pad256 context (up to the training context) at which the verdict still holds."""
    if verdict is Verdict.DOES_NOT_FIT:
        return None
    # Capped at the training context, unless the chosen context is already beyond it (the
    # largest context must never read smaller than the one the verdict was made for).
    limit = max(inputs.geom.context_length or 0, ctx.n_ctx_padded)
    top = max(limit // 256, 1)

    def holds(steps: int) -> bool:
        estimate = inputs.estimate(replace(ctx, n_ctx=steps * 256), placement)
        if verdict is Verdict.CPU_ONLY:
            return estimate.host.total <= inputs.machine.ram_available
        return _fits(estimate, inputs.machine, inputs.margin)

    steps = _largest(1, top, holds)
    return None if steps is None else steps * 256


def server_command(path: str, ctx: ContextSettings, verdict: Verdict, placement: Placement,
                   n_expert_layers: int, mmproj: str | None = None,
                   rpc_workers: Sequence[str] = ()) -> tuple[str, ...]:
    """The llama-server command line a verdict assumes (explicit -np: the server's automatic
    choice is 4 slots with a unified cache, which sizes memory differently)."""
    argv = ["llama-server", "-m", path, "-c", str(pad256(ctx.n_ctx))]
    if rpc_workers and verdict_uses_gpu(verdict):
        argv += ["--rpc", ",".join(rpc_workers)]
    if verdict is Verdict.CPU_ONLY or not verdict_uses_gpu(verdict):
        argv += ["-ngl", "0"]
    else:
        ngl = placement.n_gpu_layers
        argv += ["-ngl", str(ALL_LAYERS if ngl is None else ngl)]
        if placement.n_cpu_moe:
            if n_expert_layers and placement.n_cpu_moe >= n_expert_layers:
                argv += ["--cpu-moe"]
            else:
                argv += ["--n-cpu-moe", str(placement.n_cpu_moe)]
        if placement.tensor_split is not None:
            argv += ["-ts", ",".join(f"{v:g}" for v in placement.tensor_split)]
    argv += ["-ctk", ctx.type_k, "-ctv", ctx.type_v, "-fa", "on" if ctx.flash_attn else "off",
             "-np", str(ctx.n_seq)]
    if ctx.kv_unified:
        argv += ["--kv-unified"]
    if ctx.swa_full:
        argv += ["--swa-full"]
    if ctx.n_ubatch != DEFAULT_UBATCH:
        argv += ["-ub", str(ctx.n_ubatch)]
    if ctx.use_mtp:
        argv += ["--spec-type", "draft-mtp"]
    if mmproj:
        argv += ["--mmproj", mmproj]
    return tuple(argv)


def verdict_uses_gpu(verdict: Verdict) -> bool:
    return verdict in (Verdict.FULL_GPU, Verdict.EXPERTS_IN_RAM, Verdict.PARTIAL)


def evaluate(geom: ModelGeometry, candidate: Candidate, machine: MachineMemory,
             ctx: ContextSettings, *, margin: int = DEFAULT_MARGIN, mmproj_bytes: int = 0,
             mmproj_path: str | None = None) -> FitResult:
    """The best outcome of one candidate: verdict, flags, headroom and the largest context."""
    weights = weight_table(candidate.tensor_bytes, geom)
    inputs = FitInputs(geom, weights, machine, margin, mmproj_bytes)
    verdict, placement = best_outcome(inputs, ctx)
    if machine.rpc_workers and verdict_uses_gpu(verdict):
        from apex_gui.core.fit.cluster import explicit_split  # the fit room builds on this module

        placement = explicit_split(geom, machine, placement)
    estimate = inputs.estimate(ctx, placement)
    left, share, band = _headroom(estimate, machine, verdict, margin)
    notes: list[str] = []
    if verdict is Verdict.DOES_NOT_FIT:
        notes.append("try a smaller tier, a shorter context (-c) or a quantized KV cache "
                     "(-ctk q8_0 -ctv q8_0)")
    if verdict is Verdict.EXPERTS_IN_RAM or verdict is Verdict.PARTIAL:
        notes.append(f"{estimate.host.weights / 1e9:.1f} GB of weights stay in system RAM")
    if machine.rpc_workers and verdict_uses_gpu(verdict):
        remote = sum(len(usage.layers) for gpu, usage in zip(machine.gpus, estimate.devices)
                     if gpu.source == "rpc")
        notes.append(f"{remote} of {geom.n_layer_all} blocks on RPC workers "
                     f"({', '.join(machine.rpc_workers)}); start them before the server")
    return FitResult(
        candidate=candidate, verdict=verdict, placement=placement, estimate=estimate,
        headroom_bytes=left, headroom_share=share, headroom=band,
        max_context=_max_context(inputs, ctx, verdict, placement),
        command=server_command(candidate.path, ctx, verdict, placement,
                               _expert_layers(weights), mmproj_path, machine.rpc_workers),
        notes=tuple(notes))


def recommend(geom: ModelGeometry, candidates: Sequence[Candidate], machine: MachineMemory,
              ctx: ContextSettings, *, margin: int = DEFAULT_MARGIN, mmproj_bytes: int = 0,
              mmproj_path: str | None = None,
              quality: Mapping[str, QualityFigure] | None = None) -> Recommendation:
    """Evaluate every candidate (given in quality order) and pick the recommended one.

    ``quality``: KL divergence per candidate key (measured, predicted or published; see
    :mod:`apex_gui.core.fit.quality_rank`); None ranks by the published KL means.
    """
    from apex_gui.core.fit.quality_rank import choose_by_quality, published_figures

    results = tuple(evaluate(geom, c, machine, ctx, margin=margin, mmproj_bytes=mmproj_bytes,
                             mmproj_path=mmproj_path) for c in candidates)
    usable = [r for r in results if r.verdict is not Verdict.DOES_NOT_FIT]
    best = min(usable, key=lambda r: r.verdict.rank, default=None)
    # min() keeps the first of equal rank: the highest-quality candidate with the best verdict;
    # among the tiers with that verdict that fit comfortably, the lowest KL divergence wins.
    figures = published_figures(c.key for c in candidates) if quality is None else quality
    choice = choose_by_quality(usable, best, figures)
    best = choice.result
    notes = list(machine.notes)
    if not machine.gpus:
        notes.append("No GPU: CPU only, checked against available system RAM "
                     f"({machine.ram_available / 1e9:.1f} GB).")
    machines = None
    if best is None and results:
        from apex_gui.core.fit.cluster import machines_needed

        smallest = min(candidates, key=lambda c: c.file_bytes)
        machines = machines_needed(geom, smallest, machine, ctx, margin=margin)
        more = (f" {machines} machines like this one (this one plus {machines - 1} running "
                f"rpc-server, joined with --rpc) would hold {smallest.label}." if machines
                else "")
        notes.append("Nothing fits: choose a shorter context, a quantized KV cache or more "
                     "memory." + more)
    if 0 < geom.context_length < ctx.n_ctx_padded:
        notes.append(f"Context {ctx.n_ctx_padded} is beyond the model's training context "
                     f"({geom.context_length}): llama.cpp runs it but output quality may "
                     f"degrade; choose {geom.context_length} or less.")
    return Recommendation(results, best, ctx, machine, margin, tuple(notes), machines,
                          dict(figures), choice.basis, choice.note)


# ----------------------------------------------------------------------------- candidates


def profile_candidates(model: ModelInfo, profiles: Iterable[Profile] | None = None,
                       out_dir: str | Path | None = None) -> list[Candidate]:
    """One candidate per profile (exact per-tensor bytes from its plan), in quality order.

    The command names the file the quantize step writes: ``<model stem>-APEX-<Label>.gguf``.
    """
    from apex_gui.core.plan.precision import plan_from_profile
    from apex_gui.core.plan.profiles import builtin_profiles, quant_file_name

    chosen = list(profiles) if profiles is not None else list(builtin_profiles().values())
    folder = Path(out_dir) if out_dir is not None else model.path.parent
    candidates = []
    for profile in chosen:
        plan = plan_from_profile(model, profile)
        candidates.append(Candidate(
            key=profile.key, label=profile.label, tensor_bytes=plan.tensor_bytes_map(),
            file_bytes=plan.total_bytes(),
            path=str(folder / quant_file_name(model.path, profile.label))))
    return candidates


def file_candidate(model: ModelInfo) -> Candidate:
    """The model file as it is (for a GGUF that is already quantized)."""
    return Candidate(key="as-is", label=model.path.name,
                     tensor_bytes={t.name: t.nbytes for t in model.tensors},
                     file_bytes=model.file_size, path=str(model.path))
