"""``apex-studio plan | estimate | detect``: APEX plans, exact sizes and profile detection."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from apex_gui.core.baselines import BASELINE_TYPES, baselines
from apex_gui.core.model import ModelInfo, open_model
from apex_gui.core.plan import PrecisionPlan, detect_profile, plan_from_profile, plan_from_tensor_type_file
from apex_gui.core.profiles import builtin_profiles, get_profile, quant_file_name
from apex_gui.core.roles import TensorRole
from apex_gui.core.units import GiB, format_gb, format_gib


def register(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="write the tensor-type file of a profile for a model")
    plan.add_argument("model")
    plan.add_argument("--profile", required=True, help="e.g. quality, i-quality, compact")
    plan.add_argument("-o", "--output", help="tensor-type file to write (default: print it)")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=run_plan)

    estimate = sub.add_parser("estimate", help="exact output size of a profile or plan file")
    estimate.add_argument("model")
    which = estimate.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile")
    which.add_argument("--plan", help="a tensor-type file (anchored or reference-style)")
    which.add_argument("--all", action="store_true", help="every built-in profile + baselines")
    estimate.add_argument("--base-type", default="Q6_K", help="base TYPE for --plan (default Q6_K)")
    estimate.add_argument("--no-baselines", action="store_true",
                          help="with --all: skip the llama-quantize --dry-run baselines")
    estimate.add_argument("--json", action="store_true")
    estimate.set_defaults(func=run_estimate)

    detect = sub.add_parser("detect", help="which APEX profile a quantized GGUF matches")
    detect.add_argument("quant")
    detect.add_argument("--json", action="store_true")
    detect.set_defaults(func=run_detect)


def plan_summary(plan: PrecisionPlan) -> dict:
    return {
        "profile": plan.profile.key if plan.profile else None,
        "origin": plan.origin,
        "base_type": plan.base_type,
        "total_bytes": plan.total_bytes(),
        "total_gb": round(plan.total_bytes() / 1e9, 3),
        "total_gib": round(plan.total_bytes() / GiB, 3),
        "bits_per_weight": round(plan.bits_per_weight(), 4),
        "bits_per_weight_by_role": {r.value: round(v, 3) for r, v in
                                    plan.bits_per_weight_by_role().items()},
        "needs_imatrix": plan.needs_imatrix(),
        "problems": [p.message for p in plan.problems(have_imatrix=bool(
            plan.profile and plan.profile.uses_imatrix))],
    }


def run_plan(args: argparse.Namespace) -> int:
    model = open_model(args.model)
    profile = get_profile(args.profile)
    plan = plan_from_profile(model, profile)
    output = args.output or "plan.txt"
    if args.output:
        plan.write_tensor_type_file(args.output)
    if args.json:
        data = plan_summary(plan)
        data["command"] = plan.command_line(output, quant_file_name(model.path, profile.label))
        data["tensor_types"] = {n: plan.effective_type(n) for n in plan.types}
        data["mtp_rule"] = profile.mtp if model.n_mtp_layers else None
        print(json.dumps(data, indent=2))
        return 0
    if not args.output:
        print(plan.tensor_type_file_text(), end="")
        return 0
    print(f"wrote {args.output}: {len(plan.pinned_types())} tensors pinned for APEX {profile.label}")
    print(f"predicted size {format_gb(plan.total_bytes())} ({plan.total_bytes():,} bytes), "
          f"{plan.bits_per_weight():.2f} bits per weight")
    print(plan.command_line(output, quant_file_name(model.path, profile.label)))
    if model.n_mtp_layers:
        rule = ("treated as one more edge layer" if profile.mtp == "edge"
                else f"every tensor at {profile.mtp}")
        print(f"MTP/nextn block(s) {model.n_layer}..{model.block_count - 1}: {rule} "
              f"(profile rule mtp = {profile.mtp!r}); bands count the {model.n_layer} ordinary blocks")
    for problem in plan.problems(have_imatrix=profile.uses_imatrix):
        print(f"note: {problem.message}")
    if profile.uses_imatrix:
        print("this profile uses an importance matrix: add --imatrix FILE "
              "(apex-studio imatrix MODEL -o imatrix.gguf)")
    return 0


def _role_column(plan: PrecisionPlan, role: TensorRole) -> str:
    value = plan.bits_per_weight_by_role().get(role)
    return f"{value:.2f}" if value is not None else "-"


def estimate_rows(model: ModelInfo, with_baselines: bool) -> tuple[list[dict], list[str]]:
    rows = []
    for profile in builtin_profiles().values():
        plan = plan_from_profile(model, profile)
        rows.append({"name": f"APEX {profile.label}", **plan_summary(plan),
                     "routed_bpw": _role_column(plan, TensorRole.ROUTED_EXPERT)})
    problems: list[str] = []
    if with_baselines:
        found, problems = baselines(model, BASELINE_TYPES)
        for base in found:
            rows.append({"name": base.name, "profile": None, "origin": f"llama.cpp {base.name}",
                         "total_bytes": base.total_bytes, "total_gb": round(base.total_bytes / 1e9, 3),
                         "total_gib": round(base.total_bytes / GiB, 3),
                         "bits_per_weight": round(base.bits_per_weight, 4), "routed_bpw": "-",
                         "needs_imatrix": base.name.startswith("IQ2"), "problems": []})
    return rows, problems


def run_estimate(args: argparse.Namespace) -> int:
    model = open_model(args.model)
    if args.all:
        rows, problems = estimate_rows(model, not args.no_baselines)
        if args.json:
            print(json.dumps({"model": str(model.path), "rows": rows, "problems": problems}, indent=2))
            return 0
        print(f"{model.name} ({model.architecture}, {model.n_layer} layers, "
              f"{model.n_expert} experts), source {format_gb(model.file_size)}")
        print(f"{'quant':<22} {'size GB':>9} {'size GiB':>9} {'bytes':>16} {'bpw':>6} {'experts':>8}")
        for row in rows:
            print(f"{row['name']:<22} {row['total_gb']:>9.2f} {row['total_gib']:>9.2f} "
                  f"{row['total_bytes']:>16,} {row['bits_per_weight']:>6.2f} {row['routed_bpw']:>8}")
        for problem in problems:
            print(f"note: {problem}")
        return 0
    if args.profile:
        plan = plan_from_profile(model, get_profile(args.profile))
    else:
        profile = None
        plan = plan_from_tensor_type_file(model, Path(args.plan), args.base_type, profile)
    data = plan_summary(plan)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{plan.origin}: {format_gb(plan.total_bytes())} = {format_gib(plan.total_bytes())} "
          f"({plan.total_bytes():,} bytes), {plan.bits_per_weight():.2f} bits per weight")
    for role, bpw in data["bits_per_weight_by_role"].items():
        print(f"  {role:<24} {bpw:6.2f} bpw")
    for message in data["problems"]:
        print(f"note: {message}")
    return 0


def run_detect(args: argparse.Namespace) -> int:
    model = open_model(args.quant)
    matches = detect_profile(model)
    best = matches[0]
    if args.json:
        print(json.dumps({"model": str(model.path), "imatrix": model.looks_imatrix_quantized,
                          "matches": [{"profile": m.profile.key, "label": m.profile.label,
                                       "exact": m.exact, "differing_share": m.differing_share,
                                       "differing_tensors": len(m.differences)} for m in matches],
                          "differences": {n: {"file": a, "profile": b}
                                          for n, (a, b) in best.differences.items()}}, indent=2))
        return 0
    print(f"{model.path.name}: {best.describe()}")
    if not best.exact:
        for name, (actual, expected) in list(best.differences.items())[:40]:
            print(f"  {name:<40} file {actual:<8} {best.profile.label} {expected}")
        if len(best.differences) > 40:
            print(f"  ... and {len(best.differences) - 40} more")
        print("next closest: " + ", ".join(f"{m.profile.label} ({m.differing_share:.1%})"
                                           for m in matches[1:4]))
    return 0
