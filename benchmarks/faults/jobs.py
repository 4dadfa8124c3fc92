"""Tools that hang, print without end or abort, and RPC workers that stall (issue 20,
findings 3, 4, 5 and 12). Section of the jobs engineer: the cases are in
``benchmarks/fault_campaign_jobs.py`` (stand-in tools from tests/fakes.py); the window's part
of finding 4 (Ctrl+Q with a hung tool in the start-up tools check) is here.
"""

from __future__ import annotations

import json

from faults.harness import DEADLINE_S, Campaign, group


@group("tool runs")
def hostile_tools(c: Campaign) -> None:
    from fault_campaign_jobs import hostile_tools_cases

    hostile_tools_cases(c, DEADLINE_S)


@group("tool runs")
def window_quits_with_a_hung_tool(c: Campaign) -> None:
    """The window checks each new tools build at start: a hung tool must not keep it alive
    after Ctrl+Q (it stayed 84 s and counting)."""
    from fakes import copying_quantize, hung_tool

    for hung in ("llama-quantize", "llama-perplexity"):
        folder = c.folder()
        model = c.model_in(folder)
        tools = folder / f"hung-{hung}"
        if hung == "llama-perplexity":
            copying_quantize(tools)
        hung_tool(tools, hung)
        with c.settings_file(json.dumps({"llama_cpp_dir": str(tools)})):
            c.run_window(f"the window quits with a hung {hung} in its tools check", folder,
                         model, deadline=90)
