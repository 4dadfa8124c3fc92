"""Every sub-command under bad input, the RPC worker command and lists, split models whose
shards do not belong together, and the window's own arguments (issue 20; section of the
inputs engineer). The campaign checks that every registered sub-command ran at least once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from faults.harness import DEADLINE_S, Campaign, group


@group("commands")
def every_command(c: Campaign) -> None:
    """Each sub-command once on a missing model or a bad value, and once as meant."""
    folder = c.folder()
    model = c.model_in(folder)
    missing = "missing.gguf"
    refusals = [
        ["inspect", missing], ["estimate", missing, "--all"], ["plan", missing, "--profile",
                                                               "quality"],
        ["detect", missing], ["recommend", missing], ["card", missing], ["quantize", missing,
                                                                         "--profile", "quality"],
        ["imatrix", missing], ["eval", missing], ["pipeline", missing, "--profiles", "quality"],
        ["sensitivity", missing, "-o", "s.json"], ["optimize", missing, "--budget", "1MB"],
        ["synth", "no-such-fixture", "-o", "s.gguf"], ["twin", "no-such-model", "-o", "t.gguf"],
        ["hardware", "--rpc", "x"], ["rpc-worker", "--port", "0"],
        ["types", "--no-such-flag"],
        ["optimize", "m.gguf", "--budget", "-1MB"], ["plan", "m.gguf", "--profile", "nope"],
        ["convert", "missing-folder", "-o", "c.gguf"], ["convert", "empty", "-o", "c.gguf"],
        ["convert", "bogus", "-o", "c.gguf"], ["convert", "m.gguf", "-o", "c.gguf"],
    ]
    (folder / "empty").mkdir()
    (folder / "bogus").mkdir()
    (folder / "bogus" / "config.json").write_text('{"architectures": 5}')
    (folder / "bogus" / "model.safetensors").write_bytes(b"\xff" * 64)
    for args in refusals:
        c.run(" ".join(args), args, folder, keep=[model])
    fine = [["inspect", "m.gguf", "--json"], ["estimate", "m.gguf", "--all", "--no-baselines"],
            ["plan", "m.gguf", "--profile", "compact", "-o", "p.txt"], ["detect", "m.gguf"],
            ["recommend", "m.gguf", "--vram", "24GB"], ["types", "--json"],
            ["synth", "tiny-qwen2moe", "-o", "s.gguf"], ["twin", "qwen3-30b-a3b", "-o", "t.gguf"],
            ["hardware", "--json"], ["tools"],
            # Looked in first, then the other places: a missing one is not an error.
            ["tools", "--llama-cpp-dir", "missing-folder"]]
    for args in fine:
        c.run(" ".join(args), args, folder, keep=[model], expect=0)


@group("commands")
def window_arguments(c: Campaign) -> None:
    folder = c.folder()
    c.run("--screenshot DIR MODEL (a model it would not use)",
          ["--screenshot", "shots", "missing.gguf"], folder)
    c.run_window("the window on a missing model", folder, folder / "missing.gguf")
    (folder / "text.gguf").write_text("not a model\n")
    c.run_window("the window on a text file", folder, folder / "text.gguf")
    os.mkfifo(folder / "fifo.gguf")
    c.run_window("the window on a FIFO", folder, folder / "fifo.gguf")


@group("rpc workers")
def rpc_worker_command(c: Campaign) -> None:
    folder = c.folder()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        c.run("rpc-worker on a port in use", ["rpc-worker", "--port", str(port)], folder)
    for host in ("nosuchhost.invalid", "255.255.255.255", "", "8.8.8.8", "h\u00b2"):
        c.run(f"rpc-worker --host {host!r}", ["rpc-worker", "--host", host, "--port",
                                              "50999"], folder)
    c.run("rpc-worker --port 70000", ["rpc-worker", "--port", "70000"], folder)
    c.run("rpc-worker -t -1", ["rpc-worker", "-t", "-1"], folder)
    if c.real_tools:
        for host, says in (("localhost", "127.0.0.1"), ("0x0", "every interface"),
                           ("0", "every interface"), ("127.1", "127.0.0.1")):
            _serves(c, folder, host, says)


def _serves(c: Campaign, folder: Path, host: str, says: str) -> None:
    """``rpc-worker --host HOST`` serves (until stopped) and says where it listens."""
    from apex_gui.core.fit.rpc_local import free_port, listen_address, wait_until_listening

    c.tally.cases += 1
    name = f"rpc-worker --host {host}"
    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "apex_gui.cli", "rpc-worker", "--host",
                              host, "--port", str(port), "-t", "1"], cwd=folder, env=c.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = listen_address(host)
        connect_to = "127.0.0.1" if address == "0.0.0.0" else address
        if not wait_until_listening(connect_to, port, 60, alive=lambda: child.poll() is None):
            c.tally.bad("wrong_exit", name, f"not listening; exit {child.poll()}")
    finally:
        child.terminate()
        _, err = child.communicate(timeout=DEADLINE_S)
    if "Traceback" in err:
        c.tally.bad("tracebacks", name, err.strip().splitlines()[-1][:160])
    if says not in err or "named interface" in err:
        c.tally.bad("wrong_exit", name, f"does not say {says!r}: {err[-200:]}")


@group("rpc workers")
def rpc_lists(c: Campaign) -> None:
    folder = c.folder()
    model = c.model_in(folder)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        quiet = f"127.0.0.1:{silent.getsockname()[1]}"
        lists = ["h:\u00b2", "h:\uff15\uff10", "[::1]:50052", "a:1,a:1", "nosuchhost.invalid:50052",
                 "127.0.0.1:1", quiet, ",".join(f"10.0.0.{i}:50052" for i in range(1, 18)),
                 "host:", ":50052", "a b c"]
        for workers in lists:
            for args in (["hardware", "--rpc", workers],
                         ["recommend", "m.gguf", "--vram", "24GB", "--rpc", workers],
                         ["imatrix", "m.gguf", "-o", "i.gguf", "--rpc", workers],
                         ["eval", "m.gguf", "--bench", "--rpc", workers]):
                if args[0] != "hardware" and not c.full and workers not in lists[:2] + [quiet]:
                    continue
                c.run(f"{args[0]} --rpc {workers[:30]!r}", args, folder, keep=[model],
                      expect=None if args[0] == "hardware" else 2)


@group("split models")
def split_models(c: Campaign) -> None:
    from apex_gui.core.fixtures.twins import write_shape_twin

    folder = c.folder()
    qwen = write_shape_twin(folder / "qwen" / "qwen.gguf", "qwen3-30b-a3b", n_splits=3)
    other = write_shape_twin(folder / "other" / "olmoe.gguf", "olmoe-1b-7b", n_splits=3)
    single = write_shape_twin(folder / "single" / "qwen.gguf", "qwen3-30b-a3b")
    for name, stranger in (("another model's shard", other[1]),
                           ("a single file as shard 2", single[0]), ("shard 3 as shard 2", qwen[2]),
                           ("no shard 2", None)):
        mixed = folder / name.replace(" ", "-").replace("'", "")
        mixed.mkdir()
        for index, shard in enumerate(qwen):
            if index == 1:
                if stranger is not None:
                    os.link(stranger, mixed / shard.name)
            else:
                os.link(shard, mixed / shard.name)
        first = mixed / qwen[0].name
        keep = [p for p in mixed.iterdir()]
        for args in (["inspect", str(first)], ["estimate", str(first), "--all"],
                     ["plan", str(first), "--profile", "quality", "-o", "p.txt"],
                     ["recommend", str(first), "--vram", "24GB"], ["detect", str(first)],
                     ["eval", str(first), "--bench"],
                     ["quantize", str(first), "--profile", "quality", "-o", "q.gguf"],
                     ["optimize", str(first), "--budget", "10GB"]):
            c.run(f"{args[0]} on a split with {name}", args, folder, keep=keep)
        c.run_window(f"the window on a split with {name}", folder, first)
