"""``apex-studio sensitivity`` (measure what each type does to each tensor) and
``apex-studio optimize`` (the plan of least predicted KL divergence for a budget)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from apex_gui.commands.arguments import (add_force, check_inputs, check_model_file, check_model_header,
                                         float_in_range)
from apex_gui.core.jobs.quantize import command_line
from apex_gui.core.units import format_size, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    sens = sub.add_parser(
        "sensitivity", help="measure each tensor's damage at each candidate type (real tools)",
        description="Quantize MODEL once per candidate type with llama-quantize, read every "
                    "tensor back and weigh its error by the importance matrix, then calibrate "
                    "that error to KL divergence per tensor kind with llama-perplexity probes. "
                    "Cached by the model's and imatrix's content.")
    sens.add_argument("model", help="the source GGUF (F16/BF16/F32)")
    sens.add_argument("--imatrix", metavar="FILE", help="importance matrix (adds IQ2/IQ3 types)")
    sens.add_argument("-o", "--output", required=True, help="sensitivity JSON to write")
    sens.add_argument("--json", action="store_true", help="machine-readable summary")
    _add_measure_options(sens)
    add_force(sens)
    sens.set_defaults(func=run_sensitivity)

    opt = sub.add_parser(
        "optimize", help="the plan of least predicted KL divergence for a byte budget or a GPU",
        description="Choose a type per tensor that minimises predicted KL divergence within "
                    "--budget (exact bytes of the output file), or within what fits --gpu / "
                    "--vram at --ctx. Writes an ordinary tensor-type file.")
    opt.add_argument("model", help="the source GGUF")
    opt.add_argument("--budget", metavar="SIZE",
                     help="largest output file, with its unit: 15.5MB, 21GiB, 15500000B")
    opt.add_argument("--sensitivity", metavar="FILE",
                     help="a table from apex-studio sensitivity (default: measure it now)")
    opt.add_argument("--imatrix", metavar="FILE",
                     help="importance matrix to quantize with (allows IQ1/IQ2/IQ3_XXS types)")
    opt.add_argument("-o", "--output", help="tensor-type file to write (default: print it)")
    opt.add_argument("--json", action="store_true", help="machine-readable summary")
    opt.add_argument("--vram", action="append", default=[], metavar="SIZE",
                     help="fit target instead of --budget: GPU memory (as in recommend)")
    opt.add_argument("--gpu", action="append", default=[], metavar="SPEC",
                     help='fit target instead of --budget: GPUs by name, e.g. "RTX 4090"')
    opt.add_argument("--add-detected", action="store_true", help=argparse.SUPPRESS)
    opt.add_argument("--ram", metavar="SIZE", help="available system RAM (default: detected)")
    opt.add_argument("--experts-in-ram", action="store_true",
                     help="with --gpu/--vram: routed experts stay in system RAM (--cpu-moe), "
                          "their own budget being the available RAM; the rest must fit the GPUs")
    opt.add_argument("--ctx", type=int, default=None, help="context for the fit (default 8192)")
    opt.add_argument("--kv-type", default="f16", help="KV cache type for the fit (default f16)")
    opt.add_argument("--margin", type=float, default=1024.0, help="MiB kept free per GPU")
    _add_measure_options(opt)
    add_force(opt)
    opt.set_defaults(func=run_optimize)


def _add_measure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", metavar="FILE",
                        help="text for the KL probes (default: the bundled evaluation text)")
    parser.add_argument("--probe-ctx", type=int, default=512, help="context of the KL probes")
    parser.add_argument("--chunks", type=int, default=None, help="chunks of the KL probes")
    parser.add_argument("--types", help="comma-separated candidate types (default: K-quants "
                                        "Q2_K..Q8_0, IQ3_S, IQ4_XS; IQ2/IQ3_XXS with --imatrix)")
    parser.add_argument("--threads", type=int, default=0, help="threads for the tools")
    parser.add_argument("--no-cache", action="store_true", help="measure even when cached")


def parse_budget(text: str) -> int:
    """``15.5MB``, ``21GiB``, ``15500000B`` (:func:`apex_gui.core.units.parse_size`)."""
    return parse_size(text, "--budget")


def _progress(stage: str, fraction: float, eta: float | None) -> None:
    left = f", about {eta:.0f} s left" if eta is not None and fraction < 1 else ""
    print(f"\r[{fraction:6.1%}] {stage}{left}\033[K", end="", file=sys.stderr, flush=True)


def _measure(args: argparse.Namespace, model_path: Path) -> Any:
    from apex_gui.core.jobs.tools import LlamaTools
    from apex_gui.core.quality.sensitivity import SensitivityCancelled, measure_sensitivity
    from apex_gui.core.settings import load_settings

    # The probes run as every job does: threads, --no-repack (setting or the stored tools
    # check) from the one source of run options.
    tools = LlamaTools.for_settings(load_settings(), threads=args.threads or None)
    candidates = [t.strip().upper() for t in args.types.split(",")] if args.types else None
    cancel = threading.Event()
    try:
        table = measure_sensitivity(model_path, args.imatrix, text=args.text,
                                    context=args.probe_ctx, chunks=args.chunks,
                                    candidates=candidates, tools=tools,
                                    on_progress=_progress, cancel=cancel,
                                    use_cache=not args.no_cache)
    except KeyboardInterrupt:
        cancel.set()
        raise
    except SensitivityCancelled:
        raise KeyboardInterrupt from None
    print(file=sys.stderr)
    return table


def run_sensitivity(args: argparse.Namespace) -> int:
    from apex_gui.core.files.outputs import check_output, write_text_output

    model_path = check_model_file(args.model)
    check_inputs([(args.imatrix, "--imatrix", None), (args.text, "--text", None)])
    sources = [(model_path, "source model"), (args.imatrix, "importance matrix")]
    # Refused before hours of measuring, not after.
    check_output(args.output, force=args.force, sources=sources)
    table = _measure(args, model_path)
    write_text_output(args.output, json.dumps(table.to_json(), indent=1) + "\n",
                      force=args.force, sources=sources)
    if args.json:
        print(json.dumps({"output": str(args.output), "tensors": len(table.errors),
                          "candidates": list(table.candidates), "kind_scale": table.kind_scale,
                          "probes": table.probes, "timings": table.timings}, indent=2))
        return 0
    worst = sorted(table.probes, key=lambda p: -p["kld_mean"])[:3]
    print(f"wrote {args.output}: {len(table.errors)} tensors x {len(table.candidates)} types, "
          f"{len(table.probes)} KL probes")
    for probe in worst:
        print(f"  {probe['kind']} at {probe['type']}: mean KLD {probe['kld_mean']:.5f}")
    return 0


def run_optimize(args: argparse.Namespace) -> int:
    from apex_gui.core.files.outputs import write_text_output
    from apex_gui.core.gguf.model import open_model
    from apex_gui.core.quality.optimizer import optimize, optimize_for_fit
    from apex_gui.core.quality.sensitivity import SensitivityTable

    from apex_gui.commands.recommend import machine_from_args

    fit_target = bool(args.vram or args.gpu)
    if args.experts_in_ram and not fit_target:
        raise ValueError("--experts-in-ram goes with a fit target (--gpu / --vram)")
    if bool(args.budget) == fit_target:
        raise ValueError("give either --budget SIZE or a fit target (--gpu / --vram), not "
                         "both and not neither")
    # Sizes and the margin are read before any measuring: a typo costs no sensitivity run.
    budget = parse_budget(args.budget) if args.budget else None
    float_in_range(args.margin, "--margin", 0, 2.0**30, "the MiB kept free on each GPU")
    machine = machine_from_args(args) if fit_target else None
    model_path = check_model_file(args.model)
    check_inputs([(args.imatrix, "--imatrix", None), (args.sensitivity, "--sensitivity", None)])
    model = open_model(model_path)
    check_model_header(model)
    table = (SensitivityTable.load(args.sensitivity) if args.sensitivity
             else _measure(args, model_path))
    fit = None
    if fit_target:
        from apex_gui.core.fit.context_memory import ContextSettings
        from apex_gui.core.units import MiB

        from apex_gui.commands.recommend import DEFAULT_CTX

        n_ctx = args.ctx or min(DEFAULT_CTX, model.context_length or DEFAULT_CTX)
        ctx = ContextSettings(n_ctx=n_ctx, type_k=args.kv_type, type_v=args.kv_type)
        result, fit = optimize_for_fit(model, table, machine, ctx,
                                       margin=int(args.margin * MiB), imatrix=args.imatrix,
                                       experts_in_ram=args.experts_in_ram)
    else:
        result = optimize(model, table, budget, args.imatrix)
    plan = result.plan
    if args.output:
        write_text_output(args.output, plan.tensor_type_file_text(), force=args.force,
                          sources=[(p, "source model") for p in model.paths]
                          + [(args.imatrix, "importance matrix")])
    if args.json:
        data = result.to_json()
        data["command"] = command_line(plan, args.output or "plan.txt")
        if fit is not None:
            data["fit"] = {"verdict": fit.verdict.value, "flags": fit.flags}
        print(json.dumps(data, indent=2))
        return 0
    if not args.output:
        print(plan.tensor_type_file_text(), end="")
        return 0
    print(f"wrote {args.output}: {len(plan.pinned_types())} tensors pinned; "
          f"{format_size(plan.total_bytes())} ({plan.total_bytes():,} bytes, budget "
          f"{result.budget:,}), {plan.bits_per_weight():.2f} bits per weight")
    print(f"predicted mean KLD {result.predicted_kld:.3g} (optimized in {result.seconds:.2f} s)")
    if fit is not None:
        print(f"fits: {fit.verdict.value} ({fit.flags})")
    print(command_line(plan, args.output))
    return 0
