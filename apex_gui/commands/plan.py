"""``apex-studio plan | estimate | detect``: APEX plans, exact sizes and profile detection."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from apex_gui.commands.arguments import (add_force, check_base_type, check_inputs, check_model_file,
                        check_model_header, check_tensor_type_file)
from apex_gui.core.files.outputs import write_text_output
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.types import IMATRIX_REQUIRED, tensor_bytes
from apex_gui.core.jobs.baselines import BASELINE_TYPES, baselines
from apex_gui.core.jobs.quantize import command_line
from apex_gui.core.plan.detect import detect_profile
from apex_gui.core.plan.precision import PrecisionPlan, plan_from_profile
from apex_gui.core.plan.profiles import builtin_profiles, get_profile, quant_file_name
from apex_gui.core.plan.tensor_type_file import plan_from_tensor_type_file
from apex_gui.core.units import format_size, format_size_figure, in_unit, size_unit


def register(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="write the tensor-type file of a profile for a model")
    plan.add_argument("model")
    plan.add_argument("--profile", required=True, help="e.g. quality, i-quality, compact")
    plan.add_argument("-o", "--output", help="tensor-type file to write (default: print it)")
    plan.add_argument("--imatrix", metavar="FILE",
                      help="importance matrix to quantize with: goes into the command, and the "
                           "size counts what llama-quantize records about it")
    plan.add_argument("--json", action="store_true")
    add_force(plan)
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
        "total_gb": round(in_unit(plan.total_bytes(), "GB"), 3),
        "total_gib": round(in_unit(plan.total_bytes(), "GiB"), 3),
        "bits_per_weight": round(plan.bits_per_weight(), 4),
        "bits_per_weight_by_role": {r.value: round(v, 3) for r, v in
                                    plan.bits_per_weight_by_role().items()},
        "needs_imatrix": plan.needs_imatrix(),
        "problems": [p.message for p in plan.problems(have_imatrix=bool(
            plan.profile and plan.profile.uses_imatrix))],
    }


def _open_checked(path: str) -> ModelInfo:
    model = open_model(check_model_file(path))
    check_model_header(model)
    return model


def run_plan(args: argparse.Namespace) -> int:
    model = _open_checked(args.model)
    profile = get_profile(args.profile)
    check_inputs([(args.imatrix, "--imatrix", None)])
    plan = plan_from_profile(model, profile)
    plan.imatrix = args.imatrix
    output = args.output or "plan.txt"
    if args.output:
        # Never the source model, its imatrix, or (without --force) any existing file.
        write_text_output(args.output, plan.tensor_type_file_text(), force=args.force,
                          sources=[(p, "source model") for p in model.paths]
                          + [(args.imatrix, "importance matrix")])
    if args.json:
        data = plan_summary(plan)
        data["command"] = command_line(plan, output, quant_file_name(model.path, profile.label))
        data["tensor_types"] = {n: plan.effective_type(n) for n in plan.types}
        data["mtp_rule"] = profile.mtp if model.n_mtp_layers else None
        print(json.dumps(data, indent=2))
        return 0
    if not args.output:
        print(plan.tensor_type_file_text(), end="")
        # The file goes to stdout (redirectable); what to do with it goes to stderr, so a
        # terminal shows the size and the command after the patterns and `> plan.txt` stays clean.
        print(f"predicted size {format_size(plan.total_bytes())} ({plan.total_bytes():,} bytes), "
              f"{plan.bits_per_weight():.2f} bits per weight; save this output as {output} "
              f"(or use -o) and quantize with:\n"
              f"{command_line(plan, output, quant_file_name(model.path, profile.label))}",
              file=sys.stderr)
        return 0
    print(f"wrote {args.output}: {len(plan.pinned_types())} tensors pinned for APEX {profile.label}")
    print(f"predicted size {format_size(plan.total_bytes())} ({plan.total_bytes():,} bytes), "
          f"{plan.bits_per_weight():.2f} bits per weight")
    print(command_line(plan, output, quant_file_name(model.path, profile.label)))
    if model.n_mtp_layers:
        rule = ("treated as one more edge layer" if profile.mtp == "edge"
                else f"every tensor at {profile.mtp}")
        print(f"MTP/nextn block(s) {model.n_layer}..{model.block_count - 1}: {rule} "
              f"(profile rule mtp = {profile.mtp!r}); bands count the {model.n_layer} ordinary blocks")
    for problem in plan.problems(have_imatrix=profile.uses_imatrix or bool(plan.imatrix)):
        print(f"note: {problem.message}")
    if profile.uses_imatrix and not plan.imatrix:
        print("this profile uses an importance matrix: add --imatrix FILE "
              "(apex-studio imatrix MODEL -o imatrix.gguf)")
    return 0


def _imatrix_column(needs: bool, uses: bool) -> str | None:
    """"required" when llama-quantize refuses the types without one, "used" when the
    profile asks for one by choice (I- variants), else None."""
    if needs:
        return "required"
    return "used" if uses else None


def _types_summary(model: ModelInfo, types: dict[str, str]) -> tuple[float | None, bool]:
    """(routed-expert bits per weight, whether an imatrix is required) for per-tensor types."""
    routed_bytes = routed_params = 0
    needs = False
    for tensor in model.tensors:
        type_name = types.get(tensor.name, tensor.type_name)
        if tensor.role is TensorRole.ROUTED_EXPERT:
            routed_bytes += tensor_bytes(type_name, tensor.shape)
            routed_params += tensor.n_elements
        if type_name in IMATRIX_REQUIRED and tensor.role not in (TensorRole.EMBEDDING,
                                                                 TensorRole.OUTPUT):
            needs = True
    return (round(routed_bytes * 8 / routed_params, 4) if routed_params else None), needs


def estimate_rows(model: ModelInfo, with_baselines: bool) -> tuple[list[dict], list[str]]:
    rows = []
    for profile in builtin_profiles().values():
        plan = plan_from_profile(model, profile)
        routed = plan.bits_per_weight_by_role().get(TensorRole.ROUTED_EXPERT)
        rows.append({"name": f"APEX {profile.label}", **plan_summary(plan),
                     "routed_bpw": round(routed, 4) if routed is not None else None,
                     "imatrix": _imatrix_column(plan.needs_imatrix(), profile.uses_imatrix)})
    problems: list[str] = []
    if with_baselines:
        found, problems = baselines(model, BASELINE_TYPES)
        for base in found:
            routed, needs = _types_summary(model, base.types)
            rows.append({"name": base.name, "profile": None, "origin": f"llama.cpp {base.name}",
                         "total_bytes": base.total_bytes, "total_gb": round(in_unit(base.total_bytes, "GB"), 3),
                         "total_gib": round(in_unit(base.total_bytes, "GiB"), 3),
                         "bits_per_weight": round(base.bits_per_weight, 4), "routed_bpw": routed,
                         "needs_imatrix": needs, "imatrix": _imatrix_column(needs, False),
                         "problems": []})
    return rows, problems


def render_estimate_table(model: ModelInfo, rows: list[dict], problems: list[str]) -> str:
    """The ``estimate --all`` table: one row per profile and baseline, sizes aligned."""
    # Demo and test models are a few MB: GB columns would read 0.00 on every row.
    unit, scale = size_unit(model.file_size)
    binary_unit, binary_scale = size_unit(model.file_size, binary=True)
    layers = f"{model.n_layer} layers" + (f" + {model.n_mtp_layers} MTP" if model.n_mtp_layers else "")
    shared = f" + {model.n_expert_shared} shared" if model.n_expert_shared else ""
    lines = [f"{model.name} ({model.architecture}, {layers}, {model.n_expert} experts{shared}); "
             f"source {model.file_type}, {format_size(model.file_size)}",
             "",
             f"{'quant':<22} {'size ' + unit:>10} {'size ' + binary_unit:>10} {'bytes':>17} "
             f"{'bpw':>6} {'experts bpw':>12}  imatrix"]
    previous_apex = True
    for row in rows:
        is_apex = row["name"].startswith("APEX ")
        if previous_apex and not is_apex:
            lines.append("")  # baselines below the profiles
        previous_apex = is_apex
        routed = f"{row['routed_bpw']:.2f}" if row["routed_bpw"] is not None else "-"
        lines.append(f"{row['name']:<22} {format_size_figure(row['total_bytes'], scale):>10} "
                     f"{format_size_figure(row['total_bytes'], binary_scale):>10} "
                     f"{row['total_bytes']:>17,} "
                     f"{row['bits_per_weight']:>6.2f} {routed:>12}  {row['imatrix'] or '-'}")
    lines += ["", "bpw: bits per weight over every tensor; experts bpw: routed experts only",
              "imatrix: required = llama-quantize refuses these types without one; "
              "used = the profile asks for one"]
    lines += [f"note: {problem}" for problem in problems]
    return "\n".join(lines)


def run_estimate(args: argparse.Namespace) -> int:
    model = _open_checked(args.model)
    if args.plan:
        check_base_type(args.base_type, "--base-type")
        check_tensor_type_file(args.plan, "--plan")
    if args.all:
        rows, problems = estimate_rows(model, not args.no_baselines)
        if args.json:
            print(json.dumps({"model": str(model.path), "rows": rows, "problems": problems}, indent=2))
            return 0
        print(render_estimate_table(model, rows, problems))
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
    print(f"{plan.origin}: {format_size(plan.total_bytes())} = {format_size(plan.total_bytes(), binary=True)} "
          f"({plan.total_bytes():,} bytes), {plan.bits_per_weight():.2f} bits per weight")
    for role, bpw in data["bits_per_weight_by_role"].items():
        print(f"  {role:<24} {bpw:6.2f} bpw")
    for message in data["problems"]:
        print(f"note: {message}")
    return 0


def run_detect(args: argparse.Namespace) -> int:
    model = open_model(check_model_file(args.quant, "quant"))
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
    if model.file_type in ("F32", "F16", "BF16"):
        # Every tensor "differs" from every profile: a list of 40 says nothing.
        print(f"{model.path.name}: not quantized ({model.file_type}); there is no profile to "
              "detect. Plan one with `apex-studio plan MODEL --profile KEY`.")
        return 0
    print(f"{model.path.name}: {best.describe()}")
    if not best.exact:
        order = {t.name: i for i, t in enumerate(model.tensors)}  # file order, not hash order
        differences = sorted(best.differences.items(), key=lambda item: order.get(item[0], 0))
        for name, (actual, expected) in differences[:40]:
            print(f"  {name:<40} file {actual:<8} {best.profile.label} {expected}")
        if len(best.differences) > 40:
            print(f"  ... and {len(best.differences) - 40} more")
        print("next closest: " + ", ".join(f"{m.profile.label} ({m.differing_share:.1%})"
                                           for m in matches[1:4]))
    return 0
