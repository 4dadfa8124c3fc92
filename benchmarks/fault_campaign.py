"""The fault campaign of issue 12, as a hostile user would run it, and its table.

Every case runs ``apex-studio`` in a fresh process with a deadline (a case past it is a
hang) in a private folder with its own settings, data and cache folders, and is judged on:

- tracebacks: "Traceback" on stderr (every failure must be one line naming the fix);
- hangs: the deadline passed (a FIFO read, a lock waited on, an orphaned tool);
- sources changed: any file the case must not write (the source model, an existing output,
  a file a hostile name tried to create) has other bytes afterwards;
- partial files left: ``*.partial``, ``*.tmp``, ``*.lock`` or a hidden ``.*.part`` anywhere
  in the case's folder or data folder once the case (and, for kills, the next command) ended;
- wrong exit: the case's exit code is not the one it should end with (2 for refusals).

Groups: outputs that are the source by five names; existing outputs without --force;
outputs that are folders or in read-only folders; side inputs that are FIFOs, devices or
huge; bad user profiles; flags out of range; a zero-expert header; hostile file names (12
kinds); bad files through every command; mutated headers (through tests/test_fuzz_reader.py);
SIGKILL and SIGTERM of a running CLI; two runs on one output; a full disk; a secret in the
environment; sensitivity tables (damaged, NaN, negative, another model's, huge) through
recommend and optimize, refusals before any measuring, and a stopped sensitivity's scratch. The tool runs use the real llama.cpp tools when they are installed, else a
stand-in ``llama-quantize`` (tests/stand_in_tools.py) that writes like one.

Usage: ``.venv/bin/python benchmarks/fault_campaign.py [--full]`` (``--full``: 320 bad-file
runs and 2,000 mutated headers, as in the issue; the default is a quicker sample).
Exit code 0 when every count but "cases tried" is 0.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakes import make_stand_in_tools  # noqa: E402

DEADLINE_S = 60.0
LEFTOVER_SUFFIXES = (".partial", ".tmp", ".lock")


@dataclass
class Tally:
    tried: int = 0
    tracebacks: int = 0
    hangs: int = 0
    sources_changed: int = 0
    partials_left: int = 0
    wrong_exit: int = 0
    notes: list[str] = field(default_factory=list)

    def bad(self, column: str, case: str, detail: str = "") -> None:
        setattr(self, column, getattr(self, column) + 1)
        self.notes.append(f"{column}: {case} {detail}".rstrip())


def digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def leftovers(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            name = path.name
            if name.endswith(LEFTOVER_SUFFIXES) or (name.startswith(".") and
                                                    name.endswith(".part")):
                found.append(path)
    return found


class Campaign:
    def __init__(self, work: Path, full: bool) -> None:
        self.work, self.full = work, full
        self.tally = Tally()
        self.home = work / "home"
        self.env = {**os.environ}
        for name in ("CONFIG", "DATA", "CACHE"):
            folder = self.home / name.lower()
            folder.mkdir(parents=True, exist_ok=True)
            self.env[f"APEX_STUDIO_{name}_DIR"] = str(folder)
        from apex_gui.core.jobs.tools import LlamaTools

        self.real_tools = LlamaTools().locate("quantize").found
        # The stand-in's timing can be controlled (kills, two runs at once); it also stands
        # in for every tool run when llama.cpp is not installed.
        self.stand_in = make_stand_in_tools(work / "stand-in-bin")
        self.tools = None if self.real_tools else self.stand_in
        models = work / "models"
        models.mkdir()
        from apex_gui.core.fixtures.synthetic import TINY_QWEN3MOE, write_synthetic_model

        self.pristine = write_synthetic_model(models / "tiny-f16.gguf", TINY_QWEN3MOE)
        self.case_number = 0

    # --- one case ---------------------------------------------------------------------------

    def folder(self) -> Path:
        self.case_number += 1
        folder = self.work / f"case-{self.case_number:04d}"
        folder.mkdir()
        return folder

    def model_in(self, folder: Path, name: str = "m.gguf") -> Path:
        target = folder / name
        shutil.copyfile(self.pristine, target)
        return target

    def tool_args(self, command: str) -> list[str]:
        if self.tools is not None and command in ("quantize", "pipeline", "imatrix", "eval"):
            return ["--llama-cpp-dir", str(self.tools)]
        return []

    def run(self, name: str, args: Sequence[str], folder: Path, *, keep: Sequence[Path] = (),
            expect: int | None = 2, env: dict[str, str] | None = None,
            deadline: float = DEADLINE_S, settled: bool = True
            ) -> subprocess.CompletedProcess[str] | None:
        """Run ``apex-studio ARGS`` in ``folder`` and judge it; ``keep``: files it must not
        change; ``settled``: no other run works in the folder, so temporary files there are
        leftovers. Returns the finished process (None for a hang)."""
        self.tally.tried += 1
        before = {path: digest(path) for path in keep}
        argv = [sys.executable, "-m", "apex_gui.cli", *args, *self.tool_args(args[0])]
        try:
            done = subprocess.run(argv, cwd=folder, capture_output=True, text=True,
                                  timeout=deadline, env={**self.env, **(env or {})},
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            self.tally.bad("hangs", name)
            return None
        self.judge(name, done.stderr, done.returncode, expect, before, folder, settled)
        return done

    def judge(self, name: str, stderr: str, code: int, expect: int | None,
              before: dict[Path, str | None], folder: Path, settled: bool = True) -> None:
        if "Traceback" in stderr:
            self.tally.bad("tracebacks", name, stderr.strip().splitlines()[-1][:160])
        if expect is not None and code != expect:
            self.tally.bad("wrong_exit", name, f"exit {code}, expected {expect}: "
                                               f"{stderr.strip()[-200:]}")
        for path, was in before.items():
            if digest(path) != was:
                self.tally.bad("sources_changed", name, str(path))
        left = leftovers(folder, self.home / "data") if settled else []
        if left:
            self.tally.bad("partials_left", name, ", ".join(p.name for p in left[:3]))
            for path in left:
                path.unlink(missing_ok=True)

    # --- groups -----------------------------------------------------------------------------

    def source_as_output(self) -> None:
        for command, extra in (("plan", ["--profile", "quality"]), ("card", []),
                               ("quantize", ["--profile", "quality"]), ("imatrix", [])):
            folder = self.folder()
            model = self.model_in(folder)
            (folder / "link.gguf").symlink_to(model)
            os.link(model, folder / "hard.gguf")
            (folder / "sub").mkdir()
            for alias in ("m.gguf", "link.gguf", "hard.gguf", "sub/../m.gguf",
                          f"{folder}//m.gguf"):
                self.run(f"{command} -o {alias} (the source)",
                         [command, "m.gguf", *extra, "-o", alias, "--force"], folder,
                         keep=[model])

    def existing_outputs(self) -> None:
        folder = self.folder()
        model = self.model_in(folder)
        other = self.model_in(folder, "other.gguf")
        for args in (["plan", "m.gguf", "--profile", "quality"], ["card", "m.gguf"],
                     ["synth", "tiny-qwen2moe"], ["twin", "qwen3-30b-a3b"],
                     ["quantize", "m.gguf", "--profile", "quality"], ["imatrix", "m.gguf"],
                     ["twin", "qwen3-30b-a3b", "--splits", "1"]):
            self.run(f"{args[0]} over an existing file", [*args, "-o", "other.gguf"], folder,
                     keep=[model, other])

    def folder_outputs(self) -> None:
        writers = (["plan", "m.gguf", "--profile", "quality"], ["card", "m.gguf"],
                   ["synth", "tiny-qwen2moe"], ["twin", "qwen3-30b-a3b"],
                   ["quantize", "m.gguf", "--profile", "quality"], ["imatrix", "m.gguf"])
        folder = self.folder()
        model = self.model_in(folder)
        (folder / "out").mkdir()
        for args in writers:
            self.run(f"{args[0]} -o <a folder>", [*args, "-o", "out", "--force"], folder,
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
                    self.run(f"{args[0]} into a read-only folder", [*args, "-o", "ro/x.out"],
                             folder, keep=[model])
            finally:
                if mounted:
                    subprocess.run(["umount", str(read_only)], check=False)
                read_only.chmod(0o755)

    def side_inputs(self) -> None:
        folder = self.folder()
        model = self.model_in(folder)
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
            self.run(" ".join(args), args, folder, keep=[model], deadline=30)
        profiles = self.home / "config" / "profiles"
        profiles.mkdir(parents=True, exist_ok=True)
        os.mkfifo(profiles / "fifo.toml")
        try:
            self.run("a FIFO in the profiles folder", ["plan", "m.gguf", "--profile", "quality"],
                     folder, keep=[model], expect=0, deadline=30)
        finally:
            (profiles / "fifo.toml").unlink()

    def bad_profiles(self) -> None:
        folder = self.folder()
        model = self.model_in(folder)
        profiles = self.home / "config" / "profiles"
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
                done = self.run(f"bad profiles: {' '.join(args)}", args, folder, keep=[model],
                                expect=expect)
                if done is not None and "bands.toml" not in done.stderr:
                    self.tally.bad("wrong_exit", "bad profiles", "bands.toml not named")
        finally:
            for path in profiles.glob("*.toml"):
                path.unlink()

    def flags(self) -> None:
        folder = self.folder()
        model = self.model_in(folder)
        quantize = ["quantize", "m.gguf", "--profile", "quality", "-o", "q.gguf"]
        (folder / "bad.txt").write_text("[x=q8_0\n")
        (folder / "usage.txt").write_text("nonsense\n")
        for extra in (["-t", "100000"], ["-t", "0"], ["-t", "-3"], ["--imatrix-ctx", "0"],
                      ["--imatrix", "/nonexistent"]):
            self.run(" ".join(quantize + extra), quantize + extra, folder, keep=[model])
        for args in (["eval", "m.gguf", "--ctx", "99999999999"],
                     ["eval", "m.gguf", "--bench", "--bench-reps", "0"],
                     ["recommend", "m.gguf", "--vram", ","],
                     ["recommend", "m.gguf", "--margin", "1e308"],
                     ["recommend", "m.gguf", "--ctx", "99999999999"],
                     ["estimate", "m.gguf", "--plan", "bad.txt"],
                     ["quantize", "m.gguf", "--tensor-type-file", "usage.txt", "-o", "q.gguf"],
                     ["twin", "qwen3-30b-a3b", "--splits", "0", "-o", "t.gguf"]):
            self.run(" ".join(args), args, folder, keep=[model])
        zero = folder / "zero.gguf"
        data = bytearray(self.pristine.read_bytes())
        at = data.index(b".expert_count") + len(b".expert_count") + 4
        data[at:at + 4] = (0).to_bytes(4, "little")
        zero.write_bytes(bytes(data))
        for args in (["plan", "zero.gguf", "--profile", "quality"],
                     ["estimate", "zero.gguf", "--profile", "quality"],
                     ["recommend", "zero.gguf", "--vram", "24GB"],
                     ["quantize", "zero.gguf", "--profile", "quality", "-o", "q.gguf"],
                     ["pipeline", "zero.gguf", "--profiles", "quality"]):
            self.run(f"expert_count = 0: {args[0]}", args, folder, keep=[zero])

    def hostile_names(self) -> None:
        names = ["with space.gguf", "--help.gguf", "-o.gguf", "ünïcødé.gguf", "new\nline.gguf",
                 "quote'\".gguf", "$(touch PWNED).gguf", "a;touch PWNED;.gguf",
                 "`touch PWNED`.gguf", "star*?.gguf", "tab\tname.gguf", "L" * 200 + ".gguf"]
        for name in names:
            folder = self.folder()
            model = self.model_in(folder, name)
            self.run(f"inspect {name!r}", ["inspect", f"./{name}"], folder, keep=[model],
                     expect=0)
            self.run(f"plan {name!r}", ["plan", f"./{name}", "--profile", "quality", "-o",
                                        f"./{name}.txt"], folder, keep=[model], expect=0)
            self.run(f"quantize {name!r}", ["quantize", f"./{name}", "--profile", "quality",
                                            "-o", f"./q-{name}", "-t", "1"], folder,
                     keep=[model], expect=0)
            if (folder / "PWNED").exists():
                self.tally.bad("sources_changed", f"hostile name {name!r}", "a command ran")

    def bad_files(self) -> None:
        rng = random.Random(12)
        count = 40 if self.full else 6
        folder = self.folder()
        data = self.pristine.read_bytes()
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
                self.run(f"{command[0]} {path.name}", [command[0], path.name, *command[1:]],
                         folder, keep=[path], expect=None)

    def mutated_headers(self) -> None:
        cases = 2000 if self.full else 200
        self.tally.tried += cases
        try:
            done = subprocess.run([sys.executable, str(ROOT / "tests" / "test_fuzz_reader.py"),
                                   "--cases", str(cases)], capture_output=True, text=True,
                                  timeout=60 + cases * 0.5, env=self.env)
        except subprocess.TimeoutExpired:
            self.tally.bad("hangs", "mutated headers")
            return
        crashes = 0
        for line in done.stdout.splitlines():
            if "other exceptions" in line:
                crashes = int(line.split("other exceptions")[1].split(";")[0])
        for _ in range(crashes):
            self.tally.bad("tracebacks", "mutated header")
        if "Traceback" in done.stderr:
            self.tally.bad("tracebacks", "fuzz script", done.stderr[-200:])

    def _controlled_quantize(self, folder: Path, output: str, env: dict[str, str],
                             model: str = "m.gguf", real: bool = False) -> subprocess.Popen[str]:
        (folder / "types.txt").write_text("ffn_down_exps=q8_0\n")
        tools = [] if real else ["--llama-cpp-dir", str(self.stand_in)]
        argv = [sys.executable, "-m", "apex_gui.cli", "quantize", model, "--tensor-type-file",
                "types.txt", "-o", output, "-t", "1", *tools]
        return subprocess.Popen(argv, cwd=folder, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**self.env, **env})

    def kills(self) -> None:
        import psutil

        if self.real_tools:
            self._kill_real_quantize()

        for number in (signal.SIGKILL, signal.SIGTERM):
            folder = self.folder()
            model = self.model_in(folder)
            os.mkfifo(folder / "started")
            os.mkfifo(folder / "go")
            self.tally.tried += 1
            name = f"{signal.Signals(number).name} of a running quantize"
            run = self._controlled_quantize(folder, "q.gguf", {
                "APEX_STANDIN_STARTED": str(folder / "started"),
                "APEX_STANDIN_GO": str(folder / "go")})
            child = psutil.Process(int((folder / "started").read_text()))
            run.send_signal(number)
            _, err = run.communicate(timeout=DEADLINE_S)
            try:
                child.wait(timeout=10)
            except psutil.TimeoutExpired:
                self.tally.bad("hangs", name, "the tool ran on as an orphan")
                child.kill()
            if "Traceback" in err:
                self.tally.bad("tracebacks", name)
            # The next command cleans what a SIGKILL left.
            self.run(f"the command after a {signal.Signals(number).name}",
                     ["quantize", "m.gguf", "--tensor-type-file", "types.txt", "-o", "next.gguf",
                      "-t", "1", "--llama-cpp-dir", str(self.stand_in)], folder, keep=[model],
                     expect=0)

    def _kill_real_quantize(self) -> None:
        """SIGKILL of the CLI while the real llama-quantize writes (polled: a script may)."""
        import psutil

        from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model

        folder = self.folder()
        spec = SyntheticModelSpec(arch="qwen2moe", n_layer=21, n_expert=2, n_expert_used=1,
                                  seed=7, name="campaign deep model")
        model = write_synthetic_model(folder / "deep.gguf", spec)
        self.tally.tried += 1
        name = "SIGKILL of the CLI during a real llama-quantize"
        run = self._controlled_quantize(folder, "q.gguf", {}, model="deep.gguf", real=True)
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
            self.tally.notes.append(f"skipped: {name} (the quantize ended before the kill)")
            return
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=DEADLINE_S)
        try:
            tool.wait(timeout=10)
        except psutil.TimeoutExpired:
            self.tally.bad("hangs", name, "llama-quantize ran on as an orphan")
            tool.kill()
        self.run("the command after a SIGKILL (real tool)",
                 ["quantize", "deep.gguf", "--tensor-type-file", "types.txt", "-o", "next.gguf",
                  "-t", "1"], folder, keep=[model], expect=0, deadline=120)

    def concurrent(self) -> None:
        folder = self.folder()
        model = self.model_in(folder)
        os.mkfifo(folder / "started")
        os.mkfifo(folder / "go")
        self.tally.tried += 1
        first = self._controlled_quantize(folder, "same.gguf", {
            "APEX_STANDIN_STARTED": str(folder / "started"), "APEX_STANDIN_GO": str(folder / "go")})
        (folder / "started").read_text()
        second = self.run("a second run on the same output",
                          ["quantize", "m.gguf", "--tensor-type-file", "types.txt", "-o",
                           "same.gguf", "-t", "1", "--llama-cpp-dir", str(self.stand_in)],
                          folder, keep=[model], expect=1, settled=False)
        with open(folder / "go", "w"):
            pass
        _, err = first.communicate(timeout=DEADLINE_S)
        if first.returncode != 0 or digest(folder / "same.gguf") != digest(model):
            self.tally.bad("wrong_exit", "two runs on one output", err[-200:])
        if second is not None and "another run" not in second.stderr:
            self.tally.bad("wrong_exit", "two runs on one output", "the refusal is not named")
        if leftovers(folder):
            self.tally.bad("partials_left", "two runs on one output")

    def full_disk(self) -> None:
        if os.geteuid() != 0:
            return
        folder = self.folder()
        model = self.model_in(folder)
        disk = folder / "disk"
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                          capture_output=True).returncode != 0:
            return
        try:
            (folder / "types.txt").write_text("ffn_down_exps=q8_0\n")
            self.run("quantize onto a full disk", ["quantize", "m.gguf", "--tensor-type-file",
                                                   "types.txt", "-o", "disk/q.gguf", "-t", "1"],
                     folder, keep=[model], expect=1)
            self.run("plan onto a full disk", ["plan", "m.gguf", "--profile", "quality", "-o",
                                               "disk/" + "p" * 100 + ".txt"], folder,
                     keep=[model], expect=None)
        finally:
            subprocess.run(["umount", str(disk)], check=False)

    def secret(self) -> None:
        folder = self.folder()
        model = self.model_in(folder)
        secret = "hf_SECRETcampaignTOKEN123"
        done = self.run("a secret in the environment",
                        ["quantize", "m.gguf", "--profile", "quality", "-o", "q.gguf", "-t", "1"],
                        folder, keep=[model], expect=0, env={"HF_TOKEN": secret})
        stored = b"".join(p.read_bytes() for p in (self.home / "data").glob("runs.sqlite*"))
        if done is not None and (secret in done.stdout + done.stderr or secret.encode() in stored):
            self.tally.bad("sources_changed", "a secret in the environment", "leaked")


    # --- sensitivity tables and the sensitivity / optimize commands ----------------------------
    # (issue 20: findings 1, 6, 7, 8, 9 and the minor ones; issue 22: 11). Self-contained: the
    # cases, their tables and the checks of $TMPDIR live here.

    def _sensitivity_env(self, folder: Path) -> dict[str, str]:
        """A private TMPDIR (scratch folders go there) and a recorded speed (no pilot)."""
        import json as _json

        temp = folder / "tmp"
        temp.mkdir(exist_ok=True)
        speed = self.home / "data" / "sensitivity-speed.json"
        speed.write_text(_json.dumps({"io_bytes_per_s": 4e8, "points": {
            "quantize": [[2e7, 1.0]], "readback": [[6e7, 1.0]], "eval": [[4e10, 1.0]]}}))
        return {"TMPDIR": str(temp)}

    def _scratch_left(self, folder: Path) -> list[Path]:
        return sorted((folder / "tmp").glob("apex-sensitivity-*"))

    def sensitivity(self) -> None:
        import json as _json

        from apex_gui.core.gguf.model import open_model
        from quality_tables import synthetic_table

        folder = self.folder()
        model = self.model_in(folder)
        env = self._sensitivity_env(folder)
        good = synthetic_table(open_model(model)).to_json()
        name = next(iter(good["errors"]))
        kind = next(iter(good["errors"][name]))
        bad_tables = {"a list": "[]", "an empty object": "{}", "not JSON": "{oops",
                      "an old format": _json.dumps({**good, "version": 1}),
                      "deep nesting": "[" * 100_000}
        for label, value in (("NaN", "NaN"), ("infinity", "Infinity"), ("a negative", "-0.5"),
                             ("text", '"x"')):
            spoiled = _json.loads(_json.dumps(good))
            spoiled["errors"][name][kind] = 123456.75
            bad_tables[f"{label} as an error"] = _json.dumps(spoiled).replace("123456.75", value)
        other = _json.loads(_json.dumps(good))
        other["fingerprint"] = "0" * 64
        bad_tables["another model's table"] = _json.dumps(other)
        for label, text in bad_tables.items():
            beside = folder / "m.sensitivity.json"
            beside.write_text(text)
            self.run(f"recommend with {label} beside the model",
                     ["recommend", "m.gguf", "--vram", "24GB", "--ram", "64GB"], folder,
                     keep=[model, beside], expect=0, env=env)
            self.run(f"recommend --sensitivity {label}",
                     ["recommend", "m.gguf", "--vram", "24GB", "--ram", "64GB",
                      "--sensitivity", "m.sensitivity.json"], folder, keep=[model, beside],
                     env=env)
            self.run(f"optimize --sensitivity {label}",
                     ["optimize", "m.gguf", "--budget", "3MB", "--sensitivity",
                      "m.sensitivity.json", "--json"], folder, keep=[model, beside], env=env)
            beside.unlink()
        (folder / "huge.json").write_bytes(b" " * (100 << 20))
        self.run("optimize --sensitivity of 100 MB", ["optimize", "m.gguf", "--budget", "3MB",
                                                      "--sensitivity", "huge.json"],
                 folder, keep=[model], env=env)
        (folder / "huge.json").unlink()
        table = folder / "S.json"
        table.write_text(_json.dumps(good))
        text = folder / "cal.txt"
        text.write_text("words of a probe text " * 400)
        refusals = [
            ["optimize", "m.gguf", "--budget", "3MB", "--sensitivity", "S.json", "-o", "S.json",
             "--force"],
            ["sensitivity", "m.gguf", "--text", "cal.txt", "-o", "cal.txt", "--force"],
            ["sensitivity", "m.gguf", "-o", "s.json", "--chunks", "1", "--probe-ctx", "64"],
            ["sensitivity", "m.gguf", "-o", "s.json", "--probe-ctx", "99999999999"],
            ["sensitivity", "m.gguf", "-o", "s.json", "--chunks", "0"],
            ["sensitivity", "m.gguf", "-o", "s.json", "--types", "NOPE"],
            ["optimize", "m.gguf", "--budget", "16"],
            ["optimize", "m.gguf", "--budget", "3MB", "--sensitivity", "hf://nobody"],
        ]
        for args in refusals:
            done = self.run(" ".join(args), args, folder, keep=[model, table, text], env=env,
                            deadline=30)  # refused before any work: seconds, not minutes
            if done is not None and len([l for l in done.stderr.splitlines() if l.strip()]) != 1:
                self.tally.bad("wrong_exit", " ".join(args), "not one line")
            if self._scratch_left(folder):
                self.tally.bad("partials_left", " ".join(args), "started a measurement")
        for number in (signal.SIGTERM, signal.SIGKILL):
            self._stopped_sensitivity(number)

    def _stopped_sensitivity(self, number: int) -> None:
        """Finding 1: a stopped sensitivity left a full quant of the model in $TMPDIR. Held
        inside its first llama-quantize (the stand-in), then stopped; the next sensitivity
        command (even a refused one) must leave no scratch folder behind."""
        import psutil

        folder = self.folder()
        model = self.model_in(folder)
        env = self._sensitivity_env(folder)
        os.mkfifo(folder / "started")
        os.mkfifo(folder / "go")
        name = f"{signal.Signals(number).name} of a running sensitivity"
        self.tally.tried += 1
        run = subprocess.Popen(
            [sys.executable, "-m", "apex_gui.cli", "sensitivity", "m.gguf", "-o", "s.json",
             "--types", "Q4_K,Q8_0", "--probe-ctx", "128", "--chunks", "6"], cwd=folder,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**self.env, **env, "APEX_LLAMA_CPP_DIR": str(self.stand_in),
                 "APEX_STANDIN_STARTED": str(folder / "started"),
                 "APEX_STANDIN_GO": str(folder / "go")})
        tool = psutil.Process(int((folder / "started").read_text()))
        run.send_signal(number)
        _, err = run.communicate(timeout=DEADLINE_S)
        try:
            tool.wait(timeout=10)
        except psutil.TimeoutExpired:
            self.tally.bad("hangs", name, "llama-quantize ran on as an orphan")
            tool.kill()
        if "Traceback" in err:
            self.tally.bad("tracebacks", name, err.strip().splitlines()[-1][:160])
        if number == signal.SIGTERM and self._scratch_left(folder):
            self.tally.bad("partials_left", name, "the scratch folder stayed")
        self.run(f"the sensitivity command after a {signal.Signals(number).name}",
                 ["sensitivity", "m.gguf", "-o", "t.json", "--chunks", "0"], folder,
                 keep=[model], env=env)
        if self._scratch_left(folder):
            self.tally.bad("partials_left", name, "a dead run's scratch folder stayed")
        if (folder / "s.json").exists():
            self.tally.bad("partials_left", name, "s.json written")

    GROUPS: tuple[str, ...] = ("source_as_output", "existing_outputs", "folder_outputs",
                               "side_inputs", "bad_profiles", "flags", "hostile_names",
                               "bad_files", "mutated_headers", "kills", "concurrent", "full_disk",
                               "secret", "sensitivity")

    def run_all(self, groups: Sequence[str] = GROUPS,
                progress: Callable[[str], None] | None = None) -> Tally:
        for group in groups:
            started = time.monotonic()
            tried = self.tally.tried
            getattr(self, group)()
            if progress is not None:
                progress(f"{group}: {self.tally.tried - tried} cases, "
                         f"{time.monotonic() - started:.0f} s")
        return self.tally


def table(tally: Tally, tools: str) -> str:
    rows = [("cases tried", tally.tried), ("tracebacks", tally.tracebacks),
            ("hangs", tally.hangs), ("sources changed", tally.sources_changed),
            ("partial files left", tally.partials_left), ("wrong exit codes", tally.wrong_exit)]
    width = max(len(name) for name, _ in rows)
    lines = [f"fault campaign ({tools})"] + [f"  {name:<{width}}  {value:>6}" for name, value in rows]
    lines += [f"  ! {note}" for note in tally.notes[:40]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="the issue's sizes: 320 bad-file runs, 2,000 mutated headers")
    parser.add_argument("--groups", help="comma-separated groups (default: all): "
                                         + ", ".join(Campaign.GROUPS))
    args = parser.parse_args(argv)
    groups = args.groups.split(",") if args.groups else Campaign.GROUPS
    with tempfile.TemporaryDirectory(prefix="apex-faults-") as work:
        campaign = Campaign(Path(work), args.full)
        tally = campaign.run_all(groups, progress=lambda line: print(line, file=sys.stderr))
        tools = "real llama.cpp tools" if campaign.real_tools else "stand-in llama-quantize"
    print(table(tally, tools))
    bad = tally.tracebacks + tally.hangs + tally.sources_changed + tally.partials_left \
        + tally.wrong_exit
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
