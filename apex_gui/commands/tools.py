"""``apex-studio tools``: where each llama.cpp tool was found."""

from __future__ import annotations

import argparse
import json

from apex_gui.core.tools import GPU_BUILD_HINT, REQUIRED_TOOLS, LlamaTools, missing_tool_message


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tools", help="show where each llama.cpp tool was found")
    parser.add_argument("--llama-cpp-dir", help="a llama.cpp build folder to look in first")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from apex_gui.core.settings import load_settings

    folder = args.llama_cpp_dir or load_settings().llama_cpp_dir or None
    tools = LlamaTools(folder)
    report = tools.report()
    if args.json:
        print(json.dumps([{"tool": r.name, "executable": r.executable,
                           "path": str(r.path) if r.path else None, "origin": r.origin,
                           "version": r.version} for r in report], indent=2))
    else:
        width = max(len(r.executable) for r in report)
        for r in report:
            where = f"{r.path}  [{r.origin}, {r.version or 'version unknown'}]" if r.found \
                else "MISSING"
            print(f"{r.executable:<{width}}  {where}")
        missing = [r for r in report if not r.found and r.name in REQUIRED_TOOLS]
        if missing:
            print()
            print(missing_tool_message(missing[0].executable, tools.configured_dir))
        else:
            print()
            print(GPU_BUILD_HINT)
    return 1 if any(not r.found and r.name in REQUIRED_TOOLS for r in report) else 0
