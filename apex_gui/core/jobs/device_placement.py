"""Where a job's model goes on this machine's devices, as llama.cpp flags.

The decision is made by the memory model that makes the recommendation
(:func:`apex_gui.core.fit.job_placement.place_job`: full offload, else routed experts in RAM
with the smallest ``--n-cpu-moe``, else the largest ``-ngl``, else the CPU); this module only
carries it to the tool's command line and into the run's description, so a run says where it
ran. A placement is explicit whenever GPU backends are present: llama.cpp's own default
(``-ngl`` auto with ``--fit``) would place the model by a different rule than the one the app
showed the user.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

#: Tools that load a model onto devices (llama-quantize and llama-gguf-split never do).
PLACEMENT_TOOLS = frozenset({"imatrix", "perplexity", "completion", "bench"})
#: Log verbosity at which llama.cpp names the devices it used and the layers it offloaded
#: (``using device Vulkan0 (...)``, ``offloaded 13/13 layers to GPU``, buffer sizes per
#: device): the run log then records them. Only for the evaluation tools: llama-bench has no
#: such flag, and llama-completion's generated text must stay free of log lines.
DEVICE_LOG_ARGS = ("-lv", "4")
DEVICE_LOG_TOOLS = frozenset({"imatrix", "perplexity"})


@dataclass(frozen=True)
class DevicePlacement:
    """The device flags of one run, and what they mean in words."""

    #: Run on the CPU only (the "CPU only" setting, ``--cpu-only``, or no usable GPU).
    cpu_only: bool = False
    #: ``--device`` names (``Vulkan0``, ``CUDA0``, ``RPC0``...); empty: llama.cpp's choice.
    devices: tuple[str, ...] = ()
    #: ``-ngl``; None leaves it unset.
    gpu_layers: int | None = None
    #: ``--n-cpu-moe N``: routed experts of the first N layers stay in RAM.
    n_cpu_moe: int = 0
    #: ``--cpu-moe``: every layer's routed experts stay in RAM.
    cpu_moe: bool = False
    #: ``-ts``: share of the layers per device, in ``devices`` order.
    tensor_split: tuple[float, ...] = ()
    #: The memory model's verdict (``full GPU offload``, ``routed experts in system RAM``...).
    verdict: str = ""
    #: One line for the log, the run history and the Run tab.
    summary: str = ""
    #: Environment the devices need (GGML_VK_VISIBLE_DEVICES for a software Vulkan device).
    env: tuple[tuple[str, str], ...] = ()

    @property
    def uses_gpu(self) -> bool:
        return not self.cpu_only and (self.gpu_layers is None or self.gpu_layers > 0)

    def tool_args(self, tool: str) -> list[str]:
        """The flags for ``tool`` (short name); none for tools that load no model."""
        if tool not in PLACEMENT_TOOLS:
            return []
        args = self._flags(bench=tool == "bench")
        if self.cpu_only or tool not in DEVICE_LOG_TOOLS:
            return args
        return [*args, *DEVICE_LOG_ARGS]

    def flags_text(self) -> str:
        """The flags as a llama-perplexity or llama-server command line spells them."""
        return " ".join(self._flags(bench=False))

    def _flags(self, bench: bool) -> list[str]:
        # llama-bench takes lists with "/" and has no --cpu-moe.
        sep, device_flag = ("/", "-dev") if bench else (",", "--device")
        if self.cpu_only:
            return [device_flag, "none", "-ngl", "0"]
        args: list[str] = []
        if self.devices:
            args += [device_flag, sep.join(self.devices)]
        if self.gpu_layers is not None:
            args += ["-ngl", str(self.gpu_layers)]
        if self.cpu_moe:
            args += ["-ncmoe", "999"] if bench else ["--cpu-moe"]
        elif self.n_cpu_moe:
            args += ["-ncmoe" if bench else "--n-cpu-moe", str(self.n_cpu_moe)]
        if self.tensor_split:
            args += ["-ts", sep.join(f"{v:g}" for v in self.tensor_split)]
        return args

    def environment(self) -> dict[str, str]:
        return dict(self.env)

    def describe(self) -> str:
        """The summary, or the flags when there is none."""
        if self.summary:
            return self.summary
        if self.cpu_only:
            return "CPU only"
        return self.flags_text() or "llama.cpp's choice"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the run history stores it)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["devices"] = list(self.devices)
        data["tensor_split"] = list(self.tensor_split)
        data["env"] = [list(pair) for pair in self.env]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DevicePlacement | None:
        if not data:
            return None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("devices", "tensor_split"):
            if key in values:
                values[key] = tuple(values[key] or ())
        if "env" in values:
            values["env"] = tuple(tuple(pair) for pair in values["env"] or ())
        return cls(**values)


#: What llama.cpp prints when a device's memory runs out (buffer allocation at load, the
#: Vulkan and CUDA errors during a run).
_GPU_OUT_OF_MEMORY = re.compile(
    r"ErrorOutOfDeviceMemory|cudaMalloc failed: out of memory|CUDA error: out of memory|"
    r"failed to allocate (?:Vulkan|CUDA|ROCm)\w* buffer|"
    r"(?:Vulkan|CUDA|ROCm)\w* buffer of size \d+.*failed|"
    r"unable to allocate (?:Vulkan|CUDA|ROCm)\w*", re.I)


def gpu_out_of_memory(log: str) -> bool:
    """The run failed because a GPU's memory ran out."""
    return bool(_GPU_OUT_OF_MEMORY.search(log))


CPU_ONLY = DevicePlacement(cpu_only=True, verdict="CPU only", summary="CPU only")


_USING_DEVICE = re.compile(r"using device (\S+) \((.*)\) \(")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_MODEL_BUFFER = re.compile(r"^\S*load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB", re.M)


@dataclass(frozen=True)
class DeviceUse:
    """What a tool's log (at ``-lv 4``) says it used: devices, layers offloaded, weights
    per buffer (``CPU_Mapped``, ``Vulkan0``...)."""

    devices: tuple[str, ...] = ()  # "Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))"
    layers_offloaded: int | None = None
    layers_total: int | None = None
    model_mib: tuple[tuple[str, float], ...] = ()

    def to_results(self) -> dict[str, Any]:
        """Keys for a run's results (none when the log said nothing about devices)."""
        results: dict[str, Any] = {}
        if self.devices:
            results["devices_used"] = list(self.devices)
        if self.layers_offloaded is not None:
            results["layers_offloaded"] = f"{self.layers_offloaded}/{self.layers_total}"
        if self.model_mib:
            results["model_mib_by_buffer"] = dict(self.model_mib)
        return results


def parse_device_use(log: str) -> DeviceUse:
    devices = tuple(dict.fromkeys(f"{m.group(1)} ({m.group(2)})"
                                  for m in _USING_DEVICE.finditer(log)))
    offloaded = _OFFLOADED.search(log)
    buffers = tuple((m.group(1), float(m.group(2))) for m in _MODEL_BUFFER.finditer(log))
    return DeviceUse(devices, int(offloaded.group(1)) if offloaded else None,
                     int(offloaded.group(2)) if offloaded else None, buffers)
