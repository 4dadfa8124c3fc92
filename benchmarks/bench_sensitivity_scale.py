"""Sensitivity measurement cost against one llama-quantize pass, from a few MB to >= 700 MB.

For each size a synthetic qwen2moe (random weights, F16, written tensor by tensor) is made,
then, side by side in one run: one ``llama-quantize MODEL OUT Q4_K_M`` pass, and the default
measurement (``apex-studio sensitivity``: 8 candidate types on the row sample + the KL
calibration probes) in a child process. Printed per size: the pass, the error part, the
calibration part, their ratio to the pass, the peak RSS of the measurement (and of the
tools), the peak scratch disk, and the projection the command stated before it started
(time and disk) against what happened. Then the projection for the 35B and 400B shapes (the
Qwen3.5-35B-A3B and Trinity-Large twins) from the speeds this run recorded.

    nice .venv/bin/python benchmarks/bench_sensitivity_scale.py [--sizes 4,56,280,744]
        [--out DIR] [--json R.json] [--threads N]

Targets (issue 23): at >= 700 MB the whole measurement within 12x one Q4_K_M pass; memory
bounded by a few tensors (not the model); the projection within a factor 1.5 of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from apex_gui.core.fixtures.synthetic import (SyntheticModelSpec, WEIGHT_STD,  # noqa: E402
                                              expected_tensor_shapes)
from apex_gui.core.gguf.model import open_model  # noqa: E402
from apex_gui.core.jobs.tools import LlamaTools  # noqa: E402

TARGET_RATIO = 12.0
TARGET_PROJECTION = 1.5

#: Model sizes (MB of F16) -> spec; the 744 MB one is the issue's model.
SPECS: dict[int, SyntheticModelSpec] = {
    4: SyntheticModelSpec(arch="qwen2moe", n_layer=2, n_embd=256, n_head=4, n_head_kv=1,
                          n_expert=4, n_ff_exp=256, n_ff_shexp=256, seed=21, name="bench 4MB"),
    56: SyntheticModelSpec(arch="qwen2moe", n_layer=6, n_embd=512, n_head=8, n_head_kv=2,
                           n_expert=8, n_ff_exp=256, n_ff_shexp=512, seed=22, name="bench 56MB"),
    280: SyntheticModelSpec(arch="qwen2moe", n_layer=8, n_embd=768, n_head=12, n_head_kv=4,
                            n_expert=16, n_ff_exp=384, n_ff_shexp=768, seed=23,
                            name="bench 280MB"),
    744: SyntheticModelSpec(arch="qwen2moe", n_layer=12, n_embd=1024, n_head=16, n_head_kv=4,
                            n_expert=16, n_ff_exp=512, n_ff_shexp=1024, seed=7,
                            name="bench 744MB"),
}


def write_streaming(path: Path, spec: SyntheticModelSpec) -> Path:
    """A synthetic model written one tensor at a time (memory: one tensor, not the model)."""
    import gguf

    from apex_gui.core.fixtures.synthetic import _add_hparams, _add_tokenizer, _is_norm, _stays_f32

    if path.is_file():
        return path
    tmp = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(tmp, spec.arch)
    _add_hparams(writer, spec)
    _add_tokenizer(writer)
    shapes = expected_tensor_shapes(spec)
    for name, ne in shapes.items():
        shape = tuple(reversed(ne))
        dtype = np.dtype(np.float32 if _is_norm(name) or _stays_f32(name, ne) else np.float16)
        writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(spec.seed)
    for name, ne in shapes.items():
        shape = tuple(reversed(ne))
        if _is_norm(name):
            writer.write_tensor_data(np.ones(shape, np.float32))
            continue
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(WEIGHT_STD)
        writer.write_tensor_data(values if _stays_f32(name, ne) else values.astype(np.float16))
    writer.close()
    os.replace(tmp, path)
    return path


def quantize_pass(model: Path, out: Path, threads: int | None) -> float:
    """Seconds of one bare ``llama-quantize MODEL OUT Q4_K_M`` pass."""
    exe = LlamaTools().path("quantize")
    argv = [str(exe), str(model), str(out), "Q4_K_M"] + ([str(threads)] if threads else [])
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=3600)
    seconds = time.perf_counter() - started
    out.unlink()
    return seconds


class DiskWatch:
    """Peak bytes under a folder while a run goes on (polled)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.folder):
            for name in files:
                path = os.path.join(root, name)
                try:
                    if not os.path.islink(path):
                        total += os.stat(path).st_blocks * 512
                except OSError:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._size())

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(model: Path, work: Path, threads: int | None,
            chunks: int | None = None) -> dict[str, Any]:
    """The default measurement in a child process (its own peak RSS), with its scratch disk."""
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    out = work / f"{model.stem}.sensitivity.json"
    argv = [sys.executable, "-m", "apex_gui", "sensitivity", str(model), "-o", str(out),
            "--force", "--no-cache", "--json", "--work-dir", str(scratch)]
    if threads:
        argv += ["--threads", str(threads)]
    if chunks:
        argv += ["--chunks", str(chunks)]
    with DiskWatch(scratch) as disk:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"sensitivity of {model.name} failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    report["scratch_peak_bytes"] = disk.peak
    projected = next((line for line in done.stderr.splitlines() if line.startswith("projected")),
                     "")
    report["projection_line"] = projected
    return report


