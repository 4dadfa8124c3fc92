"""What memory this machine has, as facts: NVIDIA GPUs via NVML, system RAM, CPU cores, disk.

The planner asks "which quant tier fits?"; this module answers "what is there to fit it into?"
and nothing else (formatting for people lives with the views and the CLI).

Sources, and the pitfalls they guard against:

* NVIDIA GPUs are read through NVML (``nvidia-ml-py``, imported as ``pynvml``) behind the
  small :class:`NvmlBackend` protocol, so tests and other callers can inject a backend.
  A missing package, a missing ``libnvidia-ml`` or an unloaded driver is a normal state of
  a machine, not an error: :func:`probe_gpus` returns no devices and a note saying so.
* **Order**: NVML enumerates GPUs in PCI bus order. CUDA (and so llama.cpp's ``CUDA0``,
  ``CUDA1``...) defaults to "fastest first" unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set, and
  ``CUDA_VISIBLE_DEVICES`` renumbers further. :attr:`GpuDevice.index` is NVML's index; match a
  device to CUDA by :attr:`GpuDevice.uuid`, never by position.
* **MIG**: a GPU in MIG mode cannot be used whole; each MIG instance has its own memory and is
  listed instead of its parent (``is_mig=True``, ``parent_uuid`` set).
* **Unified memory** (NVIDIA GB10 / DGX Spark): NVML answers NOT_SUPPORTED for memory info.
  GPU and CPU share one pool, so the device is given ``MemTotal`` / ``MemAvailable`` from
  ``/proc/meminfo`` and marked ``unified_memory=True``; do not add it to system RAM.
* Devices the user describes by hand ("2 x RTX 3090", "128 GB unified") come from
  :func:`parse_device_spec`, to plan for a machine other than this one.

Units: every size in this module is in bytes. In user text ``GB``/``MB``/``TB`` are decimal
(10^9...) and ``GiB``/``MiB``/``TiB`` binary (2^30...).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, NamedTuple, Protocol

import psutil

from apex_gui.core.units import GB, GiB

__all__ = [
    "GB",
    "GiB",
    "DEFAULT_MEMINFO_PATH",
    "GpuDevice",
    "HardwareSnapshot",
    "NvmlBackend",
    "NvmlMemory",
    "PynvmlBackend",
    "SystemMemory",
    "disk_free_bytes",
    "probe_cpu_cores",
    "probe_gpus",
    "probe_system",
    "snapshot",
]

DEFAULT_MEMINFO_PATH = Path("/proc/meminfo")


# rpc: a worker's device; tool: a device as the tools' --list-devices shows it
DeviceSource = Literal["nvml", "manual", "rpc", "tool"]


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GpuDevice:
    """One device a model can be placed on: a GPU, a MIG instance or a unified-memory pool.

    ``index`` is NVML's enumeration index (PCI order; MIG instances carry their parent's) for
    probed devices and the position in the parsed list for manual ones. ``uuid`` is NVML's
    ("GPU-..." or "MIG-...") and is the only safe key to match CUDA's device order; manual
    devices have none. For manual devices ``free_bytes`` equals ``total_bytes``: nothing is
    known about what else would run there.
    """

    index: int
    name: str
    uuid: str | None
    pci_bus_id: str | None
    total_bytes: int
    free_bytes: int
    used_bytes: int
    driver_version: str | None
    cuda_version: str | None
    is_mig: bool
    parent_uuid: str | None
    unified_memory: bool
    source: DeviceSource


@dataclass(frozen=True)
class SystemMemory:
    """System RAM: ``available_bytes`` is what can be allocated without swapping."""

    total_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class HardwareSnapshot:
    """Everything probed at one moment, plus notes for people (why no GPU, shared pools...)."""

    gpus: tuple[GpuDevice, ...]
    system: SystemMemory
    cpu_cores_physical: int | None
    cpu_cores_logical: int
    notes: tuple[str, ...]


class NvmlMemory(NamedTuple):
    """NVML's memory info for one device, in bytes."""

    total: int
    free: int
    used: int


