"""``apex-studio recommend MODEL`` (which tier fits, with which flags) and ``apex-studio hardware``."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import replace
from typing import Any

from apex_gui.commands.arguments import (MAX_CONTEXT, check_model_file, check_model_header,
                                         float_in_range, int_in_range)
from apex_gui.commands.rpc import add_rpc_option, checked_workers, probe_dict
from apex_gui.core.fit import hardware
from apex_gui.core.fit.cluster import machine_with_workers
from apex_gui.core.fit.context_memory import (
    DEFAULT_MARGIN, DEFAULT_UBATCH, KV_CACHE_TYPES, ContextSettings, ModelGeometry,
)
from apex_gui.core.fit.device_spec import marketed_size_note, parse_device_spec
from apex_gui.core.fit.hardware import GpuDevice, HardwareSnapshot
from apex_gui.core.fit.recommend import (
    Recommendation, file_candidate, recommend, tier_candidates,
)
from apex_gui.core.fit.placement import FitResult, MachineMemory
from apex_gui.core.fit.rpc_workers import parse_workers, probe_workers, worker_warnings
from apex_gui.core.gguf.model import FileKind, open_model
from apex_gui.core.jobs.run_store import RunStore, RunStoreError
from apex_gui.core.jobs.tools import LlamaTools, ToolNotFoundError
from apex_gui.core.units import MiB, format_size, parse_size

#: The context planned for when --ctx is not given (shortened to a model's training context).
DEFAULT_CTX = 8192


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "recommend", help="which APEX tier fits this machine (or another), with llama-server flags",
        description="Size every APEX profile of MODEL for the GPUs and RAM given (or detected) "
                    "and recommend the highest-quality tier that fits fully on the GPU.")
    parser.add_argument("model", help="the source GGUF (F16/BF16) or any shard of it")
    parser.add_argument("--vram", action="append", default=[], metavar="SIZE",
                        help="GPU memory, e.g. 24GB or 80GiB; repeat or comma-separate for "
                             "several GPUs (GB = 10^9 bytes, GiB = 2^30)")
    parser.add_argument("--gpu", action="append", default=[], metavar="SPEC",
                        help='GPUs by name, e.g. "2 x RTX 3090", "H100 80GB", "128 GB unified"')
    parser.add_argument("--add-detected", action="store_true",
                        help="add the --gpu / --vram devices to the detected GPUs instead of "
                             "replacing them")
    parser.add_argument("--ram", metavar="SIZE", help="available system RAM (default: detected)")
    parser.add_argument("--ctx", type=int, default=None,
                        help="context length (default 8192, or the model's training context "
                             "when that is shorter)")
    parser.add_argument("--kv-type", default="f16", choices=KV_CACHE_TYPES,
                        help="KV cache type for -ctk/-ctv (default f16)")
    parser.add_argument("--parallel", type=int, default=1, help="parallel sequences (-np)")
    parser.add_argument("--ubatch", type=int, default=DEFAULT_UBATCH, help="physical batch (-ub)")
    parser.add_argument("--no-flash-attn", action="store_true", help="assume -fa off")
    parser.add_argument("--mtp", action="store_true",
                        help="speculative decoding with the model's MTP block (--spec-type draft-mtp)")
    parser.add_argument("--mmproj", help="a vision projector GGUF loaded beside the model")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN / MiB,
                        help="MiB kept free on each GPU (default 1024, like llama-fit-params)")
    parser.add_argument("--as-is", action="store_true",
                        help="size MODEL as it is instead of its APEX profiles")
    parser.add_argument("--sensitivity", metavar="FILE",
                        help="rank the tiers by KL divergence predicted from this table "
                             "(apex-studio sensitivity); default: one measured earlier, if any")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_rpc_option(parser)
    parser.set_defaults(func=run_recommend)

    hw = sub.add_parser("hardware", help="show detected GPUs, system RAM and CPU cores")
    hw.add_argument("--json", action="store_true", help="machine-readable output")
    add_rpc_option(hw)
    hw.set_defaults(func=run_hardware)


# ----------------------------------------------------------------------------- hardware


def _manual_vram(values: list[str]) -> list[GpuDevice]:
    """One manual GPU per --vram size, with exactly the bytes given (24GiB stays 24 GiB)."""
    devices: list[GpuDevice] = []
    template = parse_device_spec("1 GB")[0]
    for value in values:
        if not any(p.strip() for p in value.split(",")):
            raise ValueError(f"--vram {value!r} gives no size; give one like 24GB or "
                             "24GB,24GB for two GPUs")
        for part in (p.strip() for p in value.split(",") if p.strip()):
            size = parse_size(part, "--vram")
            devices.append(replace(template, name=f"Manual {part}", total_bytes=size,
                                   free_bytes=size))
    return devices


def machine_from_args(args: argparse.Namespace) -> MachineMemory:
    """GPUs from --vram / --gpu (added to the detected ones with --add-detected), else
    detected; RAM from --ram, else detected."""
    manual = _manual_vram(args.vram)
    for spec in args.gpu:
        try:
            manual.extend(parse_device_spec(spec))
        except ValueError as error:
            raise ValueError(f"--gpu: {error}") from None
    if args.add_detected and not manual:
        raise ValueError("--add-detected adds the devices of --gpu or --vram; give one of them")
    if manual and not args.add_detected:
        devices = [replace(d, index=i) for i, d in enumerate(manual)]
        notes: tuple[str, ...] = ()
        ram = 0
        if args.ram is None:
            ram = hardware.probe_system().available_bytes
            # Planning for another machine with this one's RAM would mislead quietly.
            notes = (f"System RAM is this machine's ({format_size(ram)} available); pass "
                     "--ram SIZE to plan for another machine.",)
    else:
        detected = MachineMemory.from_snapshot(hardware.snapshot())
        devices = [replace(d, index=i) for i, d in enumerate([*detected.gpus, *manual])]
        notes, ram = detected.notes, detected.ram_available
        if manual and not detected.gpus:
            # The probe's note says "planning for CPU only", which the added devices undo.
            notes = ("No NVIDIA GPU detected here; planning for the devices given by hand.",)
    if args.ram is not None:
        ram = parse_size(args.ram, "--ram")
    # "--vram 24GB" is 22.4 GiB, less than a card sold as 24GB: say so where it may matter.
    typed = [note for text in [*args.vram, *args.gpu] if (note := marketed_size_note(text))]
    return MachineMemory(tuple(devices), ram, (*notes, *typed[:1]))


def hardware_dict(snap: HardwareSnapshot) -> dict[str, Any]:
    return {
        "gpus": [{"index": g.index, "name": g.name, "uuid": g.uuid, "pci_bus_id": g.pci_bus_id,
                  "total_bytes": g.total_bytes, "free_bytes": g.free_bytes,
                  "is_mig": g.is_mig, "unified_memory": g.unified_memory,
                  "driver_version": g.driver_version, "cuda_version": g.cuda_version}
                 for g in snap.gpus],
        "system": {"total_bytes": snap.system.total_bytes,
                   "available_bytes": snap.system.available_bytes},
        "cpu_cores_physical": snap.cpu_cores_physical,
        "cpu_cores_logical": snap.cpu_cores_logical,
        "notes": list(snap.notes),
    }


def run_hardware(args: argparse.Namespace) -> int:
    snap = hardware.snapshot()
    # Unreachable workers are listed, not refused: this command is how one finds them.
    workers = parse_workers(args.rpc) if args.rpc else ()
    for line in worker_warnings(workers):
        print(line, file=sys.stderr)
    try:
        probes = probe_workers(workers, LlamaTools()) if workers else ()
    except ToolNotFoundError as error:
        raise ValueError(str(error)) from None
    if args.json:
        print(json.dumps({**hardware_dict(snap), "rpc_workers": [probe_dict(p) for p in probes]},
                         indent=2))
        return 0 if all(p.reachable for p in probes) else 1
    if not snap.gpus:
        print("GPUs: none detected")
    for g in snap.gpus:
        kind = " (MIG instance)" if g.is_mig else " (unified memory)" if g.unified_memory else ""
        print(f"GPU {g.index}: {g.name}{kind}: {format_size(g.free_bytes)} free of "
              f"{format_size(g.total_bytes)}" + (f", driver {g.driver_version}"
                                               if g.driver_version else ""))
    print(f"System RAM: {format_size(snap.system.available_bytes)} available of "
          f"{format_size(snap.system.total_bytes)}")
    print(f"CPU cores: {snap.cpu_cores_physical or '?'} physical, {snap.cpu_cores_logical} logical")
    for note in snap.notes:
        print(f"note: {note}")
    for probe in probes:
        print(probe.summary())
    return 0 if all(p.reachable for p in probes) else 1


# ----------------------------------------------------------------------------- recommend


def result_dict(result: FitResult) -> dict[str, Any]:
    est = result.estimate
    return {
        "profile": result.candidate.key,
        "label": result.candidate.label,
        "needs_imatrix": result.candidate.needs_imatrix,
        "file_bytes": result.candidate.file_bytes,
        "verdict": result.verdict.name.lower(),
        "flags": result.flags,
        "n_gpu_layers": result.placement.n_gpu_layers,
        "n_cpu_moe": result.placement.n_cpu_moe,
        "headroom_bytes": result.headroom_bytes,
        "headroom_share": round(result.headroom_share, 4),
        "headroom": result.headroom.value,
        "max_context": result.max_context,
        "devices": [{"name": d.name, "weights": d.weights, "kv": d.kv, "recurrent": d.recurrent,
                     "compute": d.compute, "extra": d.extra, "total": d.total}
                    for d in est.devices],
        "host": {"weights": est.host.weights, "kv": est.host.kv, "compute": est.host.compute,
                 "total": est.host.total},
        "command": list(result.command),
        "notes": list(result.notes),
    }


def recommendation_dict(rec: Recommendation, mmproj_bytes: int = 0) -> dict[str, Any]:
    ctx = rec.context
    return {
        "context": {"n_ctx": ctx.n_ctx_padded, "n_seq": ctx.n_seq, "type_k": ctx.type_k,
                    "type_v": ctx.type_v, "flash_attn": ctx.flash_attn,
                    "n_ubatch": ctx.n_ubatch, "use_mtp": ctx.use_mtp},
        "mmproj_bytes": mmproj_bytes,
        "gpus": [{"name": g.name, "free_bytes": g.free_bytes, "unified_memory": g.unified_memory}
                 for g in rec.machine.gpus],
        "ram_available": rec.machine.ram_available,
        "margin_bytes": rec.margin,
        "results": [result_dict(r) for r in rec.results],
        "recommended": rec.recommended.candidate.key if rec.recommended else None,
        "command": list(rec.recommended.command) if rec.recommended else None,
        "notes": list(rec.notes),
        "rpc_workers": list(rec.machine.rpc_workers),
        "machines_needed": rec.machines_needed,
        "quality_basis": rec.quality_basis,
        "rule": rec.rule,
        "quality_note": rec.quality_note,
        "kld": {key: {"kld_mean": f.kld, "basis": f.basis, "source": f.source}
                for key, f in rec.quality.items()},
    }


def format_table(rec: Recommendation) -> str:
    """The human table: one row per candidate, the recommended one marked with ``*``."""
    header = ("", "profile", "size", "verdict", "flags", "headroom", "max context", "KL mean")
    rows = []
    for r in rec.results:
        mark = "*" if r is rec.recommended else ""
        headroom = (f"{format_size(r.headroom_bytes)} ({r.headroom_share:.0%}, {r.headroom.value})"
                    if r.headroom.value != "none" else "none")
        figure = rec.quality.get(r.candidate.key)
        kld = f"{figure.kld:.4g} ({figure.basis})" if figure else "-"
        label = r.candidate.label + (" (needs imatrix)" if r.candidate.needs_imatrix else "")
        rows.append((mark, label, format_size(r.candidate.file_bytes),
                     r.verdict.value, r.flags, headroom,
                     str(r.max_context) if r.max_context else "-", kld))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def _describe_machine(machine: MachineMemory) -> str:
    if not machine.gpus:
        return f"CPU only, {format_size(machine.ram_available)} RAM available"
    gpus = ", ".join(f"{g.name} ({format_size(g.free_bytes)} free"
                     f"{', unified' if g.unified_memory else ''})" for g in machine.gpus)
    if machine.unified:
        # The pool is the system RAM: a second RAM figure would be counted twice by readers.
        return f"{gpus}; one pool shared with the CPU"
    return f"{gpus}; {format_size(machine.ram_available)} RAM available"


def _describe_context(ctx: ContextSettings, mmproj_bytes: int) -> str:
    parts = [f"context {ctx.n_ctx_padded}", f"KV {ctx.type_k}"
             + ("" if ctx.type_v == ctx.type_k else f"/{ctx.type_v}"),
             f"{ctx.n_seq} sequence(s)", f"flash attention {'on' if ctx.flash_attn else 'off'}"]
    if ctx.use_mtp:
        parts.append("MTP speculative decoding")
    if mmproj_bytes:
        parts.append(f"vision projector {format_size(mmproj_bytes)}")
    return ", ".join(parts)


def _quality_figures(args: argparse.Namespace, model: Any, candidates: list[Any]) -> Any:
    """KL figures to rank the tiers by: measured runs, a sensitivity table, the cards."""
    # start-up: sensitivity figures and Hub tables load only when tiers are ranked
    from apex_gui.core.hub.tables import fetch_table
    from apex_gui.core.quality.figures import quality_figures
    from apex_gui.core.quality.known import find_sensitivity

    if args.sensitivity:  # given: it must be this model's table (else one line, exit 2)
        table = fetch_table(args.sensitivity, model)
    else:  # found beside the model: a damaged one is skipped with a note
        table, _path, problem = find_sensitivity(model)
        if problem:
            print(f"apex-studio recommend: note: {problem}", file=sys.stderr)
    try:
        store = RunStore.for_reading()  # only read: a read-only history is fine
    except RunStoreError:
        store = None  # no run history readable: rank by what else is known
    try:
        return quality_figures(model, [c.key for c in candidates], table=table, store=store)
    finally:
        if store is not None:
            store.close()


def run_recommend(args: argparse.Namespace) -> int:
    int_in_range(args.ctx, "--ctx", 1, MAX_CONTEXT, "a context in tokens")
    int_in_range(args.parallel, "--parallel", 1, 4096, "a number of sequences")
    int_in_range(args.ubatch, "--ubatch", 1, MAX_CONTEXT, "a batch in tokens")
    # 2^30 MiB is a petabyte: anything above is a typo (1e308 overflowed to a traceback).
    float_in_range(args.margin, "--margin", 0, 2.0**30, "the MiB kept free on each GPU")
    model = open_model(check_model_file(args.model))
    if model.file_kind is not FileKind.MODEL:
        raise ValueError(f"{args.model} is a {model.file_kind.value}, not a model; pass the "
                         "model GGUF (and a vision projector with --mmproj)")
    mmproj_bytes = 0
    if model.file_kind is FileKind.MODEL:
        check_model_header(model)
    if args.mmproj:
        projector = open_model(check_model_file(args.mmproj, "--mmproj"))
        if projector.file_kind is not FileKind.VISION_PROJECTOR:
            raise ValueError(f"--mmproj {args.mmproj} is not a vision projector (mmproj) GGUF")
        mmproj_bytes = projector.tensor_bytes
    geom = ModelGeometry.from_model(model)
    n_ctx = args.ctx if args.ctx is not None else min(DEFAULT_CTX, geom.context_length
                                                      or DEFAULT_CTX)
    if args.parallel < 1 or n_ctx < 1 or args.ubatch < 1:
        raise ValueError("--ctx, --parallel and --ubatch must be at least 1")
    if args.margin < 0:
        raise ValueError("--margin is the MiB kept free on each GPU and cannot be negative")
    if args.mtp and not geom.mtp_layers:
        raise ValueError(f"--mtp: {args.model} has no MTP (nextn) block for speculative "
                         "decoding; leave out --mtp")
    ctx = ContextSettings(n_ctx=n_ctx, n_seq=args.parallel, type_k=args.kv_type,
                          type_v=args.kv_type, flash_attn=not args.no_flash_attn,
                          n_ubatch=args.ubatch, use_mtp=args.mtp)
    machine = machine_from_args(args)
    if args.rpc:
        machine = machine_with_workers(machine, checked_workers(args.rpc)[1])
    # The tiers the window's Hardware & tiers ranks: the same input gives the same answer.
    candidates = [file_candidate(model)] if args.as_is else tier_candidates(model)
    rec = recommend(geom, candidates, machine, ctx, margin=int(args.margin * MiB),
                    mmproj_bytes=mmproj_bytes, mmproj_path=args.mmproj,
                    quality=_quality_figures(args, model, candidates))
    if args.json:
        print(json.dumps(recommendation_dict(rec, mmproj_bytes), indent=2))
        return 0
    print(f"{model.name}: {_describe_context(ctx, mmproj_bytes)}, margin {args.margin:.0f} MiB "
          "per GPU")
    print(f"Memory: {_describe_machine(machine)}")
    print()
    print(format_table(rec))
    print(textwrap.fill(rec.rule.replace("★", "*"), width=100))
    print()
    if rec.recommended is not None:
        best = rec.recommended
        print(f"Recommended: {best.candidate.label} ({best.verdict.value}, headroom "
              f"{best.headroom.value})")
        if rec.quality_note:
            print(f"  {rec.quality_note}")
        print(f"  {best.command_line}")
        if rec.machine.rpc_workers:
            # Across workers each device's own headroom matters: a worker is a whole machine.
            for gpu, usage in zip(rec.machine.gpus, best.estimate.devices):
                print(f"  {gpu.name}: layers {len(usage.layers)}, needs "
                      f"{format_size(usage.total)} of {format_size(gpu.free_bytes)} free, "
                      f"headroom {format_size(gpu.free_bytes - usage.total)}")
    for note in rec.notes:
        print(f"note: {note}")
    return 0
