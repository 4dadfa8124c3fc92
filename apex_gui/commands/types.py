"""``apex-studio types``: the ggml type table as llama-quantize applies it."""

from __future__ import annotations

import argparse
import json

from apex_gui.core.gguf.types import PLAN_TYPES, TYPES, GGMLType


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("types", help="ggml types: block size, bits per weight, imatrix "
                                          "need and llama-quantize's fallback chain")
    parser.add_argument("--all", action="store_true", help="every ggml type, not only plan types")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def fallback_chain(kind: GGMLType) -> list[str]:
    """What a row that does not divide the block becomes, step by step, ending in F16."""
    chain: list[str] = []
    current = kind
    while current.fallback is not None:
        current = current.fallback
        chain.append(current.name)
    if kind.quantized and (chain or kind.block_size <= 32):
        chain.append("F16")  # when even the fallback's block does not divide the row
    # A wide-block type with no fallback (Q1_0, NVFP4): llama-quantize stops with an error.
    return chain


def _fallback_text(kind: GGMLType, chain: list[str]) -> str:
    if chain:
        return " -> ".join(chain)
    if kind.quantized:
        return "none: llama-quantize stops with an error"
    return "-"


def run(args: argparse.Namespace) -> int:
    kinds = list(TYPES.values()) if args.all else [TYPES[name] for name in PLAN_TYPES]
    rows = [{"type": k.name, "block_size": k.block_size, "bytes_per_block": k.block_bytes,
             "bits_per_weight": round(k.bits_per_weight, 4), "needs_imatrix": k.needs_imatrix,
             "fallback": fallback_chain(k)} for k in kinds]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'type':<8} {'block':>5} {'bytes':>5} {'bpw':>6}  {'imatrix':<8} fallback when the row "
          "length does not divide the block")
    for row in rows:
        print(f"{row['type']:<8} {row['block_size']:>5} {row['bytes_per_block']:>5} "
              f"{row['bits_per_weight']:>6.3f}  {'needed' if row['needs_imatrix'] else '-':<8} "
              + _fallback_text(TYPES[row["type"]], row["fallback"]))
    return 0
