"""Overhead of two loopback RPC workers against one process, for perplexity and imatrix.

Builds a synthetic MoE (16 layers, about 60 MiB of F16), starts two ``rpc-server``
processes on free loopback ports, and times through the job engine
(:func:`apex_gui.core.jobs.runner.run_job`), alternating so machine load hits both alike:

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
from apex_gui.core.jobs.quantize import ImatrixJob  # noqa: E402
from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.run_options import RunOptions  # noqa: E402
from apex_gui.core.jobs.specs import ToolJob
from apex_gui.core.jobs.runner import run_job  # noqa: E402
from apex_gui.core.fixtures.synthetic import ( # noqa: E402
    SyntheticModelSpec, write_synthetic_model,
)
from apex_gui.core.jobs.tools import LlamaTools  # noqa: E402

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
                                        options=RunOptions(threads=args.threads)),
            "imatrix": ImatrixJob(model=model, calibration=text, output_path=folder / "i.gguf",
                                  context=256, chunks=args.chunks,
                                  options=RunOptions(threads=args.threads)),
        }
        with LocalRpcWorker(tools, threads=args.threads) as a, \
                LocalRpcWorker(tools, threads=args.threads) as b:
            endpoints = (a.worker.endpoint, b.worker.endpoint)
            for name, job in jobs.items():
                # Three ways: one process as the tools run by default (on an AMX CPU some
                # weights are repacked), one process with --no-repack (what a worker's CPU
                # device computes: rpc-server offers plain buffers only), two workers.
                variants = {"one process": job,
                            "one process --no-repack": job.with_options(
                                replace(job.options, no_repack=True)),
                            "two loopback workers": job.with_options(
                                replace(job.options, rpc_workers=endpoints))}
                times: dict[str, list[float]] = {k: [] for k in variants}
                results: dict[str, dict[str, object]] = {}
                for _ in range(args.runs):
                    for label, variant in variants.items():
                        seconds, results[label] = timed(variant, tools)
                        times[label].append(seconds)
                medians = {k: statistics.median(v) for k, v in times.items()}
                base = medians["one process --no-repack"]
                parts = [f"{k} {v:.2f} s" for k, v in medians.items()]
                print(f"{name} (median of {args.runs}, {args.chunks} chunks of 256, "
                      f"{args.threads} thread(s) per process): {', '.join(parts)}; workers / "
                      f"one process --no-repack = {medians['two loopback workers'] / base:.2f}, "
                      f"/ one process = {medians['two loopback workers'] / medians['one process']:.2f}")
                if "ppl" in results["one process"]:
                    ppl = {k: float(r["ppl"]) for k, r in results.items()}  # type: ignore[arg-type]
                    same = round(ppl["two loopback workers"], 4) == round(
                        ppl["one process --no-repack"], 4)
                    print("  PPL " + ", ".join(f"{k} {v:.4f}" for k, v in ppl.items())
                          + f" (workers {'equal' if same else 'DIFFERENT'} to 4 decimals "
                            "against --no-repack)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
