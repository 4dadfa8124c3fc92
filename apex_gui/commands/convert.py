"""``apex-studio convert CHECKPOINT -o OUT.gguf``: a Hugging Face folder to a BF16/F16 GGUF
with llama.cpp's own converter; ``apex-studio convert --setup`` fetches the converter and
installs its Python needs (the ``convert`` extra, PyTorch as its CPU build)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from apex_gui.commands.arguments import add_force, check_writable_output
from apex_gui.commands.pipeline import execute
from apex_gui.core.convert.checkpoint import CheckpointError, open_checkpoint
from apex_gui.core.convert.converter import (converter_problem, fetch_sdist, find_converter,
                                             install_commands, missing_modules)
from apex_gui.core.convert.job import ConvertJob
from apex_gui.core.jobs.pipeline import Pipeline


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert a Hugging Face checkpoint folder to a "
                                            "BF16/F16 GGUF (llama.cpp's converter)")
    parser.add_argument("checkpoint", nargs="?", help="folder with config.json, *.safetensors "
                                                      "and the tokenizer files")
    parser.add_argument("-o", "--output", help="output GGUF (default: next to the folder)")
    parser.add_argument("--outtype", choices=("bf16", "f16"),
                        help="default: BF16 for a BF16 checkpoint, else F16")
    parser.add_argument("--mmproj", action="store_true",
                        help="convert the multimodal projector (its own file) instead")
    parser.add_argument("--pre-tokenizer", default="", metavar="NAME",
                        help="for a tokenizer this llama.cpp's converter does not know yet")
    parser.add_argument("--setup", action="store_true",
                        help="fetch llama.cpp's converter and install its Python needs")
    parser.add_argument("--llama-cpp-dir", help="a llama.cpp folder whose converter to use")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_force(parser)
    parser.set_defaults(func=run)


def run_setup() -> int:
    if missing_modules():
        for command in install_commands():
            print("$ " + " ".join(command), file=sys.stderr, flush=True)
            if subprocess.run(command).returncode != 0:
                raise ValueError("installing the converter's needs failed (see pip's message "
                                 "above); run the command again when the network is back")
    converter = find_converter()
    if converter is None:
        fetch_sdist()
        converter = find_converter()
    print(f"converter: {converter.script if converter else 'missing'} "
          f"({converter.origin if converter else ''})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.setup:
        return run_setup()
    if not args.checkpoint:
        raise ValueError("give the checkpoint folder to convert (or --setup)")
    try:
        checkpoint = open_checkpoint(Path(args.checkpoint))
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    converter = find_converter(Path(args.llama_cpp_dir) if args.llama_cpp_dir else None)
    problem = converter_problem(converter)
    if problem or converter is None:
        raise ValueError(problem or "no converter")
    output_type = args.outtype or checkpoint.default_output_type()
    folder = checkpoint.folder.resolve()
    default = folder.parent / (("mmproj-" if args.mmproj else "")
                               + f"{folder.name}-{output_type.upper()}.gguf")
    output = check_writable_output(args.output or default, args.force,
                                   [(p, "checkpoint") for p in checkpoint.weight_files])
    job = ConvertJob(checkpoint=folder, output_path=output, converter=converter.folder,
                     output_type=output_type, mmproj=args.mmproj,
                     pre_tokenizer=args.pre_tokenizer)
    args.threads, args.no_repack = None, False  # execute() reads them; the converter has none
    return execute(Pipeline.from_jobs([("convert", job)]), args,
                   [f"converter: {converter.script} ({converter.origin})"])
