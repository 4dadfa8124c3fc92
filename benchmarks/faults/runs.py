"""Profiles, flags, kills and concurrency, the campaign of issue 12: bad user profiles, flags
out of range, a zero-expert header, SIGKILL and SIGTERM of a running CLI (the tool must die
with it, the next command cleans up), two runs on one output, a secret in the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from faults.harness import DEADLINE_S, Campaign, digest, group, leftovers


@group("profiles and flags")
def bad_profiles(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    profiles = c.home / "config" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    from apex_gui.core.plan.profiles import builtin_profiles, profile_to_toml

    good = profile_to_toml(builtin_profiles()["quality"]).replace('key = "quality"',
                                                                   'key = "mine"')
    (profiles / "bands.toml").write_text(good.replace("[attention]\nbands = [",
                                                      "[attention]\nbands = 5\nx = ["))
    (profiles / "broken.toml").write_text("key = [[[\n")
    (profiles / "latin1.toml").write_bytes(b'key = "caf\xe9"\n')
    try:
        for args, expect in ((["plan", "m.gguf", "--profile", "quality"], 0),
                             (["estimate", "m.gguf", "--all", "--no-baselines"], 0),
                             (["estimate", "m.gguf", "--profile", "compact"], 0),
                             (["plan", "m.gguf", "--profile", "broken"], 2),
                             (["detect", "m.gguf"], 0)):
            done = c.run(f"bad profiles: {' '.join(args)}", args, folder, keep=[model],
                         expect=expect)
            if done is not None and "bands.toml" not in done.stderr:
                c.tally.bad("wrong_exit", "bad profiles", "bands.toml not named")
    finally:
        for path in profiles.glob("*.toml"):
            path.unlink()


@group("profiles and flags")
def flags(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    quantize = ["quantize", "m.gguf", "--profile", "quality", "-o", "q.gguf"]
    (folder / "bad.txt").write_text("[x=q8_0\n")
    (folder / "usage.txt").write_text("nonsense\n")
    for extra in (["-t", "100000"], ["-t", "0"], ["-t", "-3"], ["--imatrix-ctx", "0"],
                  ["--imatrix", "/nonexistent"]):
        c.run(" ".join(quantize + extra), quantize + extra, folder, keep=[model])
    for args in (["eval", "m.gguf", "--ctx", "99999999999"],
                 ["eval", "m.gguf", "--bench", "--bench-reps", "0"],
                 ["recommend", "m.gguf", "--vram", ","],
                 ["recommend", "m.gguf", "--margin", "1e308"],
                 ["recommend", "m.gguf", "--ctx", "99999999999"],
                 ["estimate", "m.gguf", "--plan", "bad.txt"],
                 ["quantize", "m.gguf", "--tensor-type-file", "usage.txt", "-o", "q.gguf"],
                 ["twin", "qwen3-30b-a3b", "--splits", "0", "-o", "t.gguf"]):
        c.run(" ".join(args), args, folder, keep=[model])
    zero = folder / "zero.gguf"
    data = bytearray(c.pristine.read_bytes())
    at = data.index(b".expert_count") + len(b".expert_count") + 4
    data[at:at + 4] = (0).to_bytes(4, "little")
    zero.write_bytes(bytes(data))
    for args in (["plan", "zero.gguf", "--profile", "quality"],
                 ["estimate", "zero.gguf", "--profile", "quality"],
                 ["recommend", "zero.gguf", "--vram", "24GB"],
                 ["quantize", "zero.gguf", "--profile", "quality", "-o", "q.gguf"],
                 ["pipeline", "zero.gguf", "--profiles", "quality"]):
        c.run(f"expert_count = 0: {args[0]}", args, folder, keep=[zero])


@group("kills and concurrency")
def kills(c: Campaign) -> None:
    import psutil

    if c.real_tools:
        kill_real_quantize(c)

    for number in (signal.SIGKILL, signal.SIGTERM):
        folder = c.folder()
        model = c.model_in(folder)
        os.mkfifo(folder / "started")
        os.mkfifo(folder / "go")
        c.tally.cases += 1
        name = f"{signal.Signals(number).name} of a running quantize"
        run = controlled_quantize(c, folder, "q.gguf", {
            "APEX_STANDIN_STARTED": str(folder / "started"),
            "APEX_STANDIN_GO": str(folder / "go")})
        child = psutil.Process(int((folder / "started").read_text()))
        run.send_signal(number)
        _, err = run.communicate(timeout=DEADLINE_S)
        try:
            child.wait(timeout=10)
        except psutil.TimeoutExpired:
            c.tally.bad("hangs", name, "the tool ran on as an orphan")
            child.kill()
        if "Traceback" in err:
            c.tally.bad("tracebacks", name)
        # The next command cleans what a SIGKILL left.
        c.run(f"the command after a {signal.Signals(number).name}",
              ["quantize", "m.gguf", "--tensor-type-file", "types.txt", "-o", "next.gguf",
               "-t", "1", "--llama-cpp-dir", str(c.stand_in)], folder, keep=[model],
              expect=0)


@group("kills and concurrency")
def concurrent(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    os.mkfifo(folder / "started")
    os.mkfifo(folder / "go")
    c.tally.cases += 1
    first = controlled_quantize(c, folder, "same.gguf", {
        "APEX_STANDIN_STARTED": str(folder / "started"), "APEX_STANDIN_GO": str(folder / "go")})
    (folder / "started").read_text()
    second = c.run("a second run on the same output",
                   ["quantize", "m.gguf", "--tensor-type-file", "types.txt", "-o",
                    "same.gguf", "-t", "1", "--llama-cpp-dir", str(c.stand_in)],
                   folder, keep=[model], expect=1, settled=False)
    with open(folder / "go", "w"):
        pass
    _, err = first.communicate(timeout=DEADLINE_S)
    if first.returncode != 0 or digest(folder / "same.gguf") != digest(model):
        c.tally.bad("wrong_exit", "two runs on one output", err[-200:])
    if second is not None and "another run" not in second.stderr:
        c.tally.bad("wrong_exit", "two runs on one output", "the refusal is not named")
    if leftovers(folder):
        c.tally.bad("leftovers", "two runs on one output")


@group("kills and concurrency")
def secret(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    secret = "hf_SECRETcampaignTOKEN123"
    done = c.run("a secret in the environment",
                 ["quantize", "m.gguf", "--profile", "quality", "-o", "q.gguf", "-t", "1"],
                 folder, keep=[model], expect=0, env={"HF_TOKEN": secret})
    stored = b"".join(p.read_bytes() for p in (c.home / "data").glob("runs.sqlite*"))
    if done is not None and (secret in done.stdout + done.stderr or secret.encode() in stored):
        c.tally.bad("sources_changed", "a secret in the environment", "leaked")


def controlled_quantize(c: Campaign, folder: Path, output: str, env: dict[str, str],
                         model: str = "m.gguf", real: bool = False) -> subprocess.Popen[str]:
    (folder / "types.txt").write_text("ffn_down_exps=q8_0\n")
    tools = [] if real else ["--llama-cpp-dir", str(c.stand_in)]
    argv = [sys.executable, "-m", "apex_gui.cli", "quantize", model, "--tensor-type-file",
            "types.txt", "-o", output, "-t", "1", *tools]
    return subprocess.Popen(argv, cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**c.env, **env})


def kill_real_quantize(c: Campaign) -> None:
    """SIGKILL of the CLI while the real llama-quantize writes (polled: a script may)."""
    import psutil

    from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model

    folder = c.folder()
    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=21, n_expert=2, n_expert_used=1,
                              seed=7, name="campaign deep model")
    model = write_synthetic_model(folder / "deep.gguf", spec)
    c.tally.cases += 1
    name = "SIGKILL of the CLI during a real llama-quantize"
    run = controlled_quantize(c, folder, "q.gguf", {}, model="deep.gguf", real=True)
    cli = psutil.Process(run.pid)
    tool = None
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and run.poll() is None:
        children = cli.children()
        if children and any(p.name.endswith(".partial") for p in folder.iterdir()):
            tool = children[0]
            break
        time.sleep(0.02)
    if tool is None:
        run.kill()
        run.communicate()
        c.tally.notes.append(f"skipped: {name} (the quantize ended before the kill)")
        return
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=DEADLINE_S)
    try:
        tool.wait(timeout=10)
    except psutil.TimeoutExpired:
        c.tally.bad("hangs", name, "llama-quantize ran on as an orphan")
        tool.kill()
    c.run("the command after a SIGKILL (real tool)",
          ["quantize", "deep.gguf", "--tensor-type-file", "types.txt", "-o", "next.gguf",
           "-t", "1"], folder, keep=[model], expect=0, deadline=120)
