"""Sensitivity tables and the sensitivity and optimize commands (issue 20, findings 1, 6, 7,
8, 9 and the minor ones). Section of the sensitivity engineer: add cases here.

A table is also a start-up input of the window: one lying beside the model is loaded with it
(the tier table and the overlay read it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from faults.harness import DEADLINE_S, Campaign, group

#: Tables that are not tables: (name, file content).
BAD_TABLES = [
    ("a list", "[]"), ("an object of nothing", "{}"), ("not JSON", "{oops"),
    ("a NaN error", None), ("a negative error", None), ("an infinite error", None),
    ("deep nesting", "[" * 100_000), ("an old format", None), ("another model's table", None),
]


def _measured_table(c: Campaign) -> dict | None:
    """A table for the tiny model in the shape real measurements have (tests/quality_tables:
    no tools needed), as JSON."""
    from apex_gui.core.gguf.model import open_model
    from quality_tables import synthetic_table

    return synthetic_table(open_model(c.pristine)).to_json()


def _spoiled(table: dict | None, how: str) -> str | None:
    if table is None or "errors" not in table:
        return None
    if how == "an old format":
        return json.dumps({**table, "version": 1})
    if how == "another model's table":  # the same tensors, another model's fingerprint
        return json.dumps({**table, "fingerprint": "0" * 64})
    spoiled = json.loads(json.dumps(table))
    name = next(iter(spoiled["errors"]))
    kind = next(iter(spoiled["errors"][name]))
    spoiled["errors"][name][kind] = {"a NaN error": float("nan"), "a negative error": -1.0,
                                     "an infinite error": float("inf")}[how]
    return json.dumps(spoiled)


@group("sensitivity tables")
def bad_tables(c: Campaign) -> None:
    table = _measured_table(c)
    for name, content in BAD_TABLES:
        content = content if content is not None else _spoiled(table, name)
        if content is None:
            continue
        folder = c.folder()
        model = c.model_in(folder)
        beside = folder / "m.sensitivity.json"
        beside.write_text(content)
        c.run(f"recommend with {name} beside the model", ["recommend", "m.gguf", "--vram",
                                                          "24GB"], folder, keep=[model],
              expect=None)
        c.run(f"recommend --json with {name} beside the model",
              ["recommend", "m.gguf", "--vram", "24GB", "--json"], folder, keep=[model],
              expect=None)
        c.run(f"optimize --sensitivity {name}", ["optimize", "m.gguf", "--budget", "1MB",
                                                 "--sensitivity", str(beside)], folder,
              keep=[model])
        c.run_window(f"the window with {name} beside the model", folder, model)
    folder = c.folder()
    model = c.model_in(folder)
    os.mkfifo(folder / "m.sensitivity.json")
    c.run("recommend with a FIFO beside the model", ["recommend", "m.gguf", "--vram", "24GB"],
          folder, keep=[model], expect=None, deadline=30)
    c.run_window("the window with a FIFO beside the model", folder, model, deadline=30)
    (folder / "big.json").write_text(" " * (100 << 20))
    c.run("optimize --sensitivity of 100 MB", ["optimize", "m.gguf", "--budget", "1MB",
                                               "--sensitivity", "big.json"], folder,
          keep=[model])
    if table is not None:
        other = c.folder()
        olmoe = other / "other.sensitivity.json"
        olmoe.write_text(json.dumps({**table, "errors": {"blk.0.other": {"Q4_K": 1.0}}}))
        c.model_in(other)
        c.run("recommend --sensitivity of another model", ["recommend", "m.gguf", "--vram",
                                                           "24GB", "--sensitivity", str(olmoe)],
              other)


@group("sensitivity tables")
def sensitivity_runs(c: Campaign) -> None:
    if not c.real_tools:
        return
    folder = c.folder()
    model = c.model_in(folder)
    (folder / "cal.txt").write_text("words of a calibration text " * 200)
    quick = ["--types", "Q4_K,Q8_0", "--chunks", "1", "--probe-ctx", "64"]
    for args in (["sensitivity", "m.gguf", "-o", "s.json", "--chunks", "0"],
                 ["sensitivity", "m.gguf", "-o", "s.json", "--probe-ctx", "99999999999"],
                 ["sensitivity", "m.gguf", "-o", "s.json", "--chunks", "1", "--probe-ctx", "64"],
                 ["sensitivity", "m.gguf", "-o", "s.json", "--types", "NOPE"],
                 ["sensitivity", "m.gguf", "--text", "cal.txt", "-o", "cal.txt", "--force",
                  *quick],
                 ["optimize", "m.gguf", "--budget", "16B"],
                 ["optimize", "m.gguf", "--budget", "3MB", "--sensitivity", "hf://nobody"]):
        # Refused before any work: one line, in seconds, and no measurement started.
        done = c.run(" ".join(args), args, folder, keep=[model, folder / "cal.txt"], deadline=30)
        if done is not None and len([l for l in done.stderr.splitlines() if l.strip()]) != 1:
            c.tally.bad("wrong_exit", " ".join(args), "the refusal is not one line")
        c.check_leftovers(" ".join(args), folder)
    table = _measured_table(c)
    if table is not None:
        (folder / "S.json").write_text(json.dumps(table))
        c.run("optimize -o its own --sensitivity", ["optimize", "m.gguf", "--budget", "1MB",
                                                    "--sensitivity", "S.json", "-o", "S.json",
                                                    "--force"], folder,
              keep=[model, folder / "S.json"])
    for number in (signal.SIGTERM, signal.SIGKILL):
        _killed_sensitivity(c, number)


def _killed_sensitivity(c: Campaign, number: int) -> None:
    """Finding 1: a killed sensitivity left a full quant of the model in $TMPDIR."""
    folder = c.folder()
    model = c.model_in(folder)
    name = f"{signal.Signals(number).name} of a running sensitivity"
    c.tally.cases += 1
    run = subprocess.Popen([sys.executable, "-m", "apex_gui.cli", "sensitivity", "m.gguf",
                            "-o", "s.json", "--no-cache", "--types", "Q4_K,Q8_0"],
                           cwd=folder, env=c.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    # Killed once its scratch folder exists (it is in the campaign's private TMPDIR).
    import time

    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and run.poll() is None and not c.tmp_entries():
        time.sleep(0.05)
    run.send_signal(number)
    _, err = run.communicate(timeout=DEADLINE_S)
    if "Traceback" in err:
        c.tally.bad("tracebacks", name, err.strip().splitlines()[-1][:160])
    # The next sensitivity command (even a refused one) removes what a SIGKILL left.
    c.run(f"the command after a {signal.Signals(number).name} of sensitivity",
          ["sensitivity", "m.gguf", "-o", "t.json", "--chunks", "0"], folder, keep=[model],
          settled=False)
    c.check_leftovers(name, folder)
    if Path(folder / "s.json").exists():
        c.tally.bad("leftovers", name, "a partial s.json")
