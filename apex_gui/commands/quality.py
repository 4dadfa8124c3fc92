"""``apex-studio sensitivity`` (measure what each type does to each tensor) and
``apex-studio optimize`` (the plan of least predicted KL divergence for a budget)."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from apex_gui.commands.arguments import (add_force, check_inputs, check_model_file, check_model_header,
                                         check_threads, float_in_range)
from apex_gui.commands.recommend import DEFAULT_CTX, machine_from_args
from apex_gui.commands.source_pipeline import stop_signals_cancel
from apex_gui.commands.rpc import add_rpc_option, checked_workers
from apex_gui.core.files.outputs import OutputLock, check_output, write_text_output
from apex_gui.core.fit.context_memory import ContextSettings
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.quantize import command_line
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.settings import load_settings
from apex_gui.core.units import MiB, format_size, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    sens = sub.add_parser(
        "sensitivity", help="measure each tensor's damage at each candidate type (real tools)",
        description="Quantize a row sample of MODEL once per candidate type with "
                    "llama-quantize, read every tensor back and weigh its error, then "
                    "calibrate that error to KL divergence with a few short llama-perplexity "
                    "probes. States its projected time and scratch disk first; a stopped run "
                    "resumes where it stopped. Cached by the model's and imatrix's content.")
    sens.add_argument("model", help="the source GGUF (F16/BF16/F32)")
    sens.add_argument("--imatrix", metavar="FILE", help="importance matrix (adds IQ2/IQ3 types)")
    sens.add_argument("-o", "--output", required=True, help="sensitivity JSON to write")
    sens.add_argument("--json", action="store_true", help="machine-readable summary")
    _add_measure_options(sens)
    add_rpc_option(sens)
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
                     help="a table from apex-studio sensitivity: a file, or "
                          "hf://OWNER/REPO/FILE.json on Hugging Face (default: measure it now)")
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
    add_rpc_option(opt)
    add_force(opt)
    opt.set_defaults(func=run_optimize)


def _add_measure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", metavar="FILE",
                        help="text for the KL probes (default: pieces of the bundled "
                             "calibration set: chat, code, reasoning, tool calls)")
    parser.add_argument("--probe-ctx", type=int, default=512, help="context of the KL probes")
    parser.add_argument("--chunks", type=int, default=None,
                        help="chunks each KL probe evaluates (default 4)")
    parser.add_argument("--types", help="comma-separated candidate types (default: K-quants "
                                        "Q2_K..Q8_0, IQ3_S, IQ4_XS; IQ2/IQ3_XXS with --imatrix)")
    parser.add_argument("-t", "--threads", type=int, default=None, help="threads for the tools")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="folder for the scratch files (default: the temporary folder)")
    parser.add_argument("--no-cache", action="store_true",
                        help="measure from the start, even when cached or stopped half-way")


def parse_budget(text: str) -> int:
    """``15.5MB``, ``21GiB``, ``15500000B`` (:func:`apex_gui.core.units.parse_size`)."""
    return parse_size(text, "--budget")


def _progress(stage: str, fraction: float, eta: float | None) -> None:
    left = f", about {eta:.0f} s left" if eta is not None and fraction < 1 else ""
    print(f"\r[{fraction:6.1%}] {stage}{left}\033[K", end="", file=sys.stderr, flush=True)


def _prepare(args: argparse.Namespace, model_path: Path) -> tuple[Any, list[str]]:
    """The measurement's settings, every one checked before any work (one-line errors)."""
    # start-up: the sensitivity modules load only when this command runs
    from apex_gui.core.quality.sensitivity import prepare_measurement

    check_threads(args)
    candidates = ([t.strip().upper() for t in args.types.split(",") if t.strip()]
                  if args.types else None)
    if args.types is not None and not candidates:
        raise ValueError("--types lists no type; give e.g. --types Q4_K,Q6_K or leave it out")
    workers, _probes = checked_workers(getattr(args, "rpc", None))
    settings = prepare_measurement(model_path, args.imatrix, text=args.text,
                                   context=args.probe_ctx, chunks=args.chunks,
                                   candidates=candidates, threads=args.threads or 0,
                                   rpc_workers=workers)
    return settings, workers


