"""``apex-studio synth`` and ``apex-studio twin``: synthetic models for demos and tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from apex_gui.commands.arguments import add_force, int_in_range
from apex_gui.core.files.outputs import check_output, writing
from apex_gui.core.fixtures.synthetic import PRESETS, preset, write_synthetic_model


def register(sub: argparse._SubParsersAction) -> None:
    synth = sub.add_parser("synth", help="write a small runnable synthetic MoE GGUF")
    synth.add_argument("preset", choices=sorted(PRESETS), help="which synthetic model")
    synth.add_argument("-o", "--output", required=True, help="output .gguf path")
    synth.add_argument("--json", action="store_true", help="print {\"files\": [...]} as JSON")
    add_force(synth)
    synth.set_defaults(func=run_synth)

    twin = sub.add_parser("twin", help="write a sparse shape twin of a big model (header only)")
    twin.add_argument("layout", help="layout name; `apex-studio twin list` lists them")
    twin.add_argument("-o", "--output", help="output .gguf path")
    twin.add_argument("--splits", type=int, default=1, help="write N split shards")
    twin.add_argument("--json", action="store_true", help="print {\"files\": [...]} as JSON")
    add_force(twin)
    twin.set_defaults(func=run_twin)


def _print_files(args: argparse.Namespace, files: list[str], key: str = "files") -> None:
    """One path a line, or (--json, as every command takes) one JSON object."""
    if getattr(args, "json", False):
        print(json.dumps({key: files}, indent=2))
    else:
        for name in files:
            print(name)


def run_synth(args: argparse.Namespace) -> int:
    spec = preset(args.preset)
    with writing(args.output, force=args.force) as temporary:
        write_synthetic_model(temporary, spec)
    _print_files(args, [str(args.output)])
    return 0


def run_twin(args: argparse.Namespace) -> int:
    # start-up: the twin writer (and gguf) load only when a twin is written
    from apex_gui.core.fixtures.twin_layouts import TWIN_LAYOUTS
    from apex_gui.core.fixtures.twins import write_shape_twin

    if args.layout == "list":
        _print_files(args, list(TWIN_LAYOUTS), "layouts")
        return 0
    if args.layout not in TWIN_LAYOUTS:
        raise ValueError(f"unknown twin layout {args.layout!r}; known: {', '.join(TWIN_LAYOUTS)}")
    if not args.output:
        raise ValueError("give the output path with -o")
    int_in_range(args.splits, "--splits", 1, 9999, "a number of shards")
    if args.splits == 1:
        with writing(args.output, force=args.force) as temporary:
            write_shape_twin(temporary, args.layout)
        _print_files(args, [str(args.output)])
        return 0
    # start-up: the twin writer (and gguf) load only when a twin is written
    from apex_gui.core.fixtures.twins import split_path

    shards = [split_path(Path(args.output), i, args.splits) for i in range(args.splits)]
    for shard in shards:  # a twin is a sparse file of hundreds of GB: never over a model
        check_output(shard, force=args.force)
    try:
        _print_files(args, [str(p) for p in write_shape_twin(args.output, args.layout,
                                                              n_splits=args.splits)])
    except BaseException:
        for shard in shards:
            shard.unlink(missing_ok=True)
        raise
    return 0
