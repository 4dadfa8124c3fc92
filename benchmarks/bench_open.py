"""Open time and peak memory of ``open_model`` against the ``gguf`` package's ``GGUFReader``.

Each measurement runs in a fresh interpreter so that resident memory is honest: the child
imports its reader, notes its peak RSS (the baseline), opens the file once, and reports the
wall time of the open and how far the peak RSS rose above the baseline. The medians of
several runs are printed for each file, with the ratio gguf / ours.

    .venv/bin/python benchmarks/bench_open.py [--runs 5] [--gguf-runs 3] [--dir DIR]

Files are sparse shape twins (a few MB on disk): a 399B-parameter, 60-layer, 256-expert
Trinity-Large and Qwen3.5-35B-A3B with its 248k-token vocabulary. Targets for ours: < 1 s
and < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TWINS = ("trinity-large-399b", "qwen3.5-35b-a3b")
TARGET_SECONDS = 1.0
TARGET_MB = 300.0

# Runs in the child. After the imports the peak-RSS mark is reset (Linux: clear_refs 5),
# so the figure is what the open itself added, not what importing numpy once cost.
_CHILD = r"""
import json, re, resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
if kind == "apex":
    from apex_gui.core.gguf.model import open_model as load
else:
    from gguf import GGUFReader as load

def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(key + r":\s+(\d+)", text).group(1))  # KiB

try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    base, peak_key = status("VmRSS"), "VmHWM"
except OSError:  # no reset: fall back to the process peak (overstates small figures)
    base, peak_key = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
t0 = time.perf_counter()
result = load(path)
elapsed = time.perf_counter() - t0
peak = status(peak_key) if peak_key else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = len(result.tensors)
print(json.dumps({"seconds": elapsed, "rss_mb": (peak - base) / 1024, "tensors": n}))
"""


def measure(kind: str, path: Path) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path)], cwd=REPO,
                            capture_output=True, text=True, check=True, timeout=600)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench(path: Path, kind: str, runs: int) -> tuple[float, float, int]:
    samples = [measure(kind, path) for _ in range(runs)]
    return (statistics.median(s["seconds"] for s in samples),
            statistics.median(s["rss_mb"] for s in samples),
            int(samples[0]["tensors"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of open_model per file")
    parser.add_argument("--gguf-runs", type=int, default=3, help="runs of GGUFReader per file")
    parser.add_argument("--dir", type=Path, help="where to write the twins (default: a temp dir)")
    args = parser.parse_args(argv)

    from apex_gui.core.fixtures.twins import write_shape_twin

    with tempfile.TemporaryDirectory(prefix="apex-bench-") as scratch:
        folder = args.dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{'file':<22} {'reader':<12} {'open s':>8} {'peak MB':>8}  tensors")
        failed = False
        for name in TWINS:
            (path,) = write_shape_twin(folder / f"{name}.gguf", name)
            ours = bench(path, "apex", args.runs)
            theirs = bench(path, "gguf", args.gguf_runs)
            assert ours[2] == theirs[2], "the readers disagree on the tensor count"
            print(f"{name:<22} {'open_model':<12} {ours[0]:8.3f} {ours[1]:8.1f}  {ours[2]}")
            print(f"{'':<22} {'GGUFReader':<12} {theirs[0]:8.3f} {theirs[1]:8.1f}  {theirs[2]}")
            print(f"{'':<22} {'ratio':<12} {theirs[0] / ours[0]:7.1f}x "
                  f"{theirs[1] / max(ours[1], 0.1):7.1f}x  (gguf / ours)")
            if ours[0] >= TARGET_SECONDS or ours[1] >= TARGET_MB:
                print(f"  MISSED the target (< {TARGET_SECONDS} s, < {TARGET_MB} MB)")
                failed = True
        print(f"medians of {args.runs} (ours) and {args.gguf_runs} (gguf) fresh processes")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
