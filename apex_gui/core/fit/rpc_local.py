"""Start ``rpc-server`` workers on this machine (for a test, a demo or a spare GPU box).

A local worker binds to loopback unless told otherwise: the RPC protocol has no
authentication, so a worker on another interface is a remote code runner for anyone who
reaches it (see :mod:`apex_gui.core.fit.rpc_workers`).

``rpc-server`` prints its banner through a buffered ``printf`` (nothing arrives on a pipe
until it exits), so readiness is judged by its port accepting a connection.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from apex_gui.core.fit.rpc_workers import (DEFAULT_RPC_PORT, SECURITY_NOTE, AddressScope, RpcWorker,
                          classify_host)

if TYPE_CHECKING:
    from apex_gui.core.jobs.tools import LlamaTools

__all__ = ["LocalRpcWorker", "ServerDevice", "bind_warning", "free_port", "parse_server_banner",
           "rpc_server_argv", "wait_until_listening"]

#: Seconds a fresh rpc-server gets to open its port (it loads every backend first).
START_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def rpc_server_argv(tools: LlamaTools, host: str = "127.0.0.1", port: int = DEFAULT_RPC_PORT,
                    threads: int = 0, devices: Sequence[str] = (),
                    cache: bool = False) -> list[str]:
    """The ``rpc-server`` command line (this llama.cpp's flags: -H -p -t -d -c)."""
    argv = [str(tools.path("rpc-server")), "-H", host, "-p", str(port)]
    if threads > 0:
        argv += ["-t", str(threads)]
    if devices:
        argv += ["-d", ",".join(devices)]
    if cache:
        argv += ["-c"]
    return argv


def bind_warning(host: str) -> str | None:
    """A warning when a worker would listen beyond loopback; None on loopback."""
    scope = classify_host(host)
    if scope is AddressScope.LOOPBACK:
        return None
    where = {AddressScope.PRIVATE: "a private-network address",
             AddressScope.PUBLIC: ("every interface" if host in ("0.0.0.0", "")
                                   else "a public address"),
             AddressScope.UNRESOLVED: "a named interface"}[scope]
    return (f"warning: the RPC worker listens on {host} ({where}); {SECURITY_NOTE}. Use it "
            "on a trusted network only and firewall the port")


def wait_until_listening(host: str, port: int, timeout_s: float,
                         alive: Callable[[], bool] = lambda: True) -> bool:
    """True once ``host:port`` accepts a connection; False after ``timeout_s`` or when
    ``alive()`` says the server process is gone.

    A bare connection is harmless to rpc-server: it reads no HELLO, closes, serves the next.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)  # the port opens within a second of the start
    return False


@dataclass(frozen=True)
class ServerDevice:
    """A device an rpc-server exposes, from its start-up banner."""

    name: str
    description: str
    total_mib: int
    free_mib: int


_BANNER_DEVICE = re.compile(r"^\s+(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")
_BANNER_VERSION = re.compile(r"Starting RPC server v(\d+\.\d+\.\d+)")


def parse_server_banner(output: str) -> tuple[str | None, list[ServerDevice]]:
    """(protocol version, devices) from rpc-server's start-up lines."""
    version = match.group(1) if (match := _BANNER_VERSION.search(output)) else None
    devices = [ServerDevice(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)))
               for line in output.splitlines() if (m := _BANNER_DEVICE.match(line))]
    return version, devices


class LocalRpcWorker:
    """One ``rpc-server`` child process; a context manager that stops it on exit."""

    def __init__(self, tools: LlamaTools, host: str = "127.0.0.1", port: int | None = None,
                 threads: int = 0, devices: Sequence[str] = ()) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.argv = rpc_server_argv(tools, host, self.port, threads, devices)
        self.process: subprocess.Popen[bytes] | None = None
        self.output = ""  # what it printed, once stopped

    @property
    def worker(self) -> RpcWorker:
        return RpcWorker(self.host, self.port)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LocalRpcWorker:
        """Start it and wait until its port accepts connections."""
        from apex_gui.core.fit.rpc_workers import probe_environment

        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=probe_environment())
        process = self.process
        if wait_until_listening(self.host, self.port, timeout_s,
                                alive=lambda: process.poll() is None):
            return self
        output = self.stop()
        if process.returncode is not None and process.returncode != -15:
            raise RuntimeError(f"rpc-server on {self.worker} exited at start (code "
                               f"{process.returncode}): {output.strip()[-400:]}")
        raise RuntimeError(f"rpc-server on {self.worker} did not open its port within "
                           f"{timeout_s:g} s")

    def kill(self) -> None:
        """Stop it abruptly, as a crash or a pulled cable would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> str:
        """Stop it (terminate, then kill) and return everything it printed."""
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        stream = self.process.stdout
        if stream is not None and not stream.closed:
            self.output += stream.read().decode("utf-8", "replace")
            stream.close()
        return self.output

    def __enter__(self) -> LocalRpcWorker:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