# ----------------------------------------------------------------------------- NVML backend

# An opaque NVML device handle (a ctypes pointer for pynvml; anything for a fake).
NvmlHandle = object


class NvmlBackend(Protocol):
    """The NVML calls the probe needs, with plain Python results.

    Implementations raise ``pynvml.NVMLError`` (or its code-specific subclasses) for NVML
    failures exactly as pynvml does, and ``ImportError`` from :meth:`init` when the binding is
    missing. :func:`probe_gpus` turns all of those into notes.
    """

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def device_count(self) -> int: ...

    def handle_by_index(self, index: int) -> NvmlHandle: ...

    def name(self, handle: NvmlHandle) -> str: ...

    def uuid(self, handle: NvmlHandle) -> str: ...

    def pci_bus_id(self, handle: NvmlHandle) -> str: ...

    def memory_info(self, handle: NvmlHandle) -> NvmlMemory: ...

    def driver_version(self) -> str: ...

    def cuda_driver_version(self) -> int:
        """CUDA version the driver supports, encoded as NVML does (12040 for 12.4)."""
        ...

    def mig_mode(self, handle: NvmlHandle) -> tuple[int, int]:
        """(current, pending) MIG mode; 1 is enabled."""
        ...

    def max_mig_device_count(self, handle: NvmlHandle) -> int: ...

    def mig_device_handle_by_index(self, handle: NvmlHandle, index: int) -> NvmlHandle: ...


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned bytes for strings; both are still in the wild.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class PynvmlBackend:
    """:class:`NvmlBackend` over the real ``pynvml`` module (package ``nvidia-ml-py``).

    ``pynvml`` is imported in :meth:`init`, not at module import, so a machine without it can
    still import this module; the resulting ``ImportError`` is reported by :func:`probe_gpus`.
    """

    def __init__(self, module: ModuleType | None = None) -> None:
        self._nvml: ModuleType | None = module

    @property
    def _lib(self) -> ModuleType:
        if self._nvml is None:
            raise RuntimeError("PynvmlBackend used before init()")
        return self._nvml

    def init(self) -> None:
        """Import pynvml if needed and call ``nvmlInit``."""
        if self._nvml is None:
            # start-up: pynvml loads only when NVML is probed (a machine without NVIDIA never)
            import pynvml

            self._nvml = pynvml
        self._nvml.nvmlInit()

    def shutdown(self) -> None:
        """Call ``nvmlShutdown``."""
        self._lib.nvmlShutdown()

    def device_count(self) -> int:
        """Number of physical GPUs NVML sees."""
        return int(self._lib.nvmlDeviceGetCount())

    def handle_by_index(self, index: int) -> NvmlHandle:
        """Handle of the GPU at NVML index ``index`` (PCI order)."""
        return self._lib.nvmlDeviceGetHandleByIndex(index)

    def name(self, handle: NvmlHandle) -> str:
        """Marketing name, e.g. "NVIDIA GeForce RTX 4090"."""
        return _text(self._lib.nvmlDeviceGetName(handle))

    def uuid(self, handle: NvmlHandle) -> str:
        """NVML UUID: "GPU-..." for a GPU, "MIG-..." for a MIG instance."""
        return _text(self._lib.nvmlDeviceGetUUID(handle))

    def pci_bus_id(self, handle: NvmlHandle) -> str:
        """PCI bus id such as "00000000:01:00.0"."""
        return _text(self._lib.nvmlDeviceGetPciInfo(handle).busId)

    def memory_info(self, handle: NvmlHandle) -> NvmlMemory:
        """Total / free / used bytes (v1 call: present on every driver)."""
        info = self._lib.nvmlDeviceGetMemoryInfo(handle)
        return NvmlMemory(total=int(info.total), free=int(info.free), used=int(info.used))

    def driver_version(self) -> str:
        """Driver version string, e.g. "550.54.15"."""
        return _text(self._lib.nvmlSystemGetDriverVersion())

    def cuda_driver_version(self) -> int:
        """CUDA driver version as an int (12040 for 12.4)."""
        return int(self._lib.nvmlSystemGetCudaDriverVersion())

    def mig_mode(self, handle: NvmlHandle) -> tuple[int, int]:
        """(current, pending) MIG mode."""
        current, pending = self._lib.nvmlDeviceGetMigMode(handle)
        return int(current), int(pending)

    def max_mig_device_count(self, handle: NvmlHandle) -> int:
        """Number of MIG slots to scan (some may be empty)."""
        return int(self._lib.nvmlDeviceGetMaxMigDeviceCount(handle))

    def mig_device_handle_by_index(self, handle: NvmlHandle, index: int) -> NvmlHandle:
        """Handle of the MIG instance in slot ``index``; NOT_FOUND for an empty slot."""
        return self._lib.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)


