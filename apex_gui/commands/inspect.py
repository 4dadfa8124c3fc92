"""``apex-studio inspect MODEL.gguf``: summary plus a per-layer precision table."""

from __future__ import annotations

import argparse
import json
import os
import sys

from apex_gui.core.gguf.model import FileKind, MixerKind, ModelInfo, open_model
from apex_gui.core.gguf.roles import TensorRole, kind_label
from apex_gui.core.gguf.summary import summary_dict
from apex_gui.core.units import format_params, format_size


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("inspect", help="summarise a GGUF and show its per-layer types")
    parser.add_argument("model", help="a .gguf file (any shard of a split model)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--tensors", action="store_true", help="list every tensor too")
    parser.set_defaults(func=run)


# Short names for the per-layer table: the first word of "multi-head latent attention"
# would read as plain multi-head attention.
MIXER_SHORT = {
    MixerKind.FULL_ATTENTION: "full", MixerKind.SLIDING_WINDOW: "swa", MixerKind.MLA: "mla",
    MixerKind.LINEAR_ATTENTION: "linear", MixerKind.SHORT_CONV: "conv", MixerKind.NONE: "none",
}


def layer_rows(model: ModelInfo) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-layer table: one row per block, one column per kind."""
    kinds = model.kinds
    # One pass over the tensors: asking tensors_in_layer per layer costs layers x tensors.
    types_by_layer: dict[int, dict[str, str]] = {}
    for tensor in model.tensors:
        if tensor.layer is not None and tensor.is_weight:
            types_by_layer.setdefault(tensor.layer, {})[tensor.kind] = tensor.type_name
    rows = []
    for layer in model.layers:
        by_kind = types_by_layer.get(layer.index, {})
        label = layer.label
        rows.append([label, MIXER_SHORT[layer.mixer]] + [by_kind.get(k, "-") for k in kinds])
    return ["layer", "mixer"] + [kind_label(k) for k in kinds], rows


def run(args: argparse.Namespace) -> int:
    model = open_model(args.model)
    try:
        return _print_model(model, args)
    except BrokenPipeError:
        # `apex-studio inspect big.gguf | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _print_model(model: ModelInfo, args: argparse.Namespace) -> int:
    if args.json:
        data = summary_dict(model)
        if model.file_kind is FileKind.MODEL:
            header, rows = layer_rows(model)
            data["layer_table"] = {"columns": header, "rows": rows}
        if args.tensors or model.file_kind is not FileKind.MODEL:
            data["tensors"] = [{"name": t.name, "layer": t.layer, "role": t.role.value,
                                "shape": list(t.shape), "type": t.type_name, "bytes": t.nbytes,
                                "bpw": round(t.bits_per_weight, 4)} for t in model.tensors]
        print(json.dumps(data, indent=2))
        return 0
    print(render_text(model, args.tensors))
    return 0


def render_text(model: ModelInfo, with_tensors: bool = False) -> str:
    info = summary_dict(model)
    lines = [f"{model.path}", f"  kind          {info['file_kind']}",
             f"  architecture  {model.architecture}   name: {model.name}",
             f"  size          {format_size(model.file_size)} ({model.file_size:,} bytes) "
             f"in {len(model.paths)} file(s), {len(model.tensors)} tensors"]
    if model.file_kind is FileKind.IMATRIX:
        imx = info["imatrix"]
        lines.append(f"  datasets      {', '.join(imx['datasets']) or '-'}")
        lines.append(f"  chunks        {imx['chunk_count']} x {imx['chunk_size']} tokens")
        lines.append(f"  covers        {imx['covered_tensors']} tensors")
        return "\n".join(lines)
    if model.file_kind is FileKind.VISION_PROJECTOR:
        lines.append(f"  tensor data   {format_size(model.tensor_bytes)}: load it beside the "
                     "model with --mmproj")
        return "\n".join(lines)
    mixers = ", ".join(f"{n} {k}" for k, n in info["mixers"].items())
    lines += [
        f"  layers        {model.n_layer}" + (f" + {model.n_mtp_layers} MTP/nextn" if model.n_mtp_layers else "")
        + (f" ({model.n_leading_dense} leading dense)" if model.n_leading_dense else ""),
        f"  mixers        {mixers}",
        f"  experts       {model.n_expert} routed, {model.n_expert_used} used per token, "
        f"{model.n_expert_shared} shared",
        f"  attention     {model.n_head} heads, {model.n_head_kv} KV heads, head dim "
        f"{model.head_dim_k}/{model.head_dim_v}"
        + (f", MLA q_lora {model.q_lora_rank} kv_lora {model.kv_lora_rank}" if model.kv_lora_rank else "")
        + (f", sliding window {model.sliding_window}" if model.sliding_window else ""),
        f"  context       {model.context_length:,}   vocabulary {model.vocab_size:,}",
        f"  parameters    {format_params(model.total_params)} total, "
        f"{format_params(model.active_params)} active per token",
        f"  file type     {model.file_type}, {model.bits_per_weight:.2f} bits per weight"
        + (", imatrix-quantized" if model.looks_imatrix_quantized else ""),
        "  types         " + ", ".join(f"{k} {format_size(v)}" for k, v in info["types"].items()),
        "",
    ]
    header, rows = layer_rows(model)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    present = [kind for kind in MixerKind if any(layer.mixer is kind for layer in model.layers)]
    lines.append("mixer: " + ", ".join(f"{MIXER_SHORT[kind]} = {kind.value}" for kind in present))
    others = [t for t in model.tensors if t.layer is None and t.role is not TensorRole.NORM]
    if others:
        lines.append("")
        lines.append("non-layer: " + ", ".join(f"{t.kind} {t.type_name}" for t in others))
    if with_tensors:
        lines.append("")
        for t in model.tensors:
            lines.append(f"{t.name:<44} {t.role.value:<22} {str(list(t.shape)):<24} "
                         f"{t.type_name:<8} {t.nbytes:>14,} {t.bits_per_weight:6.2f} bpw")
    return "\n".join(lines)
