"""Build the GPU backends of the portable tools from the app (Settings > Build GPU backends).

The same step as ``make gpu`` (packaging/build_gpu_backends.py): Vulkan, and CUDA where its
toolkit is installed, built beside the cached CPU tools and linked into this environment.
Only a source checkout has the build script and a portable build to extend; elsewhere the
reason is given instead.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.jobs.tools import child_environment, portable_build_dir

#: packaging/ beside the package in a source checkout.
SCRIPT = Path(__file__).resolve().parents[3] / "packaging" / "build_gpu_backends.py"


@dataclass(frozen=True)
class GpuBuildResult:
    exit_code: int | None  # None: cancelled
    lines: tuple[str, ...]

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    def summary(self) -> str:
        if self.exit_code is None:
            return "GPU backend build cancelled"
        kept = [ln for ln in self.lines if ln.startswith(("GPU backends:", "llama.cpp tools:",
                                                           "vulkan:", "cuda:"))]
        return "\n".join(kept[-6:] or self.lines[-6:])


def gpu_build_unavailable() -> str | None:
    """Why the app cannot build GPU backends here, or None when it can."""
    if getattr(sys, "frozen", False):
        return ("the packaged app bundles the tools it was built with: build GPU backends in "
                "a source checkout (`make gpu`) or point Settings at a GPU build of llama.cpp")
    if not SCRIPT.is_file():
        return f"the build script {SCRIPT} is missing (not a source checkout)"
    if portable_build_dir() is None:
        return ("these tools are not the portable build this environment made (`make`): "
                "build GPU support into the llama.cpp you use")
    return None


def gpu_build_argv(venv: str | None = None) -> list[str]:
    return [sys.executable, str(SCRIPT), venv or sys.prefix]


def run_gpu_build(on_line: Callable[[str], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> GpuBuildResult:
    """Run the build (minutes); each output line goes to ``on_line``; once ``cancelled()``
    is true the process is terminated."""
    lines: list[str] = []
    process = subprocess.Popen(gpu_build_argv(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                               errors="replace", env=child_environment())
    stopped = threading.Event()

    def watch() -> None:
        while not stopped.wait(0.5):
            if cancelled is not None and cancelled():
                process.terminate()
                return

    watcher = threading.Thread(target=watch, name="apex-gpu-build-cancel", daemon=True)
    watcher.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(lines[-1])
        code = process.wait()
    finally:
        stopped.set()
        watcher.join()
    stopped_early = cancelled is not None and cancelled()
    return GpuBuildResult(None if stopped_early else code, tuple(lines))
