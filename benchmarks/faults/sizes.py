"""Sizes that overflow (issue 20, finding 10): 400 nines and a unit, 1e999, in every size
flag, and in the manual-device list the window reads at start. Section of the window
engineer: add cases here."""

from __future__ import annotations

import json

from faults.harness import Campaign, group

HUGE = "9" * 400 + "GB"


@group("sizes")
def overflowing_sizes(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    for args in (["recommend", "m.gguf", "--vram", HUGE], ["recommend", "m.gguf", "--ram", HUGE],
                 ["recommend", "m.gguf", "--gpu", f"2 x {HUGE}"],
                 ["recommend", "m.gguf", "--margin", "1e999"],
                 ["recommend", "m.gguf", "--vram", "1e999GB"], ["recommend", "m.gguf", "--vram",
                                                                 "nanGB"],
                 ["optimize", "m.gguf", "--budget", HUGE],
                 ["optimize", "m.gguf", "--budget", "infGB"]):
        c.run(" ".join(a[:20] for a in args), args, folder, keep=[model])
    for devices in (HUGE, f"GPU {HUGE}", "1e999GB", "-5GB"):
        with c.settings_file(json.dumps({"manual_devices": devices})):
            c.run_window(f"the window with manual devices {devices[:20]}", folder, model)
