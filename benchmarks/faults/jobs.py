"""Tools that hang, print without end, crash the same way every time, and an RPC worker that
stalls mid-run (issue 20, findings 3, 4, 5 and 12). Section of the jobs engineer: add cases
here. The stand-in tools are shell scripts in a copy of the tools folder, as the finding
describes ("a sleep in a copy of the tools folder").
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from faults.harness import Campaign, group


def _tools_copy(c: Campaign, folder: Path, tool: str, script: str) -> Path:
    """A copy of the tools folder (links) with ``tool`` replaced by a shell script."""
    from apex_gui.core.jobs.tools import LlamaTools

    source = LlamaTools().locate("quantize").path
    target = folder / "tools"
    target.mkdir()
    if source is not None:
        for entry in Path(source).resolve().parent.iterdir():
            os.symlink(entry, target / entry.name)
    (target / tool).unlink(missing_ok=True)
    (target / tool).write_text("#!/bin/sh\n" + script)
    (target / tool).chmod(0o755)
    return target


@group("tool runs")
def hung_tools(c: Campaign) -> None:
    if not c.real_tools:
        return
    for tool in ("llama-quantize", "llama-perplexity"):
        folder = c.folder()
        model = c.model_in(folder)
        tools = _tools_copy(c, folder, tool, "exec sleep 100000\n")
        c.run(f"tools --check with a hung {tool}", ["tools", "--check", "--llama-cpp-dir",
                                                    str(tools)], folder, expect=None,
              deadline=120)
        with c.settings_file(json.dumps({"llama_cpp_dir": str(tools)})):
            c.run_window(f"the window quits with a hung {tool} in its tools check", folder,
                         model, deadline=90)


@group("tool runs")
def endless_tools(c: Campaign) -> None:
    if not c.real_tools:
        return
    folder = c.folder()
    model = c.model_in(folder)
    tools = _tools_copy(c, folder, "llama-quantize", "exec yes 'llama_model_quantize: line'\n")
    (folder / "types.txt").write_text("ffn_down_exps=q8_0\n")
    c.run("quantize with a tool that prints without end", [
        "quantize", "m.gguf", "--tensor-type-file", "types.txt", "-o", "q.gguf",
        "--llama-cpp-dir", str(tools)], folder, keep=[model], expect=None, deadline=60)
    c.run("tools --check with a tool that prints without end",
          ["tools", "--check", "--llama-cpp-dir", str(tools)], folder, expect=None,
          deadline=120)


@group("tool runs")
def deterministic_abort(c: Campaign) -> None:
    """Finding 12: a model llama.cpp refuses (1,000 layers) was retried on 14 CPU variants."""
    if not c.real_tools:
        return
    folder = c.folder()
    model = folder / "deep.gguf"
    # Written by a child: the campaign's own memory stays small (see harness.run_measured).
    done = subprocess.run([sys.executable, "-c", (
        "import sys\n"
        "from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model\n"
        "write_synthetic_model(sys.argv[1], SyntheticModelSpec(arch='qwen2moe', n_layer=1000, "
        "n_expert=2, n_expert_used=1, seed=3, name='campaign 1000-layer model'))"),
        str(model)], env=c.env, capture_output=True, text=True)
    if done.returncode != 0:
        c.tally.notes.append(f"skipped: 1000-layer model ({done.stderr.strip()[-200:]})")
        return
    c.run("eval of a model llama.cpp aborts on", ["eval", "deep.gguf", "--bench"], folder,
          keep=[model], expect=None, deadline=120)


class StallingProxy:
    """A TCP proxy to a real rpc-server that passes the probe (every connection until the
    first ones have all closed) and stops forwarding later connections after ``after``
    bytes: a worker that stalls mid-run (``kill -STOP`` of the rpc-server, finding 3)."""

    def __init__(self, target: tuple[str, int], after: int = 64 << 10) -> None:
        self.target, self.after = target, after
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self._open = 0
        self._probed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self._lock:
                self.sockets += [client, upstream]
                limit = self.after if self._probed else None
                self._open += 1
            done = threading.Event()
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, limit, done),
                                 daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None,
              done: threading.Event) -> None:
        sent = 0
        try:
            while limit is None or sent < limit:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass  # the case ended and closed the sockets
        if limit is not None:
            return  # past the limit nothing is read: both ends wait, as on a stopped worker
        with self._lock:
            if not done.is_set():  # the first direction to end closes the connection
                done.set()
                for item in (source, sink):
                    try:
                        item.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self._open -= 1
                if self._open == 0:
                    self._probed = True

    def close(self) -> None:
        self.server.close()
        for item in self.sockets:
            item.close()


@group("tool runs")
def stalled_rpc_worker(c: Campaign) -> None:
    if not c.real_tools:
        return
    from apex_gui.core.fit.rpc_local import LocalRpcWorker
    from apex_gui.core.jobs.tools import LlamaTools

    folder = c.folder()
    model = c.model_in(folder)
    with LocalRpcWorker(LlamaTools(), threads=1) as worker:
        proxy = StallingProxy((worker.host, worker.port))
        try:
            c.run("imatrix --rpc with a worker that stalls mid-run",
                  ["imatrix", "m.gguf", "-o", "i.gguf", "--rpc", f"127.0.0.1:{proxy.port}"],
                  folder, keep=[model], expect=None, deadline=180)
        finally:
            proxy.close()
    shutil.rmtree(folder / "tools", ignore_errors=True)