# NVML's C return codes (nvml.h). They are ABI and never change; using them here lets the probe
# classify errors without importing pynvml, which may be absent.
_NVML_ERROR_INVALID_ARGUMENT = 2
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_NO_PERMISSION = 4
_NVML_ERROR_NOT_FOUND = 6
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_DEVICE_MIG_ENABLE = 1


class _NoNvmlError(Exception):
    """Never raised: stands in for pynvml.NVMLError when pynvml is not installed."""


def _nvml_error_type() -> type[Exception]:
    try:
        # optional: without pynvml there is no NVML error to catch
        import pynvml
    except ImportError:
        return _NoNvmlError
    return pynvml.NVMLError


def _nvml_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _describe_nvml_error(exc: BaseException) -> str:
    # str() of an NVMLError with an unknown code calls back into the library, which may be the
    # very thing that is broken.
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - any failure here must not hide the original error
        text = ""
    code = _nvml_code(exc)
    if not text:
        text = f"NVML error {code}" if code is not None else type(exc).__name__
    return text


_CPU_ONLY = (
    "planning for CPU / system RAM only; add a device by hand to plan for another machine."
)


def _no_gpu_note(exc: BaseException) -> str:
    """A note for a probe that could not start, naming the cause and what it means."""
    if isinstance(exc, ImportError):
        return (
            "NVIDIA GPUs cannot be probed (Python package nvidia-ml-py is not installed; "
            f"pip install nvidia-ml-py): {_CPU_ONLY}"
        )
    code = _nvml_code(exc)
    if code == _NVML_ERROR_LIBRARY_NOT_FOUND:
        return f"No NVIDIA GPU found (NVML library not found): {_CPU_ONLY}"
    if code == _NVML_ERROR_DRIVER_NOT_LOADED:
        return f"No NVIDIA GPU found (NVIDIA driver not loaded): {_CPU_ONLY}"
    if code == _NVML_ERROR_NO_PERMISSION:
        return (
            "NVIDIA GPUs cannot be probed (no permission to open the NVIDIA device files; "
            f"check membership of the video/render group): {_CPU_ONLY}"
        )
    return f"NVIDIA GPUs cannot be probed (NVML: {_describe_nvml_error(exc)}): {_CPU_ONLY}"


def _format_cuda_version(encoded: int) -> str:
    # NVML encodes CUDA versions as 1000 * major + 10 * minor.
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def _read_meminfo(path: Path) -> dict[str, int]:
    """Parse a /proc/meminfo-style file into bytes per key."""
    values: dict[str, int] = {}
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not fields or not fields[0].isdigit():
            continue
        # The kernel writes "kB" but means KiB.
        scale = 1024 if len(fields) > 1 and fields[1].lower() == "kb" else 1
        values[key.strip()] = int(fields[0]) * scale
    return values


def _unified_pool(meminfo_path: Path) -> NvmlMemory:
    """The shared CPU/GPU pool of a unified-memory machine, from MemTotal / MemAvailable."""
    info = _read_meminfo(meminfo_path)
    try:
        total, available = info["MemTotal"], info["MemAvailable"]
    except KeyError as missing:
        raise OSError(f"{meminfo_path} has no {missing.args[0]} line") from None
    return NvmlMemory(total=total, free=available, used=max(total - available, 0))


