"""Where the app's own runs go: the recommendation's memory model, applied to one job.

The Hardware & tiers tab says "full GPU offload" or "routed experts in RAM, --n-cpu-moe 12"
for a file on this machine; a job that runs that file here (imatrix, perplexity, KL
divergence, a benchmark, Try this quant) gets the placement the same code computes
(:func:`apex_gui.core.fit.recommend.evaluate` with the job's context), on the devices its
tool lists (``--list-devices``: any vendor's GPU the tools' backends see, with free memory)
and across the RPC workers it runs with. When the model does not fit the GPUs, the run says
how it was split; when it fits nowhere it runs on the CPU from the mapped file: a run never
fails for want of VRAM.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from apex_gui.core.fit.cluster import machine_with_workers
from apex_gui.core.fit.context_memory import DEFAULT_MARGIN, ContextSettings, ModelGeometry
from apex_gui.core.fit.hardware import GpuDevice, probe_system
from apex_gui.core.fit.placement import ALL_LAYERS, MachineMemory, Verdict, expert_layer_count
from apex_gui.core.fit.memory import weight_table
from apex_gui.core.fit.recommend import evaluate, file_candidate
from apex_gui.core.fit.rpc_workers import WorkerProbe
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.device_placement import (
    CPU_ONLY, PLACEMENT_TOOLS, DevicePlacement,
)
from apex_gui.core.jobs.devices import (VULKAN_VISIBLE_ENV, DeviceListing, ToolDevice,
                                        list_devices as default_list)

#: Batch llama-perplexity and llama-imatrix evaluate at once: ``n_seq = batch / context``
#: sequences share one KV cache (llama.cpp's default ``-b 2048``).
DEFAULT_BATCH = 2048


def job_context(job: Any) -> ContextSettings:
    """The memory a job's run needs, as the memory model's context settings.

    Perplexity and imatrix evaluate ``2048 / context`` chunks at once (the log's
    ``n_seq``); flash attention is left off as the larger (safe) compute estimate.
    """
    context = int(getattr(job, "context", 0) or 512)
    if job.tool in ("perplexity", "imatrix"):
        n_seq = max(1, DEFAULT_BATCH // context)
        return ContextSettings(n_ctx=context * n_seq, n_seq=n_seq, flash_attn=False)
    if job.tool == "bench":
        return ContextSettings(n_ctx=640, flash_attn=False)
    return ContextSettings(n_ctx=context, flash_attn=False)


def chosen_devices(listing: DeviceListing) -> tuple[ToolDevice, ...]:
    """The local devices jobs use: CUDA's when there are any (the same NVIDIA card also shows
    as a Vulkan device, and one process must not split a model across both views of it),
    else the Vulkan devices; software ones only when GGML_VK_VISIBLE_DEVICES asked for them
    (the tool lists them only then)."""
    gpus = listing.gpus
    cuda = tuple(d for d in gpus if d.backend == "CUDA")
    return cuda or gpus


def _as_gpu(device: ToolDevice, index: int) -> GpuDevice:
    return GpuDevice(index=index, name=f"{device.name} ({device.description})", uuid=None,
                     pci_bus_id=None, total_bytes=device.total_bytes,
                     free_bytes=device.free_bytes,
                     used_bytes=max(device.total_bytes - device.free_bytes, 0),
                     driver_version=None, cuda_version=None, is_mig=False, parent_uuid=None,
                     unified_memory=False, source="tool")


def place_model(model_path: Path, listing: DeviceListing, ctx: ContextSettings, *,
                ram_available: int | None = None, probes: Sequence[WorkerProbe] = (),
                margin: int = DEFAULT_MARGIN) -> DevicePlacement:
    """The placement of one model file on these devices (and workers) at this context."""
    devices = chosen_devices(listing)
    reachable = [p for p in probes if p.reachable]
    if not devices and not reachable:
        why = ("no GPU backend in the tools (`make gpu` builds Vulkan)" if not listing.backends
               else "the tools' GPU backends found no device")
        return replace(CPU_ONLY, summary=f"CPU only: {why}")
    model = open_model(model_path)
    geom = ModelGeometry.from_model(model)
    candidate = file_candidate(model)
    ram = probe_system().available_bytes if ram_available is None else ram_available
    machine = MachineMemory(tuple(_as_gpu(d, i) for i, d in enumerate(devices)), ram)
    if probes:
        machine = machine_with_workers(machine, probes)
    result = evaluate(geom, candidate, machine, ctx, margin=margin)
    verdict, placement = result.verdict, result.placement
    local = [d.name for d in devices]
    # --device only when some listed device is left out (a duplicate Vulkan view of a CUDA
    # card): naming them all would only repeat llama.cpp's own choice.
    explicit = tuple(local) if len(local) < len(listing.gpus) else ()
    env = ((VULKAN_VISIBLE_ENV, listing_env(listing)),) if any(d.software for d in devices) else ()
    where = ", ".join(g.name for g in machine.gpus)
    if verdict is Verdict.DOES_NOT_FIT or verdict is Verdict.CPU_ONLY:
        return replace(CPU_ONLY, verdict=verdict.value, summary=(
            f"CPU only: {model_path.name} does not fit {where} with this context "
            f"(nor with its experts in RAM or fewer layers); llama.cpp reads it from the file"))
    n_expert_layers = expert_layer_count(weight_table(candidate.tensor_bytes, geom))
    cpu_moe = bool(placement.n_cpu_moe and n_expert_layers
                   and placement.n_cpu_moe >= n_expert_layers)
    split = tuple(placement.tensor_split or ())
    ngl = ALL_LAYERS if placement.n_gpu_layers is None else placement.n_gpu_layers
    text = {
        Verdict.FULL_GPU: f"full GPU offload on {where}",
        Verdict.EXPERTS_IN_RAM: (f"routed experts of layers 0-{placement.n_cpu_moe - 1} in RAM, "
                                 f"the rest on {where}"),
        Verdict.PARTIAL: (f"partial offload: {ngl} of {geom.n_layer_all + 1} layers on {where}, "
                          "the rest on the CPU"),
    }[verdict]
    chosen = DevicePlacement(devices=explicit, gpu_layers=ngl,
                             n_cpu_moe=0 if cpu_moe else placement.n_cpu_moe, cpu_moe=cpu_moe,
                             tensor_split=split, verdict=verdict.value, env=env)
    return replace(chosen, summary=f"{text} ({chosen.flags_text()})")


def listing_env(listing: DeviceListing) -> str:
    """GGML_VK_VISIBLE_DEVICES as the listing was made with (a software device is listed
    only when it names it)."""
    return os.environ.get(VULKAN_VISIBLE_ENV, "0")


class JobPlacer:
    """Gives each job that loads a model its placement when it starts (set on
    ``LlamaTools.placer`` by the command line and the window).

    The tools' device list is read once (``--list-devices``, under a second); placements are
    remembered per model file, context and workers.
    """

    def __init__(self, tools: Any, *, cpu_only: bool = False,
                 probes: Sequence[WorkerProbe] = (),
                 list_devices: Callable[[Any], DeviceListing] | None = None) -> None:
        self.tools = tools
        self.cpu_only = cpu_only
        self.probes = tuple(probes)
        self._list = list_devices or (lambda tools: default_list(tools, reveal_software=False))
        self._listing: DeviceListing | None = None
        self._lock = threading.Lock()
        self._memo: dict[tuple[Any, ...], DevicePlacement] = {}

    def listing(self) -> DeviceListing:
        with self._lock:
            if self._listing is None:
                self._listing = self._list(self.tools)
            return self._listing

    def placement_for(self, job: Any) -> DevicePlacement | None:
        if job.tool not in PLACEMENT_TOOLS:
            return None
        if self.cpu_only or job.options.cpu_only:
            return replace(CPU_ONLY, summary="CPU only (setting or --cpu-only)")
        model = getattr(job, "model", None)
        listing = self.listing()
        if model is None or listing.error:
            return replace(CPU_ONLY, summary=f"CPU only: {listing.error or 'no model'}")
        ctx = job_context(job)
        workers = tuple(job.options.rpc_workers)
        probes = tuple(p for p in self.probes if p.worker.endpoint in workers)
        if len(probes) < len(workers):
            return None  # workers not probed here: their devices are unknown to the model
        try:
            stat = Path(model).stat()
        except OSError:
            return None  # the job's own check names the missing model
        key = (str(model), stat.st_size, stat.st_mtime_ns, ctx, workers)
        if key not in self._memo:
            self._memo[key] = place_model(Path(model), listing, ctx, probes=probes)
        return self._memo[key]

    def __call__(self, job: Any) -> Any:
        """The job with its placement in its run options (one that has one keeps it)."""
        if job.options.placement is not None:
            return job
        placement = self.placement_for(job)
        return job if placement is None else job.with_options(
            replace(job.options, placement=placement))