def projections() -> list[dict[str, Any]]:
    """Projected time and scratch disk for the 35B and 400B shapes, from this run's speeds."""
    from apex_gui.core.fixtures.twins import write_shape_twin
    from apex_gui.core.quality.calibration import plan_probes
    from apex_gui.core.quality.projection import MachineSpeed, load_speed, project, quantize_work
    from apex_gui.core.quality.sensitivity import DEFAULT_CANDIDATES, DEFAULT_PROBE_CHUNKS
    from apex_gui.core.quality.table import tensor_kind
    from apex_gui.core.plan.precision import is_quantizable

    speed = load_speed()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for layout in ("qwen3.5-35b-a3b", "trinity-large-399b"):
            (path,) = write_shape_twin(Path(folder) / f"{layout}.gguf", layout)
            model = open_model(path)
            kinds = {tensor_kind(t.name) for t in model.tensors
                     if is_quantizable(t.name, t.shape)}
            probes = len(plan_probes(kinds, DEFAULT_CANDIDATES))
            result = project(model, DEFAULT_CANDIDATES, probes, 512, DEFAULT_PROBE_CHUNKS,
                             speed)
            one_pass = (speed or MachineSpeed()).seconds("quantize",
                                                        quantize_work(model.file_size, "Q4_K"))
            rows.append({"layout": layout, "model_bytes": model.file_size,
                         "projected_seconds": result.seconds,
                         "errors_seconds": result.errors_seconds,
                         "calibration_seconds": result.calibration_seconds,
                         "scratch_bytes": result.scratch_bytes,
                         "sample_bytes": result.sample_bytes, "probes": probes,
                         "q4_k_pass_seconds": one_pass,
                         "passes": result.seconds / one_pass})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,56,280,744", help="MB sizes to run (of "
                    f"{', '.join(str(s) for s in SPECS)})")
    ap.add_argument("--out", type=Path, default=None, help="work folder (kept)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--chunks", type=int, default=None, help="chunks of each probe (default: "
                    "the command's own)")
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="apex-bench-sens-"))
    work.mkdir(parents=True, exist_ok=True)
    # The speeds the projections use are this machine's, recorded by the runs below.
    os.environ.setdefault("APEX_STUDIO_DATA_DIR", str(work / "data"))
    os.environ.setdefault("APEX_STUDIO_CACHE_DIR", str(work / "cache"))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        spec = SPECS[size]
        model = write_streaming(work / f"synthetic-{size}mb-f16.gguf", spec)
        print(f"{size} MB model: {model.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
        one_pass = quantize_pass(model, work / "q4_k_m.gguf", args.threads)
        report = measure(model, work, args.threads, args.chunks)
        timings = report["timings"]
        errors = timings.get("sample_seconds", 0.0) + timings.get("error_seconds", 0.0)
        total = report["seconds"]
        row = {"size_mb": model.stat().st_size / 1e6, "q4_k_m_pass_seconds": one_pass,
               "errors_seconds": errors, "calibration_seconds": total - errors,
               "total_seconds": total, "ratio_to_pass": total / one_pass,
               "peak_rss_mb": report["peak_rss_bytes"] / 1e6,
               "tools_peak_rss_mb": report["tools_peak_rss_bytes"] / 1e6,
               "scratch_peak_mb": report["scratch_peak_bytes"] / 1e6,
               "projected_seconds": report["projected_seconds"],
               "projected_scratch_mb": report["projected_scratch_bytes"] / 1e6,
               "projection_time_factor": max(total, report["projected_seconds"])
               / max(1e-9, min(total, report["projected_seconds"])),
               "projection_line": report["projection_line"],
               "probes": len(report["probes"])}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        if size >= 700:
            shutil.copy(work / f"{model.stem}.sensitivity.json", work / "big.sensitivity.json")
    print("\n| F16 model | Q4_K_M pass | errors (8 types) | calibration | total | x pass | "
          "peak RSS (tools) | scratch peak (projected) | projected time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size_mb']:.0f} MB | {r['q4_k_m_pass_seconds']:.1f} s | "
              f"{r['errors_seconds']:.1f} s | {r['calibration_seconds']:.1f} s | "
              f"{r['total_seconds']:.1f} s | {r['ratio_to_pass']:.1f}x | "
              f"{r['peak_rss_mb']:.0f} MB ({r['tools_peak_rss_mb']:.0f} MB) | "
              f"{r['scratch_peak_mb']:.0f} MB ({r['projected_scratch_mb']:.0f} MB) | "
              f"{r['projected_seconds']:.0f} s ({r['projection_time_factor']:.2f}x off) |")
    shapes = projections()
    print("\n| shape | F16/BF16 | projected | errors | calibration | scratch disk | "
          "x Q4_K_M pass |")
    print("|---|---|---|---|---|---|---|")
    for r in shapes:
        print(f"| {r['layout']} | {r['model_bytes'] / 1e9:.0f} GB | "
              f"{r['projected_seconds'] / 3600:.1f} h | {r['errors_seconds'] / 3600:.2f} h | "
              f"{r['calibration_seconds'] / 3600:.1f} h | {r['scratch_bytes'] / 1e9:.0f} GB | "
              f"{r['passes']:.1f}x |")
    big = [r for r in rows if r["size_mb"] >= 700]
    for r in big:
        print(f"\n>= 700 MB: {r['ratio_to_pass']:.1f}x one Q4_K_M pass (target <= "
              f"{TARGET_RATIO:.0f}x): {'met' if r['ratio_to_pass'] <= TARGET_RATIO else 'MISSED'}")
    for r in rows:
        ok = r["projection_time_factor"] <= TARGET_PROJECTION
        print(f"projection at {r['size_mb']:.0f} MB: {r['projection_time_factor']:.2f}x "
              f"({'within' if ok else 'OUTSIDE'} {TARGET_PROJECTION}x)")
    if args.json:
        args.json.write_text(json.dumps({"sizes": rows, "shapes": shapes,
                                         "bench_peak_rss_mb": resource.getrusage(
                                             resource.RUSAGE_SELF).ru_maxrss / 1024},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