def _measure(args: argparse.Namespace, settings: Any,
             output: str | None = None) -> tuple[Any, Any, float]:
    """Run the measurement with the projection stated first; SIGTERM, SIGHUP and Ctrl-C
    stop it with its scratch folder removed and what it finished kept for a resume."""
    # start-up: the sensitivity modules load only when this command runs
    from apex_gui.core.quality.projection import ensure_speed
    from apex_gui.core.quality.scratch import scratch_root
    from apex_gui.core.quality.sensitivity import SensitivityCancelled, measure_sensitivity

    # The probes run as every job does: threads, --no-repack (setting or the stored tools
    # check) from the one source of run options.
    tools = LlamaTools.for_settings(load_settings(), threads=args.threads or None)
    stop = threading.Event()
    started = time.monotonic()
    try:
        # From the pilot on: a SIGTERM there killed the command with the output's lock and
        # the pilot's scratch folder left behind.
        with stop_signals_cancel(stop):
            ensure_speed(tools, args.work_dir, stop, output)
            projection = settings.projection()
            print(projection.summary(str(scratch_root(args.work_dir))), file=sys.stderr,
                  flush=True)
            table = measure_sensitivity(settings.model.path, settings=settings, tools=tools,
                                        on_progress=_progress, cancel=stop,
                                        use_cache=not args.no_cache, work_dir=args.work_dir,
                                        output=output)
    except KeyboardInterrupt:
        stop.set()
        raise
    except SensitivityCancelled:
        print(file=sys.stderr)
        print("stopped: the finished types and probes are kept; the same command resumes "
              "from there", file=sys.stderr)
        raise KeyboardInterrupt from None
    print(file=sys.stderr)
    seconds = time.monotonic() - started
    print(f"measured in {seconds:.0f} s (projected {projection.seconds:.0f} s)", file=sys.stderr)
    return table, projection, seconds


def _peak_rss(who: int) -> int:
    """Peak resident memory in bytes (Linux reports KiB) of this process or its children."""
    return resource.getrusage(who).ru_maxrss * 1024


def _remove_stale_scratch(args: argparse.Namespace) -> None:
    """Scratch folders of measurements that were killed (their owner is gone) go first."""
    # start-up: the sensitivity modules load only when this command runs
    from apex_gui.core.quality.scratch import remove_stale, scratch_root

    for folder in remove_stale(scratch_root(args.work_dir)):
        print(f"removed {folder}, left by a measurement that was killed", file=sys.stderr)


def run_sensitivity(args: argparse.Namespace) -> int:
    _remove_stale_scratch(args)
    model_path = check_model_file(args.model)
    check_inputs([(args.imatrix, "--imatrix", None), (args.text, "--text", None)])
    sources = [(model_path, "source model"), (args.imatrix, "importance matrix"),
               (args.text, "probe text")]
    # Refused before hours of measuring, not after; the lock keeps a second run to the same
    # output from measuring all that time only to be refused at the end.
    check_output(args.output, force=args.force, sources=sources)
    settings, _workers = _prepare(args, model_path)
    with OutputLock(args.output):
        table, projection, seconds = _measure(args, settings, args.output)
    write_text_output(args.output, json.dumps(table.to_json(), indent=1, allow_nan=False) + "\n",
                      force=args.force, sources=sources)
    if args.json:
        print(json.dumps({"output": str(args.output), "tensors": len(table.errors),
                          "candidates": list(table.candidates), "kind_scale": table.kind_scale,
                          "floor": table.floor, "response": table.response,
                          "probes": table.probes, "timings": table.timings,
                          "settings": table.settings, "seconds": seconds,
                          "projected_seconds": projection.seconds,
                          "projected_scratch_bytes": projection.scratch_bytes,
                          "peak_rss_bytes": _peak_rss(resource.RUSAGE_SELF),
                          "tools_peak_rss_bytes": _peak_rss(resource.RUSAGE_CHILDREN)},
                         indent=2, allow_nan=False))
        return 0
    worst = sorted((p for p in table.probes if p["key"].startswith("kind:")),
                   key=lambda p: -p["kld_mean"])[:3]
    print(f"wrote {args.output}: {len(table.errors)} tensors x {len(table.candidates)} types, "
          f"{len(table.probes)} KL probes")
    for probe in worst:
        print(f"  {probe['key'][5:]} at {probe['type']}: mean KLD {probe['kld_mean']:.5f}")
    return 0