@dataclass(frozen=True)
class _DriverInfo:
    driver_version: str | None
    cuda_version: str | None


def _driver_info(backend: NvmlBackend, nvml_error: type[Exception]) -> _DriverInfo:
    # Versions are nice to show but never a reason to drop a device.
    try:
        driver: str | None = backend.driver_version()
    except nvml_error:
        driver = None
    try:
        cuda: str | None = _format_cuda_version(backend.cuda_driver_version())
    except nvml_error:
        cuda = None
    return _DriverInfo(driver, cuda)


def _mig_enabled(
    backend: NvmlBackend, handle: NvmlHandle, label: str, nvml_error: type[Exception],
    notes: list[str],
) -> bool:
    try:
        current, pending = backend.mig_mode(handle)
    except nvml_error:
        # NOT_SUPPORTED on every GPU without MIG (all consumer cards): use it whole.
        return False
    if current != pending:
        state = "on" if pending == _NVML_DEVICE_MIG_ENABLE else "off"
        notes.append(
            f"{label}: MIG mode will switch {state} after a GPU reset; this plan uses the "
            "current mode."
        )
    return current == _NVML_DEVICE_MIG_ENABLE


def _mig_devices(
    backend: NvmlBackend,
    parent: NvmlHandle,
    parent_index: int,
    parent_uuid: str,
    parent_pci: str | None,
    versions: _DriverInfo,
    nvml_error: type[Exception],
) -> list[GpuDevice]:
    devices: list[GpuDevice] = []
    for slot in range(backend.max_mig_device_count(parent)):
        try:
            mig = backend.mig_device_handle_by_index(parent, slot)
        except nvml_error as exc:
            # Slots are sparse: unconfigured ones answer NOT_FOUND (or INVALID_ARGUMENT).
            if _nvml_code(exc) in (_NVML_ERROR_NOT_FOUND, _NVML_ERROR_INVALID_ARGUMENT):
                continue
            raise
        memory = backend.memory_info(mig)
        devices.append(
            GpuDevice(
                index=parent_index,
                name=backend.name(mig),
                uuid=backend.uuid(mig),
                # A MIG instance sits on its parent's bus; NVML does not answer for the instance.
                pci_bus_id=parent_pci,
                total_bytes=memory.total,
                free_bytes=memory.free,
                used_bytes=memory.used,
                driver_version=versions.driver_version,
                cuda_version=versions.cuda_version,
                is_mig=True,
                parent_uuid=parent_uuid,
                unified_memory=False,
                source="nvml",
            )
        )
    return devices


def _probe_one_gpu(
    backend: NvmlBackend,
    index: int,
    versions: _DriverInfo,
    meminfo_path: Path,
    nvml_error: type[Exception],
    notes: list[str],
) -> list[GpuDevice]:
    handle = backend.handle_by_index(index)
    name = backend.name(handle)
    uuid = backend.uuid(handle)
    label = f"GPU {index} ({name})"
    try:
        pci: str | None = backend.pci_bus_id(handle)
    except nvml_error:
        pci = None

    if _mig_enabled(backend, handle, label, nvml_error, notes):
        instances = _mig_devices(backend, handle, index, uuid, pci, versions, nvml_error)
        if not instances:
            notes.append(
                f"{label} has MIG enabled but no MIG instances, so nothing can run on it; "
                "create instances with nvidia-smi mig or disable MIG."
            )
        return instances

    unified = False
    try:
        memory = backend.memory_info(handle)
    except nvml_error as exc:
        if _nvml_code(exc) != _NVML_ERROR_NOT_SUPPORTED:
            raise
        # GB10 / DGX Spark: no dedicated VRAM, the GPU allocates from system memory.
        try:
            memory = _unified_pool(meminfo_path)
        except OSError as read_error:
            notes.append(
                f"{label} reports no memory of its own (unified memory) and {meminfo_path} "
                f"could not be read ({read_error}); add the device by hand."
            )
            return []
        unified = True
        notes.append(
            f"{label} uses unified memory: its pool is system RAM (MemAvailable), "
            "so do not count it again as system memory."
        )

    return [
        GpuDevice(
            index=index,
            name=name,
            uuid=uuid,
            pci_bus_id=pci,
            total_bytes=memory.total,
            free_bytes=memory.free,
            used_bytes=memory.used,
            driver_version=versions.driver_version,
            cuda_version=versions.cuda_version,
            is_mig=False,
            parent_uuid=None,
            unified_memory=unified,
            source="nvml",
        )
    ]


