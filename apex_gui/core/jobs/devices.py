"""The devices a llama.cpp tool sees, as it lists them, and the GPU backends beside it.

A portable build loads every ``libggml-<backend>.so`` in the tool's folder (GGML_BACKEND_DL):
the CPU variants always, Vulkan or CUDA when ``make gpu`` built them. ``--list-devices``
names each device those backends found with its memory (``Vulkan0: NVIDIA GeForce RTX 4090
(24564 MiB, 23012 MiB free)``); the CPU is not listed. That listing is the portable probe of
GPU memory (NVML knows only NVIDIA cards) and the device names ``--device`` takes.

ggml's Vulkan backend skips software devices (Mesa's lavapipe) unless
``GGML_VK_VISIBLE_DEVICES`` names them: the listing says when one is there, unused.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.jobs.tools import LlamaTools, child_environment

MiB = 1024 * 1024
#: Seconds a ``--list-devices`` run may take (a Vulkan driver's start-up included).
LIST_TIMEOUT_S = 30.0
#: Tools whose ``--list-devices`` shows what a job of theirs would use.
DEVICE_TOOLS = ("perplexity", "imatrix", "completion", "bench")
#: ggml's Vulkan backend uses the devices this names (indices into the driver's list); with
#: it unset, software devices are skipped.
VULKAN_VISIBLE_ENV = "GGML_VK_VISIBLE_DEVICES"
#: Backends a tools folder can hold beside the CPU variants, by library name.
GPU_BACKENDS = {"vulkan": "Vulkan", "cuda": "CUDA", "hip": "ROCm", "metal": "Metal",
                "sycl": "SYCL", "opencl": "OpenCL"}

_DEVICE_LINE = re.compile(r"^\s*(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")
_SOFTWARE = re.compile(r"llvmpipe|lavapipe|swiftshader", re.I)


@dataclass(frozen=True)
class ToolDevice:
    """One device as a tool lists it."""

    name: str  # Vulkan0, CUDA1, RPC0...: what --device takes
    description: str
    total_bytes: int
    free_bytes: int

    @property
    def backend(self) -> str:
        return self.name.rstrip("0123456789")

    @property
    def software(self) -> bool:
        """A CPU pretending to be a GPU (lavapipe): correct, never faster than the CPU."""
        return bool(_SOFTWARE.search(self.description))

    def summary(self) -> str:
        kind = ", software" if self.software else ""
        return (f"{self.name} {self.description} ({self.free_bytes / 1e9:.2f} GB free of "
                f"{self.total_bytes / 1e9:.2f} GB{kind})")


@dataclass(frozen=True)
class DeviceListing:
    """What one tool folder offers: its GPU backends and the devices they found."""

    folder: Path | None
    backends: tuple[str, ...]  # GPU backend libraries present (vulkan, cuda...)
    devices: tuple[ToolDevice, ...]
    #: Software devices the Vulkan backend skips unless GGML_VK_VISIBLE_DEVICES names them.
    hidden_software: tuple[ToolDevice, ...] = ()
    error: str | None = None

    @property
    def gpus(self) -> tuple[ToolDevice, ...]:
        """The local devices a job may be placed on (RPC workers are planned separately)."""
        return tuple(d for d in self.devices if d.backend != "RPC")

    def lines(self) -> list[str]:
        """Human lines for ``apex-studio tools`` and the settings."""
        if self.error:
            return [self.error]
        backends = ", ".join(GPU_BACKENDS.get(b, b) for b in self.backends) or "none"
        out = [f"GPU backends: {backends}"]
        out += [f"device {d.summary()}" for d in self.devices]
        if not self.devices:
            out.append("devices: none besides the CPU")
        for device in self.hidden_software:
            out.append(f"software device {device.name} {device.description} is not used "
                       f"(llama.cpp skips it unless {VULKAN_VISIBLE_ENV} names it)")
        return out

    def to_dict(self) -> dict[str, object]:
        return {"folder": str(self.folder) if self.folder else None,
                "backends": list(self.backends), "error": self.error,
                "devices": [d.__dict__ for d in self.devices],
                "hidden_software": [d.__dict__ for d in self.hidden_software]}


def parse_device_list(output: str) -> list[ToolDevice]:
    """Every device in a tool's ``--list-devices`` output."""
    devices = []
    for line in output.splitlines():
        match = _DEVICE_LINE.match(line)
        if match:
            devices.append(ToolDevice(match.group(1), match.group(2).strip(),
                                      int(match.group(3)) * MiB, int(match.group(4)) * MiB))
    return devices


def gpu_backends_in(folder: Path) -> tuple[str, ...]:
    """GPU backend libraries beside a tool (``libggml-vulkan.so`` -> ``vulkan``)."""
    found = []
    for name in GPU_BACKENDS:
        for suffix in (".so", ".dylib", ".dll"):
            if (folder / f"libggml-{name}{suffix}").exists() \
                    or list(folder.glob(f"libggml-{name}-*{suffix}")):
                found.append(name)
                break
    return tuple(found)


def _run_list(executable: Path, env: dict[str, str]) -> tuple[list[ToolDevice], str | None]:
    try:
        proc = subprocess.run([str(executable), "--list-devices"], capture_output=True,
                              text=True, errors="replace", timeout=LIST_TIMEOUT_S, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return [], (f"{executable.name} --list-devices did not answer within "
                    f"{LIST_TIMEOUT_S:.0f} s: a GPU driver hangs at start; check the driver")
    except OSError as error:
        return [], f"{executable.name} could not be started: {error}"
    if proc.returncode != 0 or "Available devices" not in proc.stdout + proc.stderr:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [], f"{executable.name} --list-devices failed (exit {proc.returncode}): {tail[0]}"
    return parse_device_list(proc.stdout + proc.stderr), None


def list_devices(tools: LlamaTools, tool: str = "perplexity",
                 base_env: dict[str, str] | None = None,
                 reveal_software: bool = True) -> DeviceListing:
    """The devices ``tool`` sees in this environment (with ``reveal_software``, a second run
    finds skipped software Vulkan devices when the folder has the Vulkan backend and the
    first found none)."""
    location = tools.locate(tool)
    if location.path is None:
        return DeviceListing(None, (), (), error=f"{location.executable} not found")
    folder = location.path.resolve().parent if location.path.is_symlink() else location.path.parent
    backends = gpu_backends_in(location.path.parent)
    if not backends:
        # llama.cpp builds its backends as libraries beside the tools (shared builds, the
        # portable one): none there, no device but the CPU, and no tool start to pay for.
        return DeviceListing(folder, (), ())
    env = child_environment(base_env)
    devices, error = _run_list(location.path, env)
    if error:
        return DeviceListing(folder, backends, (), error=error)
    hidden: list[ToolDevice] = []
    if reveal_software and "vulkan" in backends \
            and not any(d.backend == "Vulkan" for d in devices) and VULKAN_VISIBLE_ENV not in env:
        revealed, _ = _run_list(location.path, {**env, VULKAN_VISIBLE_ENV: "0"})
        hidden = [d for d in revealed if d.backend == "Vulkan" and d.software]
    return DeviceListing(folder, backends, tuple(devices), tuple(hidden))


def software_vulkan_env() -> dict[str, str]:
    """The environment that makes ggml use the first Vulkan device even if it is software
    (tests on lavapipe; llama.cpp's own CI does the same)."""
    return {VULKAN_VISIBLE_ENV: os.environ.get(VULKAN_VISIBLE_ENV, "0")}
