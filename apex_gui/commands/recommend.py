"""``apex-studio recommend MODEL`` (which tier fits, with which flags) and ``apex-studio hardware``."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from apex_gui.core.hardware import GpuDevice, HardwareSnapshot, parse_device_spec
from apex_gui.core.memory_fit import (
    DEFAULT_MARGIN,
    DEFAULT_UBATCH,
    KV_CACHE_TYPES,
    ContextSettings,
    ModelGeometry,
)
from apex_gui.core.recommend import (
    FitResult,
    MachineMemory,
    Recommendation,
    file_candidate,
    profile_candidates,
    recommend,
)
from apex_gui.core.units import GB, MiB, format_gb, parse_size


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
    parser.add_argument("--ram", metavar="SIZE", help="available system RAM (default: detected)")
    parser.add_argument("--ctx", type=int, default=8192, help="context length (default 8192)")
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
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run_recommend)

    hw = sub.add_parser("hardware", help="show detected GPUs, system RAM and CPU cores")
    hw.add_argument("--json", action="store_true", help="machine-readable output")
    hw.set_defaults(func=run_hardware)


# ----------------------------------------------------------------------------- hardware


def _manual_vram(values: list[str]) -> list[GpuDevice]:
    devices: list[GpuDevice] = []
    for value in values:
        for part in (p for p in value.split(",") if p.strip()):
            size = parse_size(part)
            devices.extend(parse_device_spec(f"{size / GB:.6g} GB"))
    return devices


def machine_from_args(args: argparse.Namespace) -> MachineMemory:
    """GPUs from --vram / --gpu, else detected; RAM from --ram, else detected."""
    devices = _manual_vram(args.vram)
    for spec in args.gpu:
        devices.extend(parse_device_spec(spec))
    devices = [replace(d, index=i) for i, d in enumerate(devices)]
    notes: tuple[str, ...] = ()
    if not devices and not args.vram and not args.gpu:
        from apex_gui.core.hardware import snapshot

        snap = snapshot()
        devices, notes = list(snap.gpus), snap.notes
        ram = snap.system.available_bytes
    else:
        from apex_gui.core.hardware import probe_system

        ram = probe_system().available_bytes if args.ram is None else 0
    if args.ram is not None:
        ram = parse_size(args.ram)
    return MachineMemory(tuple(devices), ram, tuple(notes))


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
    from apex_gui.core.hardware import snapshot

    snap = snapshot()
    if args.json:
        print(json.dumps(hardware_dict(snap), indent=2))
        return 0
    if not snap.gpus:
        print("GPUs: none detected")
    for g in snap.gpus:
        kind = " (MIG instance)" if g.is_mig else " (unified memory)" if g.unified_memory else ""
        print(f"GPU {g.index}: {g.name}{kind}: {format_gb(g.free_bytes)} free of "
              f"{format_gb(g.total_bytes)}" + (f", driver {g.driver_version}"
                                               if g.driver_version else ""))
    print(f"System RAM: {format_gb(snap.system.available_bytes)} available of "
          f"{format_gb(snap.system.total_bytes)}")
    print(f"CPU cores: {snap.cpu_cores_physical or '?'} physical, {snap.cpu_cores_logical} logical")
    for note in snap.notes:
        print(f"note: {note}")
    return 0


# ----------------------------------------------------------------------------- recommend


def result_dict(result: FitResult) -> dict[str, Any]:
    est = result.estimate
    return {
        "profile": result.candidate.key,
        "label": result.candidate.label,
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


def recommendation_dict(rec: Recommendation) -> dict[str, Any]:
    ctx = rec.context
    return {
        "context": {"n_ctx": ctx.n_ctx_padded, "n_seq": ctx.n_seq, "type_k": ctx.type_k,
                    "type_v": ctx.type_v, "flash_attn": ctx.flash_attn,
                    "n_ubatch": ctx.n_ubatch, "use_mtp": ctx.use_mtp},
        "gpus": [{"name": g.name, "free_bytes": g.free_bytes, "unified_memory": g.unified_memory}
                 for g in rec.machine.gpus],
        "ram_available": rec.machine.ram_available,
        "margin_bytes": rec.margin,
        "results": [result_dict(r) for r in rec.results],
        "recommended": rec.recommended.candidate.key if rec.recommended else None,
        "command": list(rec.recommended.command) if rec.recommended else None,
        "notes": list(rec.notes),
    }


def format_table(rec: Recommendation) -> str:
    """The human table: one row per candidate, the recommended one marked with ``*``."""
    header = ("", "profile", "size", "verdict", "flags", "headroom", "max context")
    rows = []
    for r in rec.results:
        mark = "*" if r is rec.recommended else ""
        headroom = (f"{r.headroom_bytes / GB:.1f} GB ({r.headroom_share:.0%}, {r.headroom.value})"
                    if r.headroom.value != "none" else "none")
        rows.append((mark, r.candidate.label, format_gb(r.candidate.file_bytes, 1),
                     r.verdict.value, r.flags, headroom,
                     str(r.max_context) if r.max_context else "-"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def _describe_machine(machine: MachineMemory) -> str:
    if not machine.gpus:
        return f"CPU only, {format_gb(machine.ram_available)} RAM available"
    gpus = ", ".join(f"{g.name} ({format_gb(g.free_bytes, 1)} free"
                     f"{', unified' if g.unified_memory else ''})" for g in machine.gpus)
    return f"{gpus}; {format_gb(machine.ram_available)} RAM available"


def run_recommend(args: argparse.Namespace) -> int:
    from apex_gui.core.model import FileKind, open_model

    model = open_model(args.model)
    if model.file_kind is not FileKind.MODEL:
        raise ValueError(f"{args.model} is a {model.file_kind.value}, not a model; pass the "
                         "model GGUF (and a vision projector with --mmproj)")
    mmproj_bytes = 0
    if args.mmproj:
        projector = open_model(args.mmproj)
        if projector.file_kind is not FileKind.VISION_PROJECTOR:
            raise ValueError(f"--mmproj {args.mmproj} is not a vision projector (mmproj) GGUF")
        mmproj_bytes = projector.tensor_bytes
    if args.parallel < 1 or args.ctx < 1:
        raise ValueError("--ctx and --parallel must be at least 1")
    ctx = ContextSettings(n_ctx=args.ctx, n_seq=args.parallel, type_k=args.kv_type,
                          type_v=args.kv_type, flash_attn=not args.no_flash_attn,
                          n_ubatch=args.ubatch, use_mtp=args.mtp)
    machine = machine_from_args(args)
    geom = ModelGeometry.from_model(model)
    candidates = [file_candidate(model)] if args.as_is else profile_candidates(model)
    rec = recommend(geom, candidates, machine, ctx, margin=int(args.margin * MiB),
                    mmproj_bytes=mmproj_bytes, mmproj_path=args.mmproj)
    if args.json:
        print(json.dumps(recommendation_dict(rec), indent=2))
        return 0
    print(f"{model.name}: context {ctx.n_ctx_padded}, KV {ctx.type_k}, {ctx.n_seq} sequence(s), "
          f"margin {args.margin:.0f} MiB per GPU")
    print(f"Memory: {_describe_machine(machine)}")
    print()
    print(format_table(rec))
    print()
    if rec.recommended is not None:
        best = rec.recommended
        print(f"Recommended: {best.candidate.label} ({best.verdict.value}, headroom "
              f"{best.headroom.value})")
        print(f"  {best.command_line}")
    for note in rec.notes:
        print(f"note: {note}")
    return 0