def load_table_argument(spec: str, model: Any) -> Any:
    """``--sensitivity``: a local file or ``hf://OWNER/REPO/FILE``, checked against the model."""
    # start-up: Hub tables load only when a table is given
    from apex_gui.core.hub.tables import fetch_table

    return fetch_table(spec, model)


def run_optimize(args: argparse.Namespace) -> int:
    # start-up: the optimizer and Hub tables load only when this command runs
    from apex_gui.core.hub.tables import is_hub_spec
    from apex_gui.core.quality.optimizer import (BudgetTooSmall, optimize, optimize_for_fit,
                                                 smallest_possible_bytes)

    _remove_stale_scratch(args)
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
    local_table = args.sensitivity if args.sensitivity and not is_hub_spec(args.sensitivity) else None
    check_inputs([(args.imatrix, "--imatrix", None), (local_table, "--sensitivity", None),
                  (args.text, "--text", None)])
    sources = ([(model_path, "source model"), (args.imatrix, "importance matrix"),
                (local_table, "sensitivity table"), (args.text, "probe text")])
    if args.output:  # refused now, not after the measurement
        check_output(args.output, force=args.force, sources=sources)
    model = open_model(model_path)
    check_model_header(model)
    if args.sensitivity:
        table = load_table_argument(args.sensitivity, model)
    else:
        settings, _workers = _prepare(args, model_path)
        if budget is not None:
            least = smallest_possible_bytes(model, settings.candidates, args.imatrix)
            if budget < least:
                raise BudgetTooSmall(
                    f"a budget of {budget:,} bytes is too small for {model.path.name}: the "
                    f"smallest plan of the candidate types is {least:,} bytes "
                    f"({format_size(least)}); nothing was measured")
        table = _measure(args, settings)[0]
    fit = None
    if fit_target:
        n_ctx = args.ctx or min(DEFAULT_CTX, model.context_length or DEFAULT_CTX)
        ctx = ContextSettings(n_ctx=n_ctx, type_k=args.kv_type, type_v=args.kv_type)
        result, fit = optimize_for_fit(model, table, machine, ctx,
                                       margin=int(args.margin * MiB), imatrix=args.imatrix,
                                       experts_in_ram=args.experts_in_ram)
    else:
        assert budget is not None
        result = optimize(model, table, budget, args.imatrix)
    plan = result.plan
    if args.output:
        write_text_output(args.output, plan.tensor_type_file_text(), force=args.force,
                          sources=[(p, "source model") for p in model.paths] + sources[1:])
    if args.json:
        data = result.to_json()
        data["command"] = command_line(plan, args.output or "plan.txt")
        data["prediction_basis"] = table.calibration_basis()
        if fit is not None:
            data["fit"] = {"verdict": fit.verdict.value, "flags": fit.flags}
        print(json.dumps(data, indent=2, allow_nan=False))
        return 0
    if not args.output:
        print(plan.tensor_type_file_text(), end="")
        return 0
    print(f"wrote {args.output}: {len(plan.pinned_types())} tensors pinned; "
          f"{format_size(plan.total_bytes())} ({plan.total_bytes():,} bytes, budget "
          f"{result.budget:,}), {plan.bits_per_weight():.2f} bits per weight")
    print(f"predicted mean KLD {result.predicted_kld:.3g} {table.calibration_basis()} "
          f"(optimized in {result.seconds:.2f} s)")
    if fit is not None:
        print(f"fits: {fit.verdict.value} ({fit.flags})")
    print(command_line(plan, args.output))
    return 0
