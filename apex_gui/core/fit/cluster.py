"""This machine plus llama.cpp RPC workers, as one device list for the memory model.

llama.cpp lists the devices of every ``--rpc`` worker first (in the order given, each
worker's devices in its own order), then the local GPUs; ``-ngl`` and ``--tensor-split``
count over that list, and the host (token embeddings, CPU-side layers, routed experts kept
in RAM) stays on this machine. An RPC device is planned like a GPU with its free memory: a
worker without an accelerator offers its CPU device, sized by that machine's RAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from apex_gui.core.fit.hardware import GpuDevice
from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry, Placement
from apex_gui.core.fit.memory import layer_devices, weight_table
# The placement search itself: a machine with workers is planned exactly like one with GPUs.
from apex_gui.core.fit.context_memory import DEFAULT_MARGIN
from apex_gui.core.fit.placement import Candidate, MachineMemory, Verdict, best_outcome, FitInputs
from apex_gui.core.fit.rpc_workers import DEFAULT_RPC_PORT, MAX_RPC_SERVERS, RemoteDevice, WorkerProbe

__all__ = ["explicit_split", "machine_with_workers", "machines_needed", "remote_gpu"]


def remote_gpu(device: RemoteDevice, index: int) -> GpuDevice:
    """A worker's device as the memory model's device (named ``RPC0 host:port``)."""
    return GpuDevice(index=index, name=f"{device.name} {device.endpoint}", uuid=None,
                     pci_bus_id=None, total_bytes=device.total_bytes,
                     free_bytes=device.free_bytes,
                     used_bytes=max(device.total_bytes - device.free_bytes, 0),
                     driver_version=None, cuda_version=None, is_mig=False, parent_uuid=None,
                     unified_memory=False, source="rpc")


def machine_with_workers(machine: MachineMemory, probes: Sequence[WorkerProbe]) -> MachineMemory:
    """``machine`` with the devices of every reachable worker ahead of its GPUs.

    Unreachable workers are left out (their error lines become notes): a command naming a
    worker that is down would abort at start.
    """
    remote: list[GpuDevice] = []
    endpoints: list[str] = []
    notes = list(machine.notes)
    for probe in probes:
        if not probe.reachable:
            notes.append(f"{probe.error} (left out of the plan)")
            continue
        endpoints.append(probe.worker.endpoint)
        for device in probe.devices:
            # Renumbered as one tool run numbers them: RPC0.. across every --rpc endpoint.
            numbered = replace(device, name=f"RPC{len(remote)}")
            remote.append(remote_gpu(numbered, len(remote)))
    if not endpoints:
        return replace(machine, notes=tuple(notes))
    return replace(machine, gpus=tuple(remote) + tuple(machine.gpus),
                   rpc_workers=tuple(endpoints), notes=tuple(notes))


def explicit_split(geom: ModelGeometry, machine: MachineMemory,
                   placement: Placement) -> Placement:
    """``placement`` with its layer split written out as ``--tensor-split`` layer counts.

    Without ``-ts`` llama.cpp splits by the free memory each device reports at load time,
    which on a shared worker differs from the probe; counts pin the planned split.
    """
    if placement.tensor_split is not None or len(machine.gpus) < 2:
        return placement
    n_all = geom.n_layer_all
    ngl = n_all + 1 if placement.n_gpu_layers is None else placement.n_gpu_layers
    owner = layer_devices(n_all, ngl, [float(max(g.free_bytes, 0)) for g in machine.gpus])
    counts = tuple(float(owner.count(i)) for i in range(len(machine.gpus)))
    return replace(placement, tensor_split=counts)


def _clone_workers(machine: MachineMemory, n_workers: int) -> MachineMemory:
    """``machine`` plus ``n_workers`` machines like it, each running rpc-server."""
    offered = [g.free_bytes for g in machine.gpus] or [machine.ram_available]
    remote: list[GpuDevice] = []
    endpoints = []
    for worker in range(n_workers):
        endpoint = f"worker{worker + 1}:{DEFAULT_RPC_PORT}"
        endpoints.append(endpoint)
        for free in offered:
            device = RemoteDevice(f"RPC{len(remote)}", endpoint, free, free)
            remote.append(remote_gpu(device, len(remote)))
    return replace(machine, gpus=tuple(remote) + tuple(machine.gpus),
                   rpc_workers=tuple(endpoints))


def machines_needed(geom: ModelGeometry, candidate: Candidate, machine: MachineMemory,
                    ctx: ContextSettings, *, margin: int = DEFAULT_MARGIN,
                    limit: int = MAX_RPC_SERVERS + 1) -> int | None:
    """Fewest machines like this one (it counted) that hold ``candidate``; None past ``limit``.

    Each extra machine offers what this one does: its GPUs' free memory, or its available
    RAM through rpc-server's CPU device when it has no GPU.
    """
    weights = weight_table(candidate.tensor_bytes, geom)

    def fits(n_machines: int) -> bool:
        inputs = FitInputs(geom, weights, _clone_workers(machine, n_machines - 1), margin, 0)
        return best_outcome(inputs, ctx)[0] is not Verdict.DOES_NOT_FIT

    if fits(1):
        return 1
    low, high = 1, 2
    while not fits(high):  # double, then bisect: each check is a full placement search
        low = high
        if high >= limit:
            return None
        high = min(high * 2, limit)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high
