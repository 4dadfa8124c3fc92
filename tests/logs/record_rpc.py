"""Record the real llama.cpp RPC output the parser tests read (tests/test_rpc_workers.py).

Run from the repository root once the tools are built: ``.venv/bin/python
tests/logs/record_rpc.py``. It starts local rpc-server workers on free loopback ports and
records: ``--list-devices`` through one and two workers, a refused connection, a handshake
with a worker of another protocol version (a tiny server that answers HELLO as v6.1.0
would), a worker killed while llama-perplexity runs across it, and rpc-server's banner.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from apex_gui.core.fit.rpc_local import LocalRpcWorker, free_port  # noqa: E402
from apex_gui.core.fit.rpc_workers import probe_environment  # noqa: E402
from apex_gui.core.jobs.tools import LlamaTools  # noqa: E402

RPC_CMD_HELLO = 14
CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE


def run(argv: list[str], timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=probe_environment(),
                          timeout=timeout)
    return done.stdout + done.stderr + f"\n[exit code {done.returncode}]\n"


def old_version_server(port: int, ready: threading.Event) -> None:
    """Answer one HELLO the way a protocol 6.1.0 rpc-server would, then close."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(1)
        ready.set()
        client, _ = server.accept()
        with client:
            client.recv(1 + 8 + CONN_CAPS)
            reply = bytes([6, 1, 0, 0]) + bytes(CONN_CAPS)
            client.sendall(struct.pack("<Q", len(reply)) + reply)


def main() -> None:
    tools = LlamaTools()
    perplexity = str(tools.path("perplexity"))
    with LocalRpcWorker(tools) as one, LocalRpcWorker(tools) as two:
        (HERE / "rpc_list_devices.log").write_text(
            run([perplexity, "--rpc", one.worker.endpoint, "--list-devices"]))
        (HERE / "rpc_list_devices_two.log").write_text(run(
            [perplexity, "--rpc", f"{one.worker.endpoint},{two.worker.endpoint}",
             "--list-devices"]))
    (HERE / "rpc_server_start.log").write_text(one.stop())
    (HERE / "rpc_connect_refused.log").write_text(
        run([perplexity, "--rpc", f"127.0.0.1:{free_port()}", "--list-devices"]))
    port, ready = free_port(), threading.Event()
    fake = threading.Thread(target=old_version_server, args=(port, ready))
    fake.start()
    ready.wait(5)
    (HERE / "rpc_version_mismatch.log").write_text(
        run([perplexity, "--rpc", f"127.0.0.1:{port}", "--list-devices"]))
    fake.join(5)
    record_lost_worker(tools, perplexity)


def record_lost_worker(tools: LlamaTools, perplexity: str) -> None:
    """llama-perplexity across a worker that is killed once the first chunk is done."""
    from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model

    with tempfile.TemporaryDirectory() as tmp:
        model = write_synthetic_model(Path(tmp) / "m.gguf", SyntheticModelSpec(
            arch="qwen2moe", n_layer=3, n_expert=4, seed=11))
        text = Path(tmp) / "t.txt"
        text.write_text(("the quick brown fox jumps over a lazy dog " * 3000) + "\n")
        with LocalRpcWorker(tools) as worker:
            child = subprocess.Popen(
                [perplexity, "-m", str(model), "-f", str(text), "-c", "128", "-t", "1",
                 "--rpc", worker.worker.endpoint, "--no-log-prefix", "--log-colors", "off"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=probe_environment())
            seen = b""
            while b"[1]" not in seen:
                data = child.stdout.read1(4096)  # type: ignore[union-attr]
                if not data:
                    break
                seen += data
            worker.kill()
            rest, _ = child.communicate(timeout=60)
        (HERE / "rpc_worker_lost.log").write_text(
            (seen + rest).decode("utf-8", "replace") + f"\n[exit code {child.returncode}]\n")


if __name__ == "__main__":
    main()
