"""Checks the sub-commands share: numeric flags in range, paths safe to hand to a tool,
inputs that are regular files, model headers a tool would abort on, outputs that are safe.

Every refusal is a ``ValueError`` with one line naming the flag or file and what to do;
``apex_gui.cli`` prints it and exits with code 2, before anything is written or started.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from apex_gui.core.files.inputs import PLAN_CAP_BYTES, check_input_file, read_bounded_text
from apex_gui.core.files.outputs import check_output
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.types import FTYPE_DEFAULT_TYPE
from apex_gui.core.plan.tensor_type_file import parse_tensor_type_file

if TYPE_CHECKING:
    from apex_gui.core.gguf.model import ModelInfo

#: More threads than this is a typo (llama-quantize aborts after seconds with 100000).
MAX_THREADS = 4096
#: llama.cpp keeps the context in an int32 and no model trains past a few million tokens.
MAX_CONTEXT = 16 * 2**20


def int_in_range(value: int | None, flag: str, low: int, high: int | None = None,
                 what: str = "") -> None:
    """Refuse ``value`` outside [low, high] (None: not given, nothing to check)."""
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high:,}" if high is not None else f"at least {low}"
        raise ValueError(f"{flag} {value} is out of range: give {what or 'a value'} {bound}")


def float_in_range(value: float | None, flag: str, low: float, high: float,
                   what: str = "") -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < low or value > high:
        raise ValueError(f"{flag} {value} is out of range: give {what or 'a value'} from "
                         f"{low:g} to {high:g}")


def check_threads(args: argparse.Namespace) -> None:
    """``-t``: not given means the setting; given, it must be a real thread count."""
    int_in_range(getattr(args, "threads", None), "-t/--threads", 1, MAX_THREADS,
                 "a number of CPU threads")


def tool_path(path: str | os.PathLike[str]) -> Path:
    """A path a tool cannot read as an option: ``--help.gguf`` becomes absolute."""
    candidate = Path(path)
    return candidate.absolute() if str(candidate).startswith("-") else candidate


def check_model_file(path: str | os.PathLike[str], what: str = "model") -> Path:
    """A model argument that exists and is a regular file (not a folder, pipe or device)."""
    file_path = Path(path)
    try:
        info = os.stat(file_path)
    except FileNotFoundError:
        raise ValueError(f"{what} {file_path} does not exist; check the path (split models: "
                         "give the first shard)") from None
    except OSError as error:
        raise ValueError(f"{what} {file_path} cannot be opened ({error.strerror or error})") \
            from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{what} {file_path} is a folder; give the .gguf file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {file_path} is a pipe or a device, not a file; give a .gguf "
                         "file")
    return tool_path(file_path)


def check_inputs(files: Iterable[tuple[Path | str | None, str, int | None]]) -> None:
    """Each (path, flag, size cap) that is given must be a regular, readable file."""
    for path, flag, cap in files:
        if path is not None:
            check_input_file(path, flag, cap)


def check_model_header(model: ModelInfo) -> None:
    """Refuse a header llama.cpp would abort on: an expert count that does not match the
    expert tensors (``expert_count = 0`` made llama-quantize abort after loading)."""
    experts = {t.shape[2] for t in model.tensors
               if t.role is TensorRole.ROUTED_EXPERT and len(t.shape) == 3}
    if not experts:
        return
    declared = model.n_expert
    if declared not in experts:
        found = ", ".join(str(n) for n in sorted(experts))
        raise ValueError(f"{model.path}: the header says expert_count = {declared} but the "
                         f"expert tensors hold {found} experts; the header is corrupt: "
                         "convert the model again")
    used = model.n_expert_used
    if not 1 <= used <= declared:
        raise ValueError(f"{model.path}: the header says expert_used_count = {used} with "
                         f"{declared} experts; the header is corrupt: convert the model again")


def check_writable_output(output: str | os.PathLike[str], force: bool,
                          sources: Iterable[tuple[str | os.PathLike[str] | None, str]],
                          flag: str = "-o") -> Path:
    """:func:`check_output` for a tool's output (its folder is made when missing), made safe
    to pass as an argument."""
    return tool_path(check_output(output, sources=list(sources), force=force, flag=flag,
                                  make_folder=True))


def check_base_type(base_type: str, flag: str = "--type") -> str:
    if base_type.upper() not in FTYPE_DEFAULT_TYPE:
        raise ValueError(f"{flag} {base_type!r} is not a llama-quantize type; use one of "
                         f"{', '.join(FTYPE_DEFAULT_TYPE)}")
    return base_type.upper()


def check_tensor_type_file(path: str | os.PathLike[str], flag: str) -> Path:
    """A tensor-type file llama-quantize will accept: a bounded regular file of
    PATTERN=TYPE tokens whose patterns compile (it printed its usage otherwise)."""

    text = read_bounded_text(path, flag, PLAN_CAP_BYTES)
    entries = parse_tensor_type_file(text, f"{flag} {path}")
    if not entries:
        raise ValueError(f"{flag} {path} holds no PATTERN=TYPE line; write one per tensor "
                         "group, e.g. ffn_down_exps=q6_k")
    for pattern, _ in entries:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{flag} {path}: the pattern {pattern!r} is not a valid regular "
                             f"expression ({error}); fix that line") from None
    return tool_path(path)


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output file (default: refuse)")
