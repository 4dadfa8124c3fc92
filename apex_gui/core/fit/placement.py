"""Where a model's weights go on one machine: the verdict ladder and the placement search.

The types every fit decision speaks in (:class:`Verdict`, :class:`MachineMemory`,
:class:`Candidate`, :class:`FitResult`) and :func:`best_outcome`, the search for the best
placement of one candidate: full GPU offload, else routed experts in RAM with the smallest
``--n-cpu-moe``, else the largest ``-ngl``, else no fit. The recommendation
(:mod:`apex_gui.core.fit.recommend`), the quality ranking and the RPC cluster planning all
build on this module, which imports none of them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry, Placement
from apex_gui.core.fit.hardware import GpuDevice, HardwareSnapshot
from apex_gui.core.fit.memory import MemoryEstimate, WeightTable, estimate_memory
from apex_gui.core.units import format_size

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
            f"planning for {chosen.name} ({format_size(chosen.free_bytes)} free); start "
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
    #: Its types need an importance matrix (IQ1/IQ2 experts), which the user may not have.
    needs_imatrix: bool = False


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


# ----------------------------------------------------------------------------- fitting


def gpu_slack(estimate: MemoryEstimate, machine: MachineMemory) -> list[int]:
    """Free bytes left on each GPU after the estimate (before the margin)."""
    slack = []
    for i, (device, usage) in enumerate(zip(machine.gpus, estimate.devices)):
        need = usage.total
        if device.unified_memory and i == 0:
            need += estimate.host.total  # one pool: the host's share comes out of it too
        slack.append(device.free_bytes - need)
    return slack


def fits_machine(estimate: MemoryEstimate, machine: MachineMemory, margin: int) -> bool:
    if any(s < margin for s in gpu_slack(estimate, machine)):
        return False
    return machine.unified or estimate.host.total <= machine.ram_available


def fits_gpus(estimate: MemoryEstimate, machine: MachineMemory, margin: int) -> bool:
    return all(s >= margin for s in gpu_slack(estimate, machine))


def smallest_where(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
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


def largest_where(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
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


def expert_layer_count(weights: WeightTable) -> int:
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
        if fits_machine(inputs.estimate(ctx, placement), machine, margin):
            return Verdict.FULL_GPU, placement
    n_expert_layers = expert_layer_count(inputs.weights)
    if n_expert_layers:
        def gpus_fit(k: int) -> bool:
            return any(fits_gpus(inputs.estimate(ctx, p), machine, margin)
                       for p in _placements(inputs, ctx, k))

        n = smallest_where(1, n_expert_layers, gpus_fit)
        if n is not None:
            for placement in _placements(inputs, ctx, n):
                if fits_machine(inputs.estimate(ctx, placement), machine, margin):
                    return Verdict.EXPERTS_IN_RAM, placement
    n_all = inputs.geom.n_layer_all
    ngl = largest_where(1, n_all, lambda k: fits_gpus(
        inputs.estimate(ctx, Placement(n_gpu_layers=k)), machine, margin))
    if ngl is not None:
        placement = Placement(n_gpu_layers=ngl)
        if fits_machine(inputs.estimate(ctx, placement), machine, margin):
            return Verdict.PARTIAL, placement
    return Verdict.DOES_NOT_FIT, full


def verdict_uses_gpu(verdict: Verdict) -> bool:
    return verdict in (Verdict.FULL_GPU, Verdict.EXPERTS_IN_RAM, Verdict.PARTIAL)
