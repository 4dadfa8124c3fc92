"""Start ``rpc-server`` workers on this machine (for a test, a demo or a spare GPU box).

A local worker binds to loopback unless told otherwise: the RPC protocol has no
authentication, so a worker on another interface is a remote code runner for anyone who
reaches it (see :mod:`apex_gui.core.fit.rpc_workers`).

``rpc-server`` prints its banner through a buffered ``printf`` (nothing arrives on a pipe
until it exits), so readiness is judged by its port accepting a connection.
"""

from __future__ import annotations

import errno
import re
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from apex_gui.core.fit.rpc_workers import (DEFAULT_RPC_PORT, SECURITY_NOTE, AddressScope, RpcWorker,
                                           RpcWorkerError, classify_host, probe_environment)

if TYPE_CHECKING:
    from apex_gui.core.jobs.tools import LlamaTools

__all__ = ["LocalRpcWorker", "ServerDevice", "bind_warning", "check_port_free", "free_port",
           "listen_address", "parse_server_banner", "rpc_server_argv", "wait_until_listening"]

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


def listen_address(host: str) -> str:
    """The IPv4 address ``rpc-server -H`` would bind for ``host``, written in full.

    rpc-server reads its host with ``inet_addr``, which takes short and hexadecimal forms
    ("0", "0x0" and "127.1" are 0.0.0.0, 0.0.0.0 and 127.0.0.1) and refuses names
    ("localhost": "Invalid host address", after which it exits 0). A name is resolved here
    and its address passed on, so what is warned about is what is bound.
    :class:`RpcWorkerError` names a host that is neither.
    """
    text = host.strip()
    try:
        address = socket.inet_ntoa(socket.inet_aton(text))
    except (OSError, ValueError):
        address = None
    if address is None:
        if not text or "\x00" in text:
            raise RpcWorkerError("--host is empty; give the address to listen on, e.g. "
                                 "127.0.0.1 (this machine only) or 192.168.1.20")
        try:
            address = socket.gethostbyname(text)
        except (OSError, UnicodeError):
            raise RpcWorkerError(
                f"--host {text!r} cannot be resolved to an IPv4 address; give the address to "
                "listen on, e.g. 127.0.0.1 (this machine only) or this machine's address on "
                "your private network (`ip -4 addr`)") from None
    if address == "255.255.255.255":  # inet_addr's error value: rpc-server refuses it
        raise RpcWorkerError(f"--host {text}: 255.255.255.255 is the broadcast address, not "
                             "one to listen on; give this machine's address or 127.0.0.1")
    return address


def check_port_free(address: str, port: int) -> None:
    """:class:`RpcWorkerError` when rpc-server could not listen on ``address:port`` now.

    rpc-server exits 0 after "Failed to create server socket", so this is tried first (as
    it binds: SO_REUSEADDR, IPv4). A port taken between this check and rpc-server's own bind
    still ends the way rpc-server ends it.
    """
    if not 1 <= port <= 65535:
        raise RpcWorkerError(f"--port {port}: a port is a number from 1 to 65535 (rpc-server's "
                             f"default is {DEFAULT_RPC_PORT})")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                why = ("is in use (another rpc-server, or another program); stop it or pick "
                       "another port with --port")
            elif error.errno == errno.EADDRNOTAVAIL:
                why = ("cannot be listened on: the address is not one of this machine's "
                       "(`ip -4 addr` lists them)")
            elif error.errno == errno.EACCES:
                why = "needs more rights than this user has: use a port above 1023"
            else:
                why = f"cannot be listened on ({error.strerror or error})"
            raise RpcWorkerError(f"{address}:{port} {why}") from None


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
