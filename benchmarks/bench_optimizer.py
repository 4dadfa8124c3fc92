"""Optimized plans against every fixed recipe, measured with llama-perplexity's KL divergence.

On a trained model (training/train_demo_moe.py): measure the sensitivity table (time, peak
memory), then quantize and measure mean KLD against the source for uniform llama.cpp quants
(Q2_K..Q8_0), the APEX profiles that need no imatrix, and the optimizer's plan at three
budgets (the sizes of uniform Q3_K_M, uniform Q4_K_M and APEX Quality). Prints, per budget,
the optimizer's KLD against the best fixed recipe of no more bytes, the rank correlation of
predicted and measured KLD over all plans, and the read-back speed on a larger synthetic
model with the projection to a 35B model.

    nice .venv/bin/python benchmarks/bench_optimizer.py --model M.gguf --text EVAL.txt \
        [--probe-text T.txt] [--ctx 128] [--out DIR] [--json R.json]

Targets (issue 13): KLD at least 15% below the best fixed recipe of no more bytes at each
budget, file within the budget (+0.5%); rank correlation >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from apex_gui.core.jobs import parsers  # noqa: E402
from apex_gui.core.jobs.evaluations import KLDivergenceJob, ReferenceLogitsJob  # noqa: E402
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.gguf.model import open_model  # noqa: E402
from apex_gui.core.plan.precision import plan_from_profile  # noqa: E402
from apex_gui.core.plan.profiles import builtin_profiles  # noqa: E402
from apex_gui.core.quality.optimizer import optimize  # noqa: E402
from apex_gui.core.quality.sensitivity import (DEFAULT_CANDIDATES, measure_sensitivity,  # noqa: E402
                                               weighted_errors)
from apex_gui.core.jobs.run_options import RunOptions  # noqa: E402
from apex_gui.core.jobs.runner import run_job  # noqa: E402
from apex_gui.core.jobs.tools import LlamaTools  # noqa: E402

UNIFORM = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M",
           "Q6_K", "Q8_0")
TARGET_GAIN = 0.15
TARGET_RHO = 0.9
BUDGET_SLACK = 0.005
BYTES_35B_F16 = 35e9 * 2


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    n = len(xs)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx and vy else float("nan")


def run(job: Any, tools: LlamaTools, what: str) -> dict[str, Any]:
    outcome = run_job(job, tools)
    if not outcome.succeeded:
        raise SystemExit(f"{what} failed: {outcome.message}")
    return outcome.results


def measure(quant: Path, reference: Path, ctx: int, tools: LlamaTools) -> float:
    results = run(KLDivergenceJob(model=quant, reference_logits=reference, context=ctx,
                                  options=RunOptions(no_repack=True)), tools,
                  f"KL divergence of {quant.name}")
    return float(results["kld_mean"])


def predicted_from_file(table: Any, quant: Path) -> float:
    """Predicted KLD of a written quant, from the types it really has."""
    model = open_model(quant)
    total = 0.0
    for name in table.errors:
        type_name = model.tensor(name).type_name
        if not table.known(name, type_name):
            return float("nan")  # a type the table did not measure: left out of the ranking
        total += table.damage(name, type_name)
    return total


def readback_speed(work: Path, tools: LlamaTools) -> dict[str, float]:
    """MB/s of quantize + read-back on a larger synthetic model (the per-type cost)."""
    from apex_gui.core.quality.sensitivity import _uniform_plan
    from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model

    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=8, n_embd=512, n_head=8, n_head_kv=2,
                              n_expert=16, n_ff_exp=512, n_ff_shexp=1024, seed=5,
                              name="bench read-back model")
    source = write_synthetic_model(work / "readback-f16.gguf", spec)
    model = open_model(source)
    names = list(_uniform_plan(model, "Q4_K").pinned_types()) + ["token_embd.weight", "output.weight"]
    started = time.perf_counter()
    for type_name in ("Q4_K", "Q6_K"):
        plan = _uniform_plan(model, type_name)
        quant = work / f"readback-{type_name}.gguf"
        run(QuantizeJob.from_plan(plan, quant, work / f"readback-{type_name}.txt"), tools,
            f"quantize {type_name}")
        weighted_errors(source, quant, names, None)
        quant.unlink()
    seconds = time.perf_counter() - started
    mb = source.stat().st_size / 1e6
    rate = 2 * mb / seconds
    return {"model_mb": mb, "seconds_two_types": seconds, "mb_per_s_per_type": rate,
            "projected_35b_hours_8_types": BYTES_35B_F16 / 1e6 * len(DEFAULT_CANDIDATES)
            / rate / 3600}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True, help="evaluation text")
    ap.add_argument("--probe-text", type=Path, help="text for the calibration probes "
                    "(default: the bundled evaluation text)")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args(argv)
    tools = LlamaTools(options=RunOptions(no_repack=True))
    work = args.out or Path(tempfile.mkdtemp(prefix="apex-bench-opt-"))
    work.mkdir(parents=True, exist_ok=True)
    model = open_model(args.model)
    report: dict[str, Any] = {"model": str(args.model), "source_bytes": model.file_size}

    started = time.perf_counter()
    table = measure_sensitivity(args.model, text=args.probe_text, context=args.ctx,
                                tools=tools, use_cache=False,
                                on_progress=lambda s, f, e: print(
                                    f"  sensitivity {f:5.1%} {s}", file=sys.stderr))
    report["sensitivity_seconds"] = time.perf_counter() - started
    table.save(work / "sensitivity.json")  # for looking at the plans afterwards
    report["sensitivity_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["tools_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report["kind_scale"] = table.kind_scale
    report["probes"] = table.probes
    print(f"sensitivity: {report['sensitivity_seconds']:.0f} s, peak RSS "
          f"{report['sensitivity_peak_rss_mb']:.0f} MB (tools {report['tools_peak_rss_mb']:.0f} MB)")

    reference = ReferenceLogitsJob(model=args.model, text=args.text, context=args.ctx,
                                   output_path=work / "reference.kld")
    run(reference, tools, "reference logits")

    rows: list[dict[str, Any]] = []

    def evaluate(label: str, job: QuantizeJob, kind: str, budget: int | None = None) -> None:
        run(job, tools, f"quantize {label}")
        quant = job.output_path
        row = {"label": label, "kind": kind, "bytes": quant.stat().st_size,
               "kld": measure(quant, reference.output_path, args.ctx, tools),
               "predicted": predicted_from_file(table, quant), "budget": budget}
        rows.append(row)
        print(f"  {label:24s} {row['bytes'] / 1e6:8.3f} MB  KLD {row['kld']:.5f}  "
              f"predicted {row['predicted']:.5f}")
        quant.unlink()

    for ftype in UNIFORM:
        evaluate(f"uniform {ftype}", QuantizeJob(source=args.model, base_type=ftype,
                                                 output_path=work / f"u-{ftype}.gguf"), "fixed")
    for profile in builtin_profiles().values():
        plan = plan_from_profile(model, profile)
        if profile.uses_imatrix or plan.needs_imatrix():
            continue
        evaluate(f"APEX {profile.label}", QuantizeJob.from_plan(
            plan, work / f"apex-{profile.key}.gguf", work / f"apex-{profile.key}.txt"), "fixed")
    sizes = {r["label"]: r["bytes"] for r in rows}
    budgets = {"Q3_K_M size": sizes["uniform Q3_K_M"], "Q4_K_M size": sizes["uniform Q4_K_M"],
               "APEX Quality size": sizes.get("APEX Quality", sizes["uniform Q5_K_M"])}
    summary = []
    for name, budget in budgets.items():
        t0 = time.perf_counter()
        result = optimize(model, table, budget)
        seconds = time.perf_counter() - t0
        label = f"optimized @ {name}"
        evaluate(label, QuantizeJob.from_plan(result.plan, work / "opt.gguf", work / "opt.txt"),
                 "optimized", budget)
        mine = rows[-1]
        fixed = [r for r in rows if r["kind"] == "fixed" and r["bytes"] <= budget]
        best = min(fixed, key=lambda r: r["kld"]) if fixed else None
        gain = 1 - mine["kld"] / best["kld"] if best else float("nan")
        within = mine["bytes"] <= budget * (1 + BUDGET_SLACK)
        summary.append({"budget_name": name, "budget": budget, "optimized_bytes": mine["bytes"],
                        "optimized_kld": mine["kld"], "best_fixed": best and best["label"],
                        "best_fixed_kld": best and best["kld"], "gain": gain,
                        "within_budget": within, "optimize_seconds": seconds,
                        "meets_target": within and gain >= TARGET_GAIN})
    ranked = [r for r in rows if r["predicted"] == r["predicted"]]
    rho = spearman([r["predicted"] for r in ranked], [r["kld"] for r in ranked])
    report.update(rows=rows, budgets=summary, spearman=rho, meets_rho=rho >= TARGET_RHO)
    if not args.skip_speed:
        report["readback"] = readback_speed(work, tools)
    print("\nbudget                 optimized KLD   best fixed (<= bytes)          gain   within")
    for s in summary:
        print(f"{s['budget_name']:20s} {s['optimized_kld']:.5f} ({s['optimized_bytes'] / 1e6:.3f} MB)"
              f"  {s['best_fixed'] or '-':22s} {s['best_fixed_kld'] or float('nan'):.5f}  "
              f"{s['gain']:+.1%}  {s['within_budget']}")
    print(f"rank correlation predicted vs measured over {len(ranked)} plans: {rho:.3f}")
    if "readback" in report:
        r = report["readback"]
        print(f"quantize + read-back: {r['mb_per_s_per_type']:.1f} MB/s per type on a "
              f"{r['model_mb']:.0f} MB model; a 35B F16 model x {len(DEFAULT_CANDIDATES)} types "
              f"~ {r['projected_35b_hours_8_types']:.1f} h")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
