"""Overhead of the quantize job over bare ``llama-quantize`` with the same arguments.

Builds a synthetic MoE big enough that one quantize takes about 1-2 s, makes an APEX plan
for it (``compact`` profile), and times, alternating so that machine load hits both alike:

* bare: ``llama-quantize`` started with ``subprocess.run`` on the job's own argument list
  (output to a plain name), output discarded;
* job: :func:`apex_gui.core.jobs.runner.run_job` on the :class:`QuantizeJob` - checks, temporary
  name and rename, merged output read and parsed line by line, progress callbacks, the run
  recorded in SQLite.

Prints each median and the ratio job / bare (target <= 1.03). On a shared, busy machine the
wall-time ratio is dominated by noise, so the CPU time the runner itself spends per job (this
process: reading, decoding and parsing output, checks, SQLite) is printed too: it is the
overhead proper, independent of load.

Usage: ``.venv/bin/python benchmarks/bench_quantize_overhead.py [--runs 7] [--threads 2]``
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_gui.core.jobs.quantize import QuantizeJob  # noqa: E402
from apex_gui.core.gguf.model import open_model  # noqa: E402
from apex_gui.core.plan.precision import plan_from_profile  # noqa: E402
from apex_gui.core.plan.profiles import get_profile  # noqa: E402
from apex_gui.core.jobs.run_options import RunOptions  # noqa: E402
from apex_gui.core.jobs.run_store import RunStore  # noqa: E402
from apex_gui.core.jobs.runner import run_job  # noqa: E402
from apex_gui.core.fixtures.synthetic import ( # noqa: E402
    SyntheticModelSpec, write_synthetic_model,
)
from apex_gui.core.jobs.tools import LlamaTools  # noqa: E402

#: 16 layers x 8 experts: about 60 MiB of F16, 1-2 s to quantize with 2 threads.
BENCH_SPEC = SyntheticModelSpec(arch="qwen2moe", n_layer=16, n_embd=256, n_expert=8,
                                n_expert_used=2, n_ff_exp=256, n_ff_shexp=256, seed=42,
                                name="APEX quantize benchmark")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="llama-quantize threads")
    parser.add_argument("--profile", default="compact", help="APEX profile (default compact)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="apex-bench-") as tmp:
        work = Path(tmp)
        for name in ("DATA", "CACHE", "CONFIG"):  # keep the benchmark out of the user's history
            os.environ[f"APEX_STUDIO_{name}_DIR"] = str(work / name.lower())
        model = write_synthetic_model(work / "bench-f16.gguf", BENCH_SPEC)
        plan = plan_from_profile(open_model(model), get_profile(args.profile))
        job = QuantizeJob.from_plan(plan, work / "job.gguf",
                                    options=RunOptions(threads=args.threads))
        tools = LlamaTools()
        store = RunStore()
        bare_output = work / "bare.gguf"
        bare_argv = [str(tools.path("quantize")),
                     *[str(bare_output) if a == str(job.partial_output()) else a
                       for a in job.args()]]
        env = job.env()
        print(f"model {model.stat().st_size / 2**20:.0f} MiB, profile {args.profile}, "
              f"{args.threads} threads, {args.runs} runs each", flush=True)

        bare_times: list[float] = []
        job_times: list[float] = []
        runner_cpu: list[float] = []
        for index in range(args.runs + 1):  # the first pair warms the page cache, not counted
            start = time.perf_counter()
            subprocess.run(bare_argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                           env=env, check=True)
            bare = time.perf_counter() - start
            bare_output.unlink()

            usage = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            outcome = run_job(job, tools, store, on_progress=lambda p, eta: None)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
            if not outcome.succeeded:
                print(f"job failed: {outcome.message}", file=sys.stderr)
                return 1
            job.output_path.unlink()
            if index:
                bare_times.append(bare)
                job_times.append(elapsed)
                runner_cpu.append(cpu)
            print(f"  run {index}{' (warm-up)' if not index else ''}: bare {bare:.3f} s, "
                  f"job {elapsed:.3f} s (runner CPU {cpu * 1000:.0f} ms)", flush=True)

        bare_median = statistics.median(bare_times)
        job_median = statistics.median(job_times)
        ratio = job_median / bare_median
        print(f"median bare llama-quantize: {bare_median:.3f} s")
        print(f"median QuantizeJob (runner): {job_median:.3f} s")
        print(f"ratio job / bare: {ratio:.3f} (target <= 1.03) "
              f"{'OK' if ratio <= 1.03 else 'OVER TARGET'}")
        cpu_median = statistics.median(runner_cpu)
        print(f"runner CPU per job (median): {cpu_median * 1000:.0f} ms = "
              f"{cpu_median / bare_median * 100:.1f}% of the bare wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
