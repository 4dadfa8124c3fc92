"""Outputs and inputs, the campaign of issue 12: outputs that are the source by five names,
existing outputs without --force, outputs that are folders or in read-only folders, side inputs
that are FIFOs, devices or huge, hostile file names (12 kinds), bad model files through every
model command, mutated headers (tests/test_fuzz_reader.py) and a full disk."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from faults.harness import ROOT, Campaign, group


@group("outputs")
def source_as_output(c: Campaign) -> None:
    for command, extra in (("plan", ["--profile", "quality"]), ("card", []),
                           ("quantize", ["--profile", "quality"]), ("imatrix", [])):
        folder = c.folder()
        model = c.model_in(folder)
        (folder / "link.gguf").symlink_to(model)
        os.link(model, folder / "hard.gguf")
        (folder / "sub").mkdir()
        for alias in ("m.gguf", "link.gguf", "hard.gguf", "sub/../m.gguf",
                      f"{folder}//m.gguf"):
            c.run(f"{command} -o {alias} (the source)",
                  [command, "m.gguf", *extra, "-o", alias, "--force"], folder,
                  keep=[model])


@group("outputs")
def existing_outputs(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    other = c.model_in(folder, "other.gguf")
    for args in (["plan", "m.gguf", "--profile", "quality"], ["card", "m.gguf"],
                 ["synth", "tiny-qwen2moe"], ["twin", "qwen3-30b-a3b"],
                 ["quantize", "m.gguf", "--profile", "quality"], ["imatrix", "m.gguf"],
                 ["twin", "qwen3-30b-a3b", "--splits", "1"]):
        c.run(f"{args[0]} over an existing file", [*args, "-o", "other.gguf"], folder,
              keep=[model, other])


@group("outputs")
def folder_outputs(c: Campaign) -> None:
    writers = (["plan", "m.gguf", "--profile", "quality"], ["card", "m.gguf"],
               ["synth", "tiny-qwen2moe"], ["twin", "qwen3-30b-a3b"],
               ["quantize", "m.gguf", "--profile", "quality"], ["imatrix", "m.gguf"])
    folder = c.folder()
    model = c.model_in(folder)
    (folder / "out").mkdir()
    for args in writers:
        c.run(f"{args[0]} -o <a folder>", [*args, "-o", "out", "--force"], folder,
              keep=[model])
    read_only = folder / "ro"
    read_only.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                  str(read_only)], capture_output=True).returncode == 0
    else:
        read_only.chmod(0o555)
    if os.geteuid() != 0 or mounted:
        try:
            for args in writers:
                c.run(f"{args[0]} into a read-only folder", [*args, "-o", "ro/x.out"],
                      folder, keep=[model])
        finally:
            if mounted:
                subprocess.run(["umount", str(read_only)], check=False)
            read_only.chmod(0o755)


@group("side inputs")
def side_inputs(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    os.mkfifo(folder / "pipe")
    with open(folder / "huge.txt", "wb") as handle:
        handle.truncate(3 * 2**30)
    cases = [
        ["imatrix", "m.gguf", "--calibration", "pipe", "-o", "i.gguf"],
        ["imatrix", "m.gguf", "--calibration", "/dev/zero", "-o", "i.gguf"],
        ["imatrix", "m.gguf", "--calibration", "huge.txt", "-o", "i.gguf"],
        ["estimate", "m.gguf", "--plan", "pipe"],
        ["estimate", "m.gguf", "--plan", "/dev/zero"],
        ["quantize", "m.gguf", "--profile", "i-quality", "--imatrix", "pipe", "-o", "q.gguf"],
        ["quantize", "m.gguf", "--tensor-type-file", "pipe", "-o", "q.gguf"],
        ["plan", "m.gguf", "--profile", "quality", "--imatrix", "pipe"],
        ["eval", "m.gguf", "--ppl", "pipe"], ["eval", "m.gguf", "--hellaswag", "pipe"],
        ["eval", "m.gguf", "--winogrande", "/dev/zero"], ["eval", "m.gguf", "--mc", "pipe"],
        ["eval", "pipe"], ["eval", "/dev/zero"], ["eval", "."],
        ["card", "m.gguf", "--mmproj", "pipe"],
    ]
    for args in cases:
        c.run(" ".join(args), args, folder, keep=[model], deadline=30)
    profiles = c.home / "config" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    os.mkfifo(profiles / "fifo.toml")
    try:
        c.run("a FIFO in the profiles folder", ["plan", "m.gguf", "--profile", "quality"],
              folder, keep=[model], expect=0, deadline=30)
    finally:
        (profiles / "fifo.toml").unlink()


@group("outputs")
def hostile_names(c: Campaign) -> None:
    names = ["with space.gguf", "--help.gguf", "-o.gguf", "ünïcødé.gguf", "new\nline.gguf",
             "quote'\".gguf", "$(touch PWNED).gguf", "a;touch PWNED;.gguf",
             "`touch PWNED`.gguf", "star*?.gguf", "tab\tname.gguf", "L" * 200 + ".gguf"]
    for name in names:
        folder = c.folder()
        model = c.model_in(folder, name)
        c.run(f"inspect {name!r}", ["inspect", f"./{name}"], folder, keep=[model],
              expect=0)
        c.run(f"plan {name!r}", ["plan", f"./{name}", "--profile", "quality", "-o",
                                 f"./{name}.txt"], folder, keep=[model], expect=0)
        c.run(f"quantize {name!r}", ["quantize", f"./{name}", "--profile", "quality",
                                     "-o", f"./q-{name}", "-t", "1"], folder,
              keep=[model], expect=0)
        if (folder / "PWNED").exists():
            c.tally.bad("sources_changed", f"hostile name {name!r}", "a command ran")


@group("model files")
def bad_files(c: Campaign) -> None:
    rng = random.Random(12)
    count = 40 if c.full else 6
    folder = c.folder()
    data = c.pristine.read_bytes()
    files = [folder / "empty.gguf", folder / "text.gguf", folder / "magic-only.gguf"]
    files[0].write_bytes(b"")
    files[1].write_text("not a model at all\n")
    files[2].write_bytes(b"GGUF")
    while len(files) < count:
        path = folder / f"bad-{len(files):03d}.gguf"
        cut = rng.randrange(4, len(data))
        mutated = bytearray(data[:cut])
        for _ in range(rng.randrange(1, 8)):
            at = rng.randrange(4, len(mutated))
            mutated[at] = rng.randrange(256)
        path.write_bytes(bytes(mutated))
        files.append(path)
    commands = (["inspect"], ["plan", "--profile", "quality"], ["estimate", "--all"],
                ["recommend", "--vram", "24GB"], ["detect"],
                ["quantize", "--profile", "quality", "-o", "q.gguf"], ["imatrix", "-o",
                                                                       "i.gguf"], ["eval"])
    for path in files:
        for command in commands:
            c.run(f"{command[0]} {path.name}", [command[0], path.name, *command[1:]],
                  folder, keep=[path], expect=None)


@group("model files")
def mutated_headers(c: Campaign) -> None:
    cases = 2000 if c.full else 200
    c.tally.cases += cases
    try:
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "test_fuzz_reader.py"),
                               "--cases", str(cases)], capture_output=True, text=True,
                              timeout=60 + cases * 0.5, env=c.env)
    except subprocess.TimeoutExpired:
        c.tally.bad("hangs", "mutated headers")
        return
    crashes = 0
    for line in done.stdout.splitlines():
        if "other exceptions" in line:
            crashes = int(line.split("other exceptions")[1].split(";")[0])
    for _ in range(crashes):
        c.tally.bad("tracebacks", "mutated header")
    if "Traceback" in done.stderr:
        c.tally.bad("tracebacks", "fuzz script", done.stderr[-200:])


@group("outputs")
def full_disk(c: Campaign) -> None:
    if os.geteuid() != 0:
        return
    folder = c.folder()
    model = c.model_in(folder)
    disk = folder / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        return
    try:
        (folder / "types.txt").write_text("ffn_down_exps=q8_0\n")
        c.run("quantize onto a full disk", ["quantize", "m.gguf", "--tensor-type-file",
                                            "types.txt", "-o", "disk/q.gguf", "-t", "1"],
              folder, keep=[model], expect=1)
        c.run("plan onto a full disk", ["plan", "m.gguf", "--profile", "quality", "-o",
                                        "disk/" + "p" * 100 + ".txt"], folder,
              keep=[model], expect=None)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
