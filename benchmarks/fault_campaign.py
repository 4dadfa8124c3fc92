"""The fault campaign of issues 12 and 20, as a hostile user would run it, and its table per
surface.

Every case runs ``apex-studio`` (a sub-command, or the window up to its event loop and a
quit), or a short Python program for the Hub calls, in a fresh process with a deadline, in a
private folder with its own settings, data, cache and ``TMPDIR``; it is judged on tracebacks,
hangs, leftovers (partial outputs, temporary files, ``$TMPDIR/apex-*``), files it must not
change, its exit code and its peak memory (see ``faults/harness.py``).

Surfaces, each a module of ``faults/`` (whoever owns a surface adds its cases there):

- outputs, side inputs, model files, profiles and flags, kills and concurrency: issue 12's
  campaign (``files.py``, ``runs.py``);
- settings, run history, tools folders, RPC workers in the settings: the window's start-up
  inputs (``startup.py``);
- commands (every sub-command, the window's arguments), rpc workers (the command and the
  lists), split models (``commands.py``);
- sensitivity tables (``sensitivity.py``), tool runs (hung, endless, aborting tools, a
  stalled RPC worker: ``jobs.py``), sizes (``sizes.py``), hub endpoint (``hub.py``).

The tool runs use the real llama.cpp tools when they are installed, else a stand-in
``llama-quantize`` (tests/fakes.py); cases that need real tools are left out without them.

Usage: ``.venv/bin/python benchmarks/fault_campaign.py [--full] [--surfaces a,b] [--groups g]``
(``--full``: issue 12's sizes, every settings edit through the window, a locked history; the
default takes a few minutes). Exit code 0 when every count but the cases is 0 and every
sub-command was run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

# Imported in table order: each module registers its groups as it is imported.
from faults import files, runs, startup, commands, sensitivity, jobs, sizes, hub  # noqa: E402,F401,I001
from faults.harness import GROUPS, Campaign, Tally, table, total  # noqa: E402

__all__ = ["Campaign", "GROUPS", "Tally", "table", "total", "uncovered_commands", "main"]


def surfaces() -> list[str]:
    return list(dict.fromkeys(surface for surface, _ in GROUPS.values()))


def groups_of(wanted: list[str]) -> list[str]:
    return [name for name, (surface, _) in GROUPS.items() if surface in wanted]


def uncovered_commands(campaign: Campaign) -> list[str]:
    """Sub-commands of ``apex-studio`` that no case ran."""
    from apex_gui.cli import build_parser

    registered = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    return sorted(set(registered) - campaign.commands_seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="issue 12's sizes (320 bad-file runs, 2,000 mutated headers), every "
                             "settings edit through the window, a locked run history")
    parser.add_argument("--surfaces", help="comma-separated surfaces (default: all): "
                                           + ", ".join(surfaces()))
    parser.add_argument("--groups", help="comma-separated groups (default: all): "
                                         + ", ".join(GROUPS))
    args = parser.parse_args(argv)
    if args.groups:
        chosen = args.groups.split(",")
    elif args.surfaces:
        chosen = groups_of(args.surfaces.split(","))
    else:
        chosen = list(GROUPS)
    unknown = [name for name in chosen if name not in GROUPS]
    if unknown or not chosen:
        parser.error(f"unknown group or surface: {', '.join(unknown) or args.surfaces}")
    with tempfile.TemporaryDirectory(prefix="apex-faults-") as work:
        campaign = Campaign(Path(work), args.full)
        tallies = campaign.run_all(chosen, progress=lambda line: print(line, file=sys.stderr))
        tools = "real llama.cpp tools" if campaign.real_tools else "stand-in llama-quantize"
    print(table(tallies, tools))
    missing = uncovered_commands(campaign) if chosen == list(GROUPS) else []
    if missing:
        print(f"  ! sub-commands no case ran: {', '.join(missing)}")
    return 0 if total(tallies).failures == 0 and not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
