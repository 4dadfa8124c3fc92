"""Overhead of two loopback RPC workers against one process, for perplexity and imatrix.

Builds a synthetic MoE (16 layers, about 60 MiB of F16), starts two ``rpc-server``
processes on free loopback ports, and times through the job engine
(:func:`apex_gui.core.runner.run_job`), alternating so machine load hits both alike:

* one process: ``llama-perplexity`` / ``llama-imatrix`` with every layer on this process's CPU;
* two workers: the same job with ``--rpc A,B``: the layers split across the workers, every
  activation crossing loopback TCP twice per token batch (and, for imatrix, every matrix
  product's input read back for the statistics).

Both sides use the same number of CPU threads per computing process (``--threads``). Prints
each median, the ratio, and checks that the results are equal (perplexity to 4 decimals).
Loopback measures the protocol's own cost; a real network adds its latency per layer split.

Usage: ``.venv/bin/python benchmarks/bench_rpc.py [--runs 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_gui.core.fit.rpc_local import LocalRpcWorker  # noqa: E402
from apex_gui.core.jobs import ImatrixJob, PerplexityJob, ToolJob  # noqa: E402
from apex_gui.core.runner import run_job  # noqa: E402
from apex_gui.core.synthetic import SyntheticModelSpec, write_synthetic_model  # noqa: E402
from apex_gui.core.tools import LlamaTools  # noqa: E402

BENCH_SPEC = SyntheticModelSpec(arch="qwen2moe", n_layer=16, n_embd=256, n_expert=8,
                                n_expert_used=2, n_ff_exp=256, n_ff_shexp=256, seed=42,
                                name="APEX RPC benchmark")


def timed(job: ToolJob, tools: LlamaTools) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    outcome = run_job(job, tools)
    seconds = time.perf_counter() - started
    if not outcome.succeeded:
        raise SystemExit(f"{job.title()} failed: {outcome.message}")
    return seconds, outcome.results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=8)
    args = parser.parse_args()
    tools = LlamaTools()
    with tempfile.TemporaryDirectory(prefix="apex-bench-rpc-") as tmp:
        folder = Path(tmp)
        model = write_synthetic_model(folder / "bench-f16.gguf", BENCH_SPEC)
        text = folder / "text.txt"
        text.write_text(("workers hold the layers of a model split across machines " * 800)
                        + "\n")
        jobs = {
            "perplexity": PerplexityJob(model=model, text=text, context=256, chunks=args.chunks,
                                        threads=args.threads),
            "imatrix": ImatrixJob(model=model, calibration=text, output_path=folder / "i.gguf",
                                  context=256, chunks=args.chunks, threads=args.threads),
        }
        with LocalRpcWorker(tools, threads=args.threads) as a, \
                LocalRpcWorker(tools, threads=args.threads) as b:
            endpoints = (a.worker.endpoint, b.worker.endpoint)
            for name, job in jobs.items():
                spread = replace(job, rpc_workers=endpoints)
                local_times, rpc_times = [], []
                local_results: dict[str, object] = {}
                rpc_results: dict[str, object] = {}
                for _ in range(args.runs):
                    seconds, local_results = timed(job, tools)
                    local_times.append(seconds)
                    seconds, rpc_results = timed(spread, tools)
                    rpc_times.append(seconds)
                one, two = statistics.median(local_times), statistics.median(rpc_times)
                same = ""
                if "ppl" in local_results:
                    equal = round(local_results["ppl"], 4) == round(rpc_results["ppl"], 4)  # type: ignore[arg-type]
                    same = f", PPL {local_results['ppl']:.4f} vs {rpc_results['ppl']:.4f} " \
                           f"({'equal' if equal else 'DIFFERENT'})"
                print(f"{name}: one process {one:.2f} s, two loopback workers {two:.2f} s, "
                      f"ratio {two / one:.2f} (median of {args.runs}, {args.chunks} chunks of "
                      f"256, {args.threads} thread(s) per process){same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
