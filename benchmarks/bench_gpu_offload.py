"""Tokens per second of perplexity and imatrix, on the CPU and on each GPU backend, in one run.

Models: the bundled demo (12 layers, 11.4 MB F16) and a larger synthetic MoE (random
weights, written to the cache once). Devices: the CPU (``--device none``) and every device
the tools list (``--list-devices``: Vulkan, CUDA), each with every layer offloaded, through the
app's own jobs and runner (the placement flags the app passes). Where the tools have the
Vulkan backend but see no GPU, Mesa's software device (lavapipe) is measured instead when
present: those figures show the backend computes the same numbers, they say nothing about
speed (lavapipe runs the shaders on the same CPU cores, far slower than the CPU backend).

Tokens per second = tokens evaluated / wall time of the tool run (model load and shader
start-up included), best of ``--runs`` (one run on lavapipe); the perplexity column shows
the devices agree.

    python benchmarks/bench_gpu_offload.py [--runs 2] [--chunks 4] [--ctx 128] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apex_gui.core.fixtures.bundled_demo import TRAINED_DEMO_NAME  # noqa: E402
from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model  # noqa: E402
from apex_gui.core.jobs.calibration import quick_eval_text  # noqa: E402
from apex_gui.core.jobs.device_placement import CPU_ONLY, DevicePlacement  # noqa: E402
from apex_gui.core.jobs.devices import (  # noqa: E402
    VULKAN_VISIBLE_ENV, ToolDevice, list_devices,
)
from apex_gui.core.jobs.evaluations import PerplexityJob  # noqa: E402
from apex_gui.core.jobs.quantize import ImatrixJob  # noqa: E402
from apex_gui.core.jobs.run_options import RunOptions  # noqa: E402
from apex_gui.core.jobs.runner import run_job  # noqa: E402
from apex_gui.core.jobs.tools import LlamaTools  # noqa: E402
from apex_gui.core.settings import cache_dir  # noqa: E402

DEMO = ROOT / "resources" / "demo" / TRAINED_DEMO_NAME
#: 8 layers, 512 wide, 8 experts of 512 and a shared expert: 64M parameters, 127 MB in F16,
#: 11x the demo (large enough for a GPU to pull ahead of the CPU, small enough for lavapipe).
LARGER = SyntheticModelSpec(arch="qwen2moe", n_layer=8, n_embd=512, n_head=8, n_head_kv=4,
                            n_expert=8, n_expert_used=2, n_ff_exp=512, n_ff_shexp=512,
                            seed=7, name="APEX bench qwen2moe 64M")


@dataclass(frozen=True)
class Target:
    label: str
    placement: DevicePlacement
    software: bool = False


def _targets(tools: LlamaTools) -> list[Target]:
    targets = [Target("CPU", CPU_ONLY)]
    listing = list_devices(tools)
    hardware = [d for d in listing.gpus if not d.software]
    for device in hardware:
        targets.append(Target(f"{device.name} {device.description}", _offload(device)))
    if not hardware:
        for device in listing.hidden_software:
            env = ((VULKAN_VISIBLE_ENV, "0"),)
            targets.append(Target(f"{device.name} {device.description} (lavapipe: "
                                  "correctness, not speed)", _offload(device, env), True))
    if listing.error:
        print(f"devices: {listing.error}", file=sys.stderr)
    return targets


def _offload(device: ToolDevice, env: tuple[tuple[str, str], ...] = ()) -> DevicePlacement:
    return DevicePlacement(devices=(device.name,), gpu_layers=999, verdict="full GPU offload",
                           summary=f"full GPU offload on {device.name}", env=env)


def _measure(job: object, tools: LlamaTools, runs: int) -> tuple[float | None, float | None]:
    """(best tokens per second, PPL) over ``runs`` runs; None when a run failed."""
    best, ppl = None, None
    tokens = job.chunks * job.context  # type: ignore[attr-defined]
    for _ in range(runs):
        outcome = run_job(job, tools)  # type: ignore[arg-type]
        if not outcome.succeeded:
            print(f"  {job.title()}: {outcome.message}", file=sys.stderr)  # type: ignore[attr-defined]
            return None, None
        rate = tokens / max(outcome.duration, 1e-9)
        best = rate if best is None else max(best, rate)
        ppl = outcome.results.get("ppl", ppl)
    return best, ppl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    tools = LlamaTools()
    larger = cache_dir() / "bench" / "bench-qwen2moe-64m-f16.gguf"
    if not larger.is_file():
        larger.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_model(larger, LARGER)
    models = [("demo (11.4 MB)", DEMO), (f"synthetic 64M ({larger.stat().st_size / 1e6:.0f} MB)",
                                          larger)]
    # imatrix reads the same short text: tokenizing the whole 206 KB calibration set would
    # dominate a few chunks' run time.
    text = calibration = quick_eval_text()
    targets = _targets(tools)
    print(f"perplexity and imatrix: context {args.ctx}, {args.chunks} chunks, "
          f"{args.threads} CPU threads, best of {args.runs}\n")
    print("| model | device | perplexity t/s | imatrix t/s | PPL |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="apex-bench-gpu-") as folder:
        for name, model in models:
            for target in targets:
                if target.software and model != DEMO:
                    # lavapipe is for correctness: the demo shows it; the larger model
                    # would take it about half an hour.
                    print(f"| {name} | {target.label} | not run | not run | - |", flush=True)
                    continue
                options = RunOptions(threads=args.threads, placement=target.placement)
                ppl_job = PerplexityJob(model=model, text=text, context=args.ctx,
                                        chunks=args.chunks, options=options)
                imatrix_job = ImatrixJob(model=model, calibration=calibration,
                                         output_path=Path(folder) / "bench.imatrix.gguf",
                                         context=args.ctx, chunks=args.chunks, options=options)
                runs = 1 if target.software else args.runs  # its speed means nothing
                ppl_rate, ppl = _measure(ppl_job, tools, runs)
                imatrix_rate, _ = _measure(imatrix_job, tools, runs)
                cells = [f"{v:.0f}" if v is not None else "failed" for v in (ppl_rate,
                                                                              imatrix_rate)]
                print(f"| {name} | {target.label} | {cells[0]} | {cells[1]} | "
                      f"{ppl:.4f} |" if ppl is not None else
                      f"| {name} | {target.label} | {cells[0]} | {cells[1]} | - |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
