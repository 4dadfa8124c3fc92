"""``apex-studio tools``: where each llama.cpp tool was found."""

from __future__ import annotations

import argparse
import json

from apex_gui.core.jobs.devices import DEVICE_TOOLS, DeviceListing, list_devices
from apex_gui.core.jobs.tools import (
    GPU_BUILD_HINT, REQUIRED_TOOLS, LlamaTools, missing_tool_message,
)
from apex_gui.core.settings import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tools", help="show where each llama.cpp tool was found")
    parser.add_argument("--llama-cpp-dir", help="a llama.cpp build folder to look in first")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--check", action="store_true",
                        help="smoke-test the tools on this CPU (a few seconds): quantize a tiny "
                             "model, run perplexity on it with and without repacking, start "
                             "every tool; exit 1 when one is broken")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="with --check: seconds each tool run may take before it counts as "
                             "hung (default 120; each takes about one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    folder = args.llama_cpp_dir or load_settings().llama_cpp_dir or None
    tools = LlamaTools(folder)
    if args.check:
        # start-up: the tools check loads only when it runs
        from apex_gui.core.jobs.tools_check import RUN_TIME_LIMIT_S

        limit = args.time_limit if args.time_limit is not None else RUN_TIME_LIMIT_S
        if not 0 < limit < 10**6:  # also refuses nan and inf
            raise ValueError(f"--time-limit {args.time_limit:g} is not a number of seconds "
                             "between 0 and 1000000; give e.g. --time-limit 60")
        return _check(tools, args.json, limit)
    report = tools.report()
    listings = _device_listings(tools, report)
    if args.json:
        rows = []
        for r in report:
            row = {"tool": r.name, "executable": r.executable,
                   "path": str(r.path) if r.path else None, "origin": r.origin,
                   "version": r.version}
            if r.name in listings:
                row["gpu_backends"] = list(listings[r.name].backends)
                row["devices"] = [d.__dict__ for d in listings[r.name].devices]
                row["devices_error"] = listings[r.name].error
            rows.append(row)
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r.executable) for r in report)
        for r in report:
            where = f"{r.path}  [{r.origin}, {r.version or 'version unknown'}]" if r.found \
                else "MISSING"
            print(f"{r.executable:<{width}}  {where}")
        shown: set[object] = set()
        for name, listing in listings.items():
            if id(listing) in shown:
                continue
            shown.add(id(listing))
            users = [r.executable for r in report if listings.get(r.name) is listing]
            print(f"\nDevices seen by {', '.join(users)} ({listing.folder}):")
            for line in listing.lines():
                print(f"  {line}")
        missing = [r for r in report if not r.found and r.name in REQUIRED_TOOLS]
        if missing:
            print()
            print(missing_tool_message(missing[0].executable, tools.configured_dir))
        else:
            print()
            print(GPU_BUILD_HINT)
    return 1 if any(not r.found and r.name in REQUIRED_TOOLS for r in report) else 0


def _check(tools: LlamaTools, as_json: bool, time_limit_s: float) -> int:
    # start-up: the tools check loads only when it runs
    from apex_gui.core.jobs.tools_check import run_tools_check

    report = run_tools_check(tools, time_limit_s=time_limit_s)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    width = max((len(c.tool) for c in report.checks), default=0)
    for check in report.checks:
        state = "working" if check.working else "BROKEN "
        print(f"{check.tool:<{width}}  {state}  {check.detail}")
        if check.fix:
            print(f"{'':<{width}}  fix: {check.fix}")
    variant = f"; CPU variant {report.cpu_variant}" if report.cpu_variant else ""
    print(f"\n{report.summary()} (checked in {report.seconds:.1f} s{variant})")
    return 0 if report.ok else 1


def _device_listings(tools: LlamaTools, report: list) -> dict[str, DeviceListing]:  # type: ignore[type-arg]
    """The devices each tool that runs models sees: one ``--list-devices`` per tools folder."""
    by_folder: dict[object, DeviceListing] = {}
    listings: dict[str, DeviceListing] = {}
    for location in report:
        if location.name not in DEVICE_TOOLS or location.path is None:
            continue
        folder = location.path.parent
        if folder not in by_folder:
            by_folder[folder] = list_devices(tools, location.name)
        listings[location.name] = by_folder[folder]
    return listings
