"""Hardware probing through a fake NVML backend that raises pynvml's real error types."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pynvml
import pytest

from apex_gui.core.fit import hardware
from apex_gui.core.fit.device_spec import COMMON_CARDS, find_common_card, parse_device_spec
from apex_gui.core.fit.hardware import (
    GpuDevice, NvmlMemory, PynvmlBackend, disk_free_bytes, probe_gpus, probe_system, snapshot,
)
from apex_gui.core.units import GB, GiB
from fakes import FakeGpu, FakeNvml, nvml_error

MiB = 2**20


def _nvidia_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- no GPU stack


def test_library_not_found_gives_no_devices_and_a_note() -> None:
    backend = FakeNvml(init_error=nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert isinstance(backend.init_error, pynvml.NVMLError_LibraryNotFound)

    devices, notes = probe_gpus(backend)

    assert devices == []
    assert notes == [
        "No NVIDIA GPU found (NVML library not found): planning for CPU / system RAM only; "
        "add a device by hand to plan for another machine."
    ]


def test_missing_pynvml_package_gives_install_hint() -> None:
    devices, notes = probe_gpus(FakeNvml(init_error=ImportError("No module named 'pynvml'")))

    assert devices == []
    assert len(notes) == 1
    assert "pip install nvidia-ml-py" in notes[0]


def test_driver_not_loaded_gives_no_devices_and_a_note() -> None:
    backend = FakeNvml(init_error=nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))

    devices, notes = probe_gpus(backend)

    assert devices == []
    assert len(notes) == 1
    assert notes[0].startswith("No NVIDIA GPU found (NVIDIA driver not loaded)")


def test_other_nvml_init_error_is_reported_not_raised() -> None:
    devices, notes = probe_gpus(FakeNvml(init_error=nvml_error(pynvml.NVML_ERROR_NO_PERMISSION)))

    assert devices == []
    assert "no permission" in notes[0]


def test_zero_devices_is_a_note_and_nvml_is_shut_down() -> None:
    backend = FakeNvml(gpus=[])

    devices, notes = probe_gpus(backend)

    assert devices == []
    assert "NVML reports no devices" in notes[0]
    assert backend.shutdown_calls == 1


def test_real_pynvml_backend_without_gpu_returns_a_note() -> None:
    if _nvidia_library_present():
        pytest.skip("libnvidia-ml is present here; the gpu-marked test covers this machine")

    devices, notes = probe_gpus(PynvmlBackend())

    assert devices == []
    assert notes[0].startswith("No NVIDIA GPU found (NVML library not found)")


def test_error_codes_match_pynvml() -> None:
    # The probe classifies errors by code without importing pynvml; the codes must agree.
    assert hardware._NVML_ERROR_LIBRARY_NOT_FOUND == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    assert hardware._NVML_ERROR_DRIVER_NOT_LOADED == pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    assert hardware._NVML_ERROR_NOT_SUPPORTED == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert hardware._NVML_ERROR_NOT_FOUND == pynvml.NVML_ERROR_NOT_FOUND
    assert hardware._NVML_ERROR_INVALID_ARGUMENT == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert hardware._NVML_ERROR_NO_PERMISSION == pynvml.NVML_ERROR_NO_PERMISSION
    assert hardware._NVML_DEVICE_MIG_ENABLE == pynvml.NVML_DEVICE_MIG_ENABLE


# --------------------------------------------------------------------------- GPUs


def test_one_gpu() -> None:
    gpu = FakeGpu(
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-11111111-2222-3333-4444-555555555555",
        pci_bus_id="00000000:01:00.0",
        memory=NvmlMemory(total=24564 * MiB, free=23000 * MiB, used=1564 * MiB),
    )
    backend = FakeNvml([gpu], driver="550.54.15", cuda=12040)

    devices, notes = probe_gpus(backend)

    assert notes == []
    assert devices == [
        GpuDevice(
            index=0,
            name="NVIDIA GeForce RTX 4090",
            uuid="GPU-11111111-2222-3333-4444-555555555555",
            pci_bus_id="00000000:01:00.0",
            total_bytes=24564 * MiB,
            free_bytes=23000 * MiB,
            used_bytes=1564 * MiB,
            driver_version="550.54.15",
            cuda_version="12.4",
            is_mig=False,
            parent_uuid=None,
            unified_memory=False,
            source="nvml",
        )
    ]
    assert backend.shutdown_calls == 1


def test_several_gpus_keep_nvml_order_uuid_and_pci() -> None:
    gpus = [
        FakeGpu("NVIDIA GeForce RTX 3090", "GPU-aaaa", "00000000:01:00.0",
                NvmlMemory(24 * GiB, 23 * GiB, 1 * GiB)),
        FakeGpu("NVIDIA GeForce RTX 4060 Ti", "GPU-bbbb", "00000000:02:00.0",
                NvmlMemory(16 * GiB, 15 * GiB, 1 * GiB)),
        FakeGpu("NVIDIA GeForce RTX 5090", "GPU-cccc", "00000000:81:00.0",
                NvmlMemory(32 * GiB, 31 * GiB, 1 * GiB)),
    ]

    devices, notes = probe_gpus(FakeNvml(gpus, cuda=12080))

    assert notes == []
    assert [(d.index, d.uuid, d.pci_bus_id) for d in devices] == [
        (0, "GPU-aaaa", "00000000:01:00.0"),
        (1, "GPU-bbbb", "00000000:02:00.0"),
        (2, "GPU-cccc", "00000000:81:00.0"),
    ]
    assert [d.free_bytes for d in devices] == [23 * GiB, 15 * GiB, 31 * GiB]
    assert {d.cuda_version for d in devices} == {"12.8"}


def test_a_lost_gpu_is_left_out_and_the_others_kept() -> None:
    gpus = [
        FakeGpu("GPU A", "GPU-aaaa", name_error=nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)),
        FakeGpu("GPU B", "GPU-bbbb", "00000000:02:00.0"),
    ]

    devices, notes = probe_gpus(FakeNvml(gpus))

    assert [d.uuid for d in devices] == ["GPU-bbbb"]
    assert notes == ["GPU 0 left out: NVML could not read it (GPU is lost)."]


def test_missing_versions_do_not_drop_the_device() -> None:
    class NoVersions(FakeNvml):
        def cuda_driver_version(self) -> int:
            raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    devices, _ = probe_gpus(NoVersions([FakeGpu("GPU", "GPU-aaaa")]))

    assert len(devices) == 1
    assert devices[0].cuda_version is None
    assert devices[0].driver_version == "550.54.15"


def test_mig_instances_replace_their_parent_with_their_own_memory() -> None:
    slice_a = FakeGpu("NVIDIA A100-SXM4-80GB MIG 3g.40gb", "MIG-aaaa",
                      memory=NvmlMemory(40192 * MiB, 40000 * MiB, 192 * MiB))
    slice_b = FakeGpu("NVIDIA A100-SXM4-80GB MIG 2g.20gb", "MIG-bbbb",
                      memory=NvmlMemory(19968 * MiB, 19900 * MiB, 68 * MiB))
    parent = FakeGpu(
        "NVIDIA A100-SXM4-80GB", "GPU-parent", "00000000:07:00.0",
        memory=NvmlMemory(81920 * MiB, 1000 * MiB, 80920 * MiB),
        mig_mode=(pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE),
        mig_slots=[slice_a, None, slice_b, None],
    )
    plain = FakeGpu("NVIDIA H100 80GB HBM3", "GPU-plain", "00000000:08:00.0",
                    memory=NvmlMemory(81559 * MiB, 81000 * MiB, 559 * MiB),
                    mig_mode=(0, 0))

    devices, notes = probe_gpus(FakeNvml([parent, plain]))

    assert notes == []
    assert [(d.uuid, d.is_mig, d.parent_uuid, d.index) for d in devices] == [
        ("MIG-aaaa", True, "GPU-parent", 0),
        ("MIG-bbbb", True, "GPU-parent", 0),
        ("GPU-plain", False, None, 1),
    ]
    assert [d.total_bytes for d in devices[:2]] == [40192 * MiB, 19968 * MiB]
    assert [d.free_bytes for d in devices[:2]] == [40000 * MiB, 19900 * MiB]
    # NVML cannot give a MIG instance's bus id; it is the parent's.
    assert {d.pci_bus_id for d in devices[:2]} == {"00000000:07:00.0"}


def test_mig_enabled_without_instances_is_explained() -> None:
    parent = FakeGpu("NVIDIA A100-SXM4-40GB", "GPU-parent",
                     mig_mode=(1, 1), mig_slots=[None, None])

    devices, notes = probe_gpus(FakeNvml([parent]))

    assert devices == []
    assert len(notes) == 1
    assert "MIG enabled but no MIG instances" in notes[0]


def test_pending_mig_change_is_noted() -> None:
    gpu = FakeGpu("NVIDIA H100", "GPU-h100", mig_mode=(0, 1))

    devices, notes = probe_gpus(FakeNvml([gpu]))

    assert [d.is_mig for d in devices] == [False]
    assert "MIG mode will switch on after a GPU reset" in notes[0]


def _write_meminfo(path: Path, total_kib: int, available_kib: int) -> Path:
    path.write_text(
        f"MemTotal:       {total_kib} kB\n"
        f"MemFree:        {available_kib // 2} kB\n"
        f"MemAvailable:   {available_kib} kB\n"
        "Buffers:          1024 kB\n"
        "HugePages_Total:       0\n",
        encoding="ascii",
    )
    return path


def test_unified_memory_reads_memavailable(tmp_path: Path) -> None:
    meminfo = _write_meminfo(tmp_path / "meminfo", 125_000_000, 110_000_000)
    gb10 = FakeGpu("NVIDIA GB10", "GPU-gb10", "0000000F:01:00.0",
                   memory=nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED))

    devices, notes = probe_gpus(FakeNvml([gb10], cuda=13000), meminfo_path=meminfo)

    assert len(devices) == 1
    device = devices[0]
    assert device.unified_memory is True
    assert device.total_bytes == 125_000_000 * 1024
    assert device.free_bytes == 110_000_000 * 1024
    assert device.used_bytes == 15_000_000 * 1024
    assert device.cuda_version == "13.0"
    assert "unified memory" in notes[0]


def test_unified_memory_without_meminfo_is_left_out_with_a_note(tmp_path: Path) -> None:
    gb10 = FakeGpu("NVIDIA GB10", "GPU-gb10", memory=nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED))

    devices, notes = probe_gpus(FakeNvml([gb10]), meminfo_path=tmp_path / "missing")

    assert devices == []
    assert "could not be read" in notes[0]
    assert "add the device by hand" in notes[0]


def test_snapshot_combines_gpus_system_and_cores(tmp_path: Path) -> None:
    meminfo = _write_meminfo(tmp_path / "meminfo", 64 * 1024 * 1024, 48 * 1024 * 1024)

    snap = snapshot(FakeNvml([FakeGpu("GPU", "GPU-aaaa")]), meminfo_path=meminfo)

    assert [d.uuid for d in snap.gpus] == ["GPU-aaaa"]
    assert snap.system.total_bytes == 64 * GiB
    assert snap.system.available_bytes == 48 * GiB
    assert snap.cpu_cores_logical >= 1
    assert snap.cpu_cores_physical is None or snap.cpu_cores_physical <= snap.cpu_cores_logical
    assert snap.notes == ()


def test_snapshot_without_gpu_keeps_the_note() -> None:
    snap = snapshot(FakeNvml(init_error=nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)))

    assert snap.gpus == ()
    assert "NVML library not found" in snap.notes[0]
    assert 0 < snap.system.available_bytes <= snap.system.total_bytes


# --------------------------------------------------------------------------- system


def test_probe_system_with_psutil_is_plausible() -> None:
    system = probe_system()

    assert 0 < system.available_bytes <= system.total_bytes


def test_probe_system_reports_a_meminfo_without_memavailable(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\n", encoding="ascii")

    with pytest.raises(OSError, match="MemAvailable"):
        probe_system(meminfo)


def test_disk_free_bytes_of_a_folder_not_yet_created(tmp_path: Path) -> None:
    free = disk_free_bytes(tmp_path / "out" / "model.gguf")

    assert free == disk_free_bytes(tmp_path)
    assert free > 0


# --------------------------------------------------------------------------- manual devices


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("24GB", [("Manual 24 GB", 24 * GB, False)]),
        ("80GiB", [("Manual 80 GiB", 80 * GiB, False)]),
        ("80 gib", [("Manual 80 GiB", 80 * GiB, False)]),
        ("2 x 24 GB", [("Manual 24 GB", 24 * GB, False)] * 2),
        ("2x RTX 3090", [("RTX 3090 24GB", 24 * GiB, False)] * 2),
        ("3 × rtx 3090", [("RTX 3090 24GB", 24 * GiB, False)] * 3),
        ("RTX 4060 Ti 16 GB", [("RTX 4060 Ti 16GB", 16 * GiB, False)]),
        ("nvidia geforce rtx 4060-ti 16gb", [("RTX 4060 Ti 16GB", 16 * GiB, False)]),
        ("H100 80GB", [("H100 80GB", 80 * GiB, False)]),
        ("128 GB unified", [("Manual 128 GB unified", 128 * GB, True)]),
        ("DGX Spark", [("DGX Spark 128GB unified", 128 * GiB, True)]),
        ("GB10", [("DGX Spark 128GB unified", 128 * GiB, True)]),
        ("4090", [("RTX 4090 24GB", 24 * GiB, False)]),
        ("Tesla P40 24 GB", [("Tesla P40", 24 * GB, False)]),
        ("1.5 TB", [("Manual 1.5 TB", 1_500 * GB, False)]),
        ("RTX 3090 + RTX 4090", [("RTX 3090 24GB", 24 * GiB, False),
                                 ("RTX 4090 24GB", 24 * GiB, False)]),
    ],
)
def test_parse_device_spec(spec: str, expected: list[tuple[str, int, bool]]) -> None:
    devices = parse_device_spec(spec)

    assert [(d.name, d.total_bytes, d.unified_memory) for d in devices] == expected
    assert [d.index for d in devices] == list(range(len(expected)))
    assert all(d.source == "manual" and d.uuid is None for d in devices)
    assert all(d.free_bytes == d.total_bytes and d.used_bytes == 0 for d in devices)


def test_an_unlisted_size_for_a_listed_card_is_taken_literally() -> None:
    (device,) = parse_device_spec("RTX 3090 20 GB")

    assert device.name == "RTX 3090"
    assert device.total_bytes == 20 * GB


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "No device given"),
        ("lots of memory", 'Unknown card "lots of memory"'),
        ("2 x", "names no card and no memory size"),
        ("0 x 24 GB", "count must be 1 to 64"),
        ("0 GB", "more than zero"),
        ("A100", "comes in several sizes"),
        ("Apple M-series", "comes in several sizes"),
    ],
)
def test_parse_device_spec_errors_say_what_is_accepted(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_device_spec(spec)

    text = str(caught.value)
    assert "accepted forms" in text or "add the size" in text


def test_common_cards_are_manual_devices_with_unique_names() -> None:
    names = [card.name for card in COMMON_CARDS]

    assert len(names) == len(set(names)) >= 20
    assert all(card.source == "manual" and card.total_bytes > 0 for card in COMMON_CARDS)
    # Every listed card can be found again by its own name.
    assert all(find_common_card(name) == card for name, card in zip(names, COMMON_CARDS))


def test_find_common_card_unknown_is_none() -> None:
    assert find_common_card("Voodoo 2") is None


# --------------------------------------------------------------------------- boundaries


@pytest.mark.gpu
def test_real_nvml_on_an_nvidia_machine() -> None:
    if not _nvidia_library_present():
        pytest.skip("no NVIDIA driver (libnvidia-ml.so.1) on this machine")

    devices, notes = probe_gpus(PynvmlBackend())

    if not devices:
        pytest.skip(f"NVML loaded but found no usable GPU: {notes}")
    for device in devices:
        assert device.source == "nvml"
        assert device.uuid is not None and device.uuid.startswith(("GPU-", "MIG-"))
        assert device.is_mig == device.uuid.startswith("MIG-")
        assert device.total_bytes > 0
        assert 0 <= device.free_bytes <= device.total_bytes
        assert device.driver_version
        # pynvml's busId is a char array (bytes); the backend must hand back text.
        assert device.pci_bus_id is not None
        assert re.fullmatch(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]",
                            device.pci_bus_id), device.pci_bus_id
        assert device.cuda_version is not None and re.fullmatch(r"\d+\.\d+", device.cuda_version)
    assert len({device.uuid for device in devices}) == len(devices)

    # The driver's own listing names every device the probe found (GPUs and MIG instances).
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is not None:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True,
                                 timeout=60, check=False).stdout
        for device in devices:
            assert device.uuid in listing, (device.uuid, listing)


def test_x_inside_a_card_name_is_not_a_count() -> None:
    assert [d.name for d in parse_device_spec("7900 XTX 24GB")] == ["RX 7900 XTX 24GB"]
    assert [d.name for d in parse_device_spec("2x4090")] == ["RTX 4090 24GB"] * 2
