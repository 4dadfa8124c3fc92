"""The ``apex-studio`` entry point: the window without a sub-command, headless with one."""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import os
import sys
from collections.abc import Sequence

from apex_gui import __version__
from apex_gui.commands import COMMAND_MODULES
from apex_gui.core.gguf.reader import GGUFError
from apex_gui.core.jobs.run_store import RunStoreError
from apex_gui.core.plan.profiles import user_profiles

EXIT_USAGE = 2
#: Sub-commands that read profiles: a user profile that cannot be read is named once there.
PROFILE_COMMANDS = frozenset({"plan", "estimate", "detect", "quantize", "pipeline", "card"})


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apex-studio",
        description="Inspect, plan, quantize and evaluate APEX mixed-precision GGUF quants of "
                    "Mixture-of-Experts models. Without a sub-command, opens the window.")
    parser.add_argument("--version", action="version", version=f"apex-studio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


@functools.cache
def _commands() -> tuple[str, ...]:
    # Once per process: building the parser imports every command module.
    return tuple(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def _gui_args(argv: Sequence[str]) -> bool:
    """True when the arguments are for the window (no sub-command)."""
    return not argv or (argv[0] not in _commands() and argv[0] not in ("-h", "--help", "--version"))


def unknown_command(argv: Sequence[str]) -> str | None:
    """The refusal for a first word that is neither a sub-command nor a file to open
    (``apex-studio quantise x.gguf``), or None. A word with a dot or a slash, or that names
    something on disk, is a model for the window."""
    if not argv or argv[0].startswith("-"):
        return None
    word, commands = argv[0], _commands()
    if word in commands or os.path.exists(word) or any(c in word for c in "./\\"):
        return None
    close = difflib.get_close_matches(word.lower(), commands, n=1, cutoff=0.6)
    if close:
        return (f"apex-studio: error: unknown command {word!r} (did you mean {close[0]}?); "
                "see apex-studio --help")
    return (f"apex-studio: error: unknown command {word!r}; the commands are "
            f"{', '.join(commands)}; a model to open must be a file that exists")


def _warn_about_skipped_profiles(command: str) -> None:
    """One line per user profile that cannot be used (it is skipped, not fatal)."""
    for problem in user_profiles()[1]:
        print(f"apex-studio {command}: warning: skipped profile {problem}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    refusal = unknown_command(args_list)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return EXIT_USAGE
    if _gui_args(args_list):
        # start-up: Qt and the window load only when the window opens
        from apex_gui.app import main as gui_main
        return gui_main(args_list)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if args.command in PROFILE_COMMANDS:
        _warn_about_skipped_profiles(args.command)
    try:
        return int(args.func(args) or 0)
    except (GGUFError, UserError, FileNotFoundError, ValueError, RunStoreError) as error:
        print(f"apex-studio {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        # A read-only or full output folder, a vanished file: one line naming the file.
        where = f" {error.filename}" if error.filename else ""
        print(f"apex-studio {args.command}: error: cannot use{where}: "
              f"{error.strerror or error}; check the path, its permissions and free space",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"apex-studio {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `apex-studio inspect big.gguf | head`: the reader went away; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