def probe_gpus(
    backend: NvmlBackend | None = None,
    meminfo_path: Path = DEFAULT_MEMINFO_PATH,
) -> tuple[list[GpuDevice], list[str]]:
    """List NVIDIA devices (GPUs, or their MIG instances) and notes; never raises for NVML.

    Returns ``([], [note])`` when pynvml is missing, the NVML library is absent, the driver is
    not loaded or NVML fails in any other way. A single failing GPU is left out with a note and
    the others are still returned. Devices come in NVML (PCI) order: match CUDA devices by
    ``uuid``. ``meminfo_path`` is read only for unified-memory GPUs.
    """
    nvml = backend if backend is not None else PynvmlBackend()
    nvml_error = _nvml_error_type()
    notes: list[str] = []
    try:
        nvml.init()
    except (ImportError, OSError, nvml_error) as exc:
        return [], [_no_gpu_note(exc)]

    devices: list[GpuDevice] = []
    try:
        try:
            count = nvml.device_count()
        except nvml_error as exc:
            return [], [_no_gpu_note(exc)]
        if count == 0:
            return [], [f"No NVIDIA GPU found (NVML reports no devices): {_CPU_ONLY}"]
        versions = _driver_info(nvml, nvml_error)
        for index in range(count):
            try:
                devices.extend(
                    _probe_one_gpu(nvml, index, versions, meminfo_path, nvml_error, notes)
                )
            except nvml_error as exc:
                notes.append(
                    f"GPU {index} left out: NVML could not read it "
                    f"({_describe_nvml_error(exc)})."
                )
    finally:
        try:
            nvml.shutdown()
        except nvml_error:
            pass  # The results are already read; a failed shutdown changes nothing for them.
    return devices, notes


# ----------------------------------------------------------------------------- system


def probe_system(meminfo_path: Path | None = None) -> SystemMemory:
    """System RAM total and available, via psutil, or from a meminfo-style file when given."""
    if meminfo_path is not None:
        pool = _unified_pool(meminfo_path)
        return SystemMemory(total_bytes=pool.total, available_bytes=pool.free)

    memory = psutil.virtual_memory()
    return SystemMemory(total_bytes=int(memory.total), available_bytes=int(memory.available))


def probe_cpu_cores() -> tuple[int | None, int]:
    """(physical, logical) CPU core counts; physical is None where the OS does not say."""
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    return psutil.cpu_count(logical=False), logical


def disk_free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the file system that holds ``path``.

    A path that does not exist yet (an output folder about to be created) is measured at its
    nearest existing parent, which is where it will be written.
    """
    candidate = Path(path).expanduser().absolute()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return shutil.disk_usage(candidate).free


def snapshot(
    backend: NvmlBackend | None = None,
    meminfo_path: Path | None = None,
) -> HardwareSnapshot:
    """Probe GPUs, system memory and CPU cores at once; never raises for a missing GPU stack.

    ``meminfo_path`` replaces ``/proc/meminfo`` (tests, or reading another machine's copy).
    """
    devices, notes = probe_gpus(backend, meminfo_path or DEFAULT_MEMINFO_PATH)
    physical, logical = probe_cpu_cores()
    return HardwareSnapshot(
        gpus=tuple(devices),
        system=probe_system(meminfo_path),
        cpu_cores_physical=physical,
        cpu_cores_logical=logical,
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- manual devices
