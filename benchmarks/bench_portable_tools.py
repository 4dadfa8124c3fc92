"""What the portable llama.cpp build costs: build time, and perplexity speed against a native build.

The portable build (every x86-64 CPU variant, the best picked at start) is what `make` installs;
a native build (GGML_NATIVE=ON, one CPU backend for this machine) is what llama.cpp builds by
default. Both are made by packaging/build_llama_tools.py and cached per machine; the native one
is built here on first use (about 10 minutes on 2 cores).

Speed: llama-perplexity on the same model and text, same threads, alternating builds, the best
of N runs (the least disturbed by other work on the machine), as tokens per second (tokens scored / wall time), with and without repacking on the
portable build (on AMX Xeons the repacked path crashes, so that row may be missing).

    python benchmarks/bench_portable_tools.py [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))

import build_llama_tools as builds  # noqa: E402

from apex_gui.core.jobs.calibration import quick_eval_text  # noqa: E402
from apex_gui.core.fixtures.synthetic import DEMO_SPEC, write_synthetic_model  # noqa: E402
from apex_gui.core.jobs.tools import child_environment  # noqa: E402

CONTEXT = 256
CHUNKS = 8


def _time_perplexity(binary: Path, model: Path, text: Path, threads: int,
                     extra: list[str]) -> float | None:
    """Wall seconds of one llama-perplexity run; None when it did not finish normally."""
    argv = [str(binary), "-m", str(model), "-f", str(text), "--no-escape", "-c", str(CONTEXT),
            "--chunks", str(CHUNKS), "-t", str(threads), *extra]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=child_environment(),
                          errors="replace")
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or "[%d]" % CHUNKS not in proc.stdout + proc.stderr:
        return None
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    jobs = str(os.cpu_count() or 2)
    root = builds.cache_root()
    portable = builds.build(root, builds.CMAKE_OPTIONS, jobs)
    native = builds.build(root, builds.NATIVE_OPTIONS, jobs)
    info = {name: json.loads((path / "build.json").read_text())
            for name, path in (("portable", portable), ("native", native))}
    print("build time (cmake --build, the app's targets, "
          f"{info['portable']['jobs']} jobs on this machine):")
    for name in ("portable", "native"):
        variants = len(list((root / builds.build_key(
            builds.CMAKE_OPTIONS if name == "portable" else builds.NATIVE_OPTIONS) / "bin")
            .glob("libggml-cpu-*.so")))
        backends = variants or 1  # a native build has one CPU backend inside libggml
        print(f"  {name:<9} {info[name]['build_seconds'] / 60:6.1f} min"
              f"  ({backends} CPU backend{'s' if backends != 1 else ''})")
    ratio = info["portable"]["build_seconds"] / max(1.0, info["native"]["build_seconds"])
    print(f"  portable / native: {ratio:.2f}x")

    with tempfile.TemporaryDirectory() as folder:
        model = write_synthetic_model(Path(folder) / "demo-f16.gguf", DEMO_SPEC)
        quant = Path(folder) / "demo-q4_k_m.gguf"
        subprocess.run([str(portable / "bin" / "llama-quantize"), str(model), str(quant),
                        "Q4_K_M", str(args.threads)], check=True, capture_output=True,
                       env=child_environment())
        text = quick_eval_text()
        tokens = CONTEXT * CHUNKS
        print(f"\nllama-perplexity, {CHUNKS} chunks of {CONTEXT} tokens, {args.threads} threads, "
              f"best of {args.runs} (tokens/s):")
        for label, path in (("F16", model), ("Q4_K_M", quant)):
            rows = {"native": (native, []), "portable": (portable, []),
                    "portable --no-repack": (portable, ["--no-repack"]),
                    "native --no-repack": (native, ["--no-repack"])}
            times: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.runs):
                for name, (build_dir, extra) in rows.items():
                    seconds = _time_perplexity(build_dir / "bin" / "llama-perplexity", path, text,
                                               args.threads, extra)
                    if seconds is not None:
                        times[name].append(seconds)
            speeds = {name: tokens / min(t) for name, t in times.items() if t}
            for name in rows:
                if name in speeds:
                    base = speeds.get(name.replace("portable", "native"))
                    versus = f"  {speeds[name] / base:5.2f}x native" if base and \
                        name.startswith("portable") else ""
                    print(f"  {label:<7} {name:<22} {speeds[name]:9.0f}{versus}")
                else:
                    print(f"  {label:<7} {name:<22}   crashed or failed in every run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
