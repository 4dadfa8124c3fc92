"""llama.cpp RPC workers: addresses, how safe they are, and what each one offers.

A worker is an ``rpc-server`` on another (or this) machine; the tools reach it with
``--rpc host:port,...`` and treat each of its devices as one more device to split layers
across (llama.cpp puts the RPC devices first, in ``--rpc`` order, then the local GPUs).

What llama.cpp does, read from its sources (ggml-rpc, common/arg.cpp), and what this module
follows:

* An endpoint is split at its *first* colon and resolved with ``gethostbyname``: IPv4
  addresses and host names only (no IPv6), a port in 1..65535.
* ``--rpc A --list-devices`` connects, shakes hands and prints one line per device,
  ``  RPC0: A (TOTAL MiB, FREE MiB free)``, the description being the endpoint.
* A worker that does not answer makes the tool abort with ``Failed to connect to A``; one
  with another protocol version prints ``RPC server version mismatch: M.m.p`` and
  ``RPC handshake failed for A``; a worker lost mid-run gives ``Remote RPC server crashed
  or returned malformed response``. The tool dies with SIGABRT in every case.
* An address that drops packets blocks ``connect`` for the system's TCP timeout (minutes),
  and ``rpc-server`` serves one client at a time: a probe therefore has a short deadline.
* The protocol has no authentication: anyone who reaches the port can run code on the
  worker's devices and read what is in them. Loopback and private networks only.

Everything here but :func:`probe_workers` and :func:`resolve_host` is pure.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING

from apex_gui.core.jobs.parsers import (
    RPC_CONNECT_FAILED, RPC_HANDSHAKE_FAILED, RPC_LOST, RPC_RESOLVE_FAILED, RPC_UNSUPPORTED, RPC_VERSION_MISMATCH, rpc_protocol_text,
)
from apex_gui.core.jobs.run_options import rpc_args
from apex_gui.core.jobs.tools import child_environment
from apex_gui.core.units import MiB, format_size

if TYPE_CHECKING:
    from apex_gui.core.jobs.tools import LlamaTools

__all__ = [
    "DEFAULT_RPC_PORT",
    "MAX_RPC_SERVERS",
    "PROBE_TIMEOUT_S",
    "AddressScope",
    "RemoteDevice",
    "RpcWorker",
    "RpcWorkerError",
    "WorkerProbe",
    "classify_host",
    "parse_list_devices",
    "parse_probe_output",
    "parse_worker",
    "parse_workers",
    "number_devices",
    "probe_argv",
    "probe_workers",
    "resolve_host",
    "worker_warnings",
    "workers_text",
]

#: rpc-server's default port.
DEFAULT_RPC_PORT = 50052
#: GGML_RPC_MAX_SERVERS in ggml-rpc.h.
MAX_RPC_SERVERS = 16
#: Seconds a probe may take: a reachable worker answers in well under one.
PROBE_TIMEOUT_S = 8.0


class RpcWorkerError(ValueError):
    """A worker list that llama.cpp would refuse or misread; the message names the entry."""


class AddressScope(str, Enum):
    """How far an address reaches, for the no-authentication warning."""

    LOOPBACK = "loopback"
    PRIVATE = "private network"
    PUBLIC = "public"
    UNRESOLVED = "unresolved name"

    @property
    def safe(self) -> bool:
        return self in (AddressScope.LOOPBACK, AddressScope.PRIVATE)


@dataclass(frozen=True)
class RpcWorker:
    """One ``rpc-server`` endpoint."""

    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.endpoint


_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*\.?$")


def parse_worker(text: str) -> RpcWorker:
    """``host:port`` as llama.cpp reads it; :class:`RpcWorkerError` naming the entry otherwise."""
    entry = text.strip()
    if not entry:
        raise RpcWorkerError("an RPC worker entry is empty; write host:port, e.g. "
                             f"192.168.1.20:{DEFAULT_RPC_PORT}")
    if entry.startswith("[") or entry.count(":") > 1:
        raise RpcWorkerError(f"RPC worker {entry!r}: llama.cpp's RPC client takes IPv4 "
                             "addresses or host names only (it splits at the first colon); "
                             "use the worker's IPv4 address or a name that resolves to it")
    host, colon, port_text = entry.partition(":")
    if not colon:
        raise RpcWorkerError(f"RPC worker {entry!r} has no port; write {entry}:"
                             f"{DEFAULT_RPC_PORT} (rpc-server's default port)")
    # ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses.
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise RpcWorkerError(f"RPC worker {entry!r}: the port must be a number from 1 to 65535")
    if not host or not _HOST_NAME.match(host):
        raise RpcWorkerError(f"RPC worker {entry!r}: {host!r} is not an IPv4 address or host "
                             "name")
    return RpcWorker(host, int(port_text))


def parse_workers(text: str | Iterable[str]) -> tuple[RpcWorker, ...]:
    """A comma- or space-separated list (or several such strings) in the order given."""
    chunks = [text] if isinstance(text, str) else list(text)
    entries = [e for chunk in chunks for e in re.split(r"[,\s]+", chunk) if e.strip()]
    workers: list[RpcWorker] = []
    for entry in entries:
        worker = parse_worker(entry)
        if worker in workers:
            # llama.cpp registers an endpoint once and silently ignores the repeat, which
            # would make a planned split count one worker twice.
            raise RpcWorkerError(f"RPC worker {worker} is listed twice; list each worker once")
        workers.append(worker)
    if len(workers) > MAX_RPC_SERVERS:
        raise RpcWorkerError(f"{len(workers)} RPC workers listed; llama.cpp accepts at most "
                             f"{MAX_RPC_SERVERS} (GGML_RPC_MAX_SERVERS)")
    return tuple(workers)


def workers_text(workers: Sequence[RpcWorker]) -> str:
    """The list as ``--rpc`` takes it."""
    return ",".join(w.endpoint for w in workers)


# ----------------------------------------------------------------------------- safety


def classify_host(host: str, resolved: str | None = None) -> AddressScope:
    """Loopback, private network, public or unresolved.

    ``resolved`` is the IPv4 address a host name resolved to (see :func:`resolve_host`).
    Addresses that are not globally routable (RFC 1918, link-local, the 100.64/10 shared
    space VPN meshes use) count as private.
    """
    if host.lower() in ("localhost", "localhost.localdomain"):
        return AddressScope.LOOPBACK
    for candidate in (host, resolved):
        if not candidate:
            continue
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if address.is_loopback:
            return AddressScope.LOOPBACK
        if address.is_unspecified:
            return AddressScope.PUBLIC  # 0.0.0.0: every interface, the public one included
        if address.is_private or address.is_link_local or not address.is_global:
            return AddressScope.PRIVATE
        return AddressScope.PUBLIC
    return AddressScope.UNRESOLVED


def resolve_host(host: str) -> str | None:
    """The IPv4 address ``host`` resolves to (as llama.cpp's client would), or None."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


SECURITY_NOTE = ("the llama.cpp RPC protocol has no authentication or encryption: whoever "
                 "reaches the port can run code on the worker and read its memory")


def worker_warnings(workers: Sequence[RpcWorker],
                    resolve: Callable[[str], str | None] = resolve_host) -> list[str]:
    """One line per worker that is not on loopback or a private network."""
    lines = []
    for worker in workers:
        scope = classify_host(worker.host, resolve(worker.host))
        if scope is AddressScope.PUBLIC:
            lines.append(f"warning: RPC worker {worker} is on a public address; {SECURITY_NOTE}. "
                         "Reach it over a private network or a VPN only, and firewall the port")
        elif scope is AddressScope.UNRESOLVED:
            lines.append(f"warning: RPC worker {worker}: the name {worker.host!r} does not "
                         "resolve, so whether it is private cannot be checked; "
                         f"{SECURITY_NOTE}")
    return lines


# ----------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class RemoteDevice:
    """One device a worker offers, as the tools list it."""

    name: str  # RPC0, RPC1... (numbered across every --rpc endpoint of one run)
    endpoint: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class WorkerProbe:
    """What probing one worker found."""

    worker: RpcWorker
    reachable: bool
    devices: tuple[RemoteDevice, ...] = ()
    error: str | None = None  # one line naming the worker, what went wrong and what to do
    version_mismatch: str | None = None  # the worker's protocol version when it differs
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(d.total_bytes for d in self.devices)

    @property
    def free_bytes(self) -> int:
        return sum(d.free_bytes for d in self.devices)

    def summary(self) -> str:
        """One line: the worker, its devices and memory, or why it cannot be used."""
        if not self.reachable:
            return self.error or f"RPC worker {self.worker}: unreachable"
        devices = ", ".join(
            f"{d.name} {format_size(d.free_bytes)} free of {format_size(d.total_bytes)}"
            for d in self.devices)
        return f"RPC worker {self.worker}: {devices or 'no devices'}"


_DEVICE_LINE = re.compile(r"^\s*(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")


def parse_list_devices(output: str) -> list[RemoteDevice]:
    """The RPC devices in a tool's ``--list-devices`` output (local GPUs are left out)."""
    devices = []
    for line in output.splitlines():
        match = _DEVICE_LINE.match(line)
        if match and match.group(1).startswith("RPC"):
            devices.append(RemoteDevice(match.group(1), match.group(2).strip(),
                                        int(match.group(3)) * MiB, int(match.group(4)) * MiB))
    return devices


def parse_probe_output(worker: RpcWorker, output: str, exit_code: int | None,
                       timeout_s: float | None = None, seconds: float = 0.0,
                       host_resolves: bool = True) -> WorkerProbe:
    """Judge one ``--rpc WORKER --list-devices`` run; ``exit_code`` None means it timed out.

    ``host_resolves``: False when the worker's name does not resolve (the tools say only
    "Failed to connect" then: their "Cannot resolve host" line goes to a logger not set up
    at that point).
    """
    name = f"RPC worker {worker}"
    if exit_code is None:
        return WorkerProbe(worker, False, error=(
            f"{name}: no answer within {timeout_s or PROBE_TIMEOUT_S:g} s: a firewall dropping "
            "the packets, a wrong address, or the worker busy with another client (rpc-server "
            "serves one at a time); check that `rpc-server` runs there and the port is open"),
            seconds=seconds)
    if RPC_UNSUPPORTED in output:
        return WorkerProbe(worker, False, error=(
            f"{name}: this llama.cpp build has no RPC support; build it with -DGGML_RPC=ON "
            "(`make` in the APEX Studio folder does)"), seconds=seconds)
    if match := RPC_VERSION_MISMATCH.search(output):
        theirs = match.group(1)
        return WorkerProbe(worker, False, version_mismatch=theirs, error=(
            f"{name} speaks RPC protocol {theirs}, these tools {rpc_protocol_text()}: run the same "
            "llama.cpp version on the worker as here (rebuild rpc-server there)"),
            seconds=seconds)
    if RPC_RESOLVE_FAILED.search(output) or not host_resolves:
        return WorkerProbe(worker, False, error=(
            f"{name}: the host name {worker.host!r} does not resolve; use the worker's IP "
            "address or fix the name"), seconds=seconds)
    if RPC_CONNECT_FAILED.search(output):
        return WorkerProbe(worker, False, error=(
            f"{name}: connection refused (nothing listens on port {worker.port}, or the host is "
            f"down); start it there with `rpc-server -H ADDRESS -p {worker.port}` "
            "or `apex-studio rpc-worker`"), seconds=seconds)
    if RPC_HANDSHAKE_FAILED.search(output) or RPC_LOST in output:
        return WorkerProbe(worker, False, error=(
            f"{name} accepted the connection but did not complete the RPC handshake: is it an "
            "rpc-server of the same llama.cpp version, and not another service on that port?"),
            seconds=seconds)
    devices = tuple(d for d in parse_list_devices(output) if d.endpoint == worker.endpoint)
    if exit_code == 0 and devices:
        return WorkerProbe(worker, True, devices, seconds=seconds)
    tail = " | ".join(line.strip() for line in output.splitlines()[-3:] if line.strip())
    return WorkerProbe(worker, False, error=(
        f"{name}: probe failed (exit code {exit_code}){': ' + tail if tail else ''}"),
        seconds=seconds)


def probe_argv(tools: LlamaTools, worker: RpcWorker) -> list[str]:
    """``llama-perplexity --rpc WORKER --list-devices``: connects, lists, exits (no model).

    ``--rpc`` must come first: the options are applied in order and ``--list-devices``
    exits as soon as it is read.
    """
    return [str(tools.path("perplexity")), *rpc_args([worker.endpoint]), "--list-devices"]


def probe_environment() -> dict[str, str]:
    """The tools' child environment; a failed connection aborts, and ggml would otherwise
    try to attach a debugger for a backtrace first."""
    env = child_environment()
    env["GGML_NO_BACKTRACE"] = "1"
    return env


def probe_workers(workers: Sequence[RpcWorker], tools: LlamaTools,
                  timeout_s: float = PROBE_TIMEOUT_S) -> tuple[WorkerProbe, ...]:
    """Probe every worker at once, each in its own tool process, within ``timeout_s`` in all.

    One process per worker: an unreachable worker aborts its tool, which must not hide what
    the others offer. :class:`~apex_gui.core.jobs.tools.ToolNotFoundError` if the tool is missing.
    """
    env = probe_environment()
    commands = [probe_argv(tools, w) for w in workers]  # a missing tool fails before any start
    started = time.monotonic()
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env) for argv in commands]
    probes = []
    for worker, process in zip(workers, processes):
        left = max(0.1, timeout_s - (time.monotonic() - started))
        try:
            out, _ = process.communicate(timeout=left)
            code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
            code = None
        text = out.decode("utf-8", "replace")
        # Only a failed connection costs a look-up (which may wait on a slow DNS server).
        resolves = not RPC_CONNECT_FAILED.search(text) or resolve_host(worker.host) is not None
        probes.append(parse_probe_output(worker, text, code, timeout_s,
                                         time.monotonic() - started, host_resolves=resolves))
    return number_devices(probes)


def number_devices(probes: Sequence[WorkerProbe]) -> tuple[WorkerProbe, ...]:
    """The probes with their devices named as one run across every reachable worker names
    them: RPC0, RPC1... in worker order (each probe alone calls its first device RPC0)."""
    numbered, index = [], 0
    for probe in probes:
        devices = []
        for device in probe.devices:
            devices.append(replace(device, name=f"RPC{index}"))
            index += 1
        numbered.append(replace(probe, devices=tuple(devices)))
    return tuple(numbered)


# ----------------------------------------------------------------------------- runs
