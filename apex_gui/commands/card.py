"""``apex-studio card SOURCE.gguf``: the model card (README) of the measured APEX quants."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apex_gui.commands.arguments import add_force, check_inputs, check_model_file
from apex_gui.core.files.outputs import check_output, write_text_output
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.hub.publish import repo_name_for, upload_plan
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.plan.profiles import all_profiles
from apex_gui.core.report.card_facts import SensitivitySummary, model_facts, quant_recipes
from apex_gui.core.report.model_card import build_card_inputs, render_model_card
from apex_gui.core.report.results import collect_results
from apex_gui.core.units import format_size


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("card", help="write a model card (README.md) for the APEX quants "
                                         "made and measured from a source model")
    parser.add_argument("source", help="the F16/BF16 model the quants were made from")
    parser.add_argument("--repo", help="USER/NAME of the Hugging Face repository "
                                       "(default USER/<Model>-APEX-GGUF)")
    parser.add_argument("--name", help="model name on the card (default: the file's general.name)")
    parser.add_argument("--base-model", default="", help="the original model's repository id")
    parser.add_argument("--mmproj", help="a vision projector to list beside the quants")
    parser.add_argument("-o", "--output", help="write the card here (default: print it)")
    parser.add_argument("--files", action="store_true",
                        help="also list the files an upload would send")
    add_force(parser)
    parser.set_defaults(func=run)


def _sensitivity(model: ModelInfo, name: str) -> SensitivitySummary | None:
    """The model's measured table for the card (and the upload), when there is one."""
    # start-up: the sensitivity modules load only when a card is written
    from apex_gui.core.quality.card_table import sensitivity_summary
    from apex_gui.core.quality.known import find_sensitivity

    found = find_sensitivity(model)
    if found.problem:
        print(f"apex-studio card: note: {found.problem}", file=sys.stderr)
    if found.table is None or found.path is None:
        return None
    return sensitivity_summary(found.table, model, found.path, name)


def run(args: argparse.Namespace) -> int:
    model = open_model(check_model_file(args.source, "source model"))
    check_inputs([(args.mmproj, "--mmproj", None)])
    sources = [(p, "source model") for p in model.paths] + [(args.mmproj, "vision projector")]
    if args.output:  # refused before the run history is read, not after
        check_output(args.output, sources=sources, force=args.force)
    name = args.name or model.name
    store = RunStore.for_reading()  # only read: a read-only history is fine
    try:
        rows = collect_results(store, reference=model.path, family_only=True)
        recipes = quant_recipes(store)
    finally:
        store.close()
    if not any(row.kind == "apex" for row in rows):
        raise ValueError(f"no measured APEX quant of {model.path.name} in the run history; run "
                         f"`apex-studio pipeline {model.path} --profiles quality --eval --kld` first")
    mmproj = (Path(args.mmproj).name, Path(args.mmproj).stat().st_size) if args.mmproj else None
    inputs, names = build_card_inputs(
        rows, recipes, repo_id=args.repo or f"USER/{repo_name_for(name)}", model_name=name,
        profiles=all_profiles(), facts=model_facts(model), base_model=args.base_model,
        mmproj=mmproj, sensitivity=_sensitivity(model, name))
    card = render_model_card(inputs)
    if args.output:
        target = write_text_output(args.output, card, force=args.force, sources=sources)
        print(f"wrote {target}")
    else:
        print(card)
    if args.files:
        files = list(names.items()) + ([(args.mmproj, Path(args.mmproj).name)] if args.mmproj else [])
        plan = upload_plan(inputs.repo_id, files, readme=card)
        for item in plan.items:
            print(f"  {item.path_in_repo}  ({format_size(item.size_bytes)})")
        for problem in plan.problems:
            print(f"  problem: {problem}")
    return 0
