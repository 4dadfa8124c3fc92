"""``apex-studio rpc-worker`` and the ``--rpc host:port,...`` option of the job commands.

``rpc-worker`` runs llama.cpp's ``rpc-server`` in the foreground, bound to loopback unless
``--host`` says otherwise (with a warning: the protocol has no authentication). The option
helpers parse a worker list, warn about addresses beyond private networks, and probe every
worker before a run so an unreachable one is named at once instead of aborting the tool.
"""

from __future__ import annotations

import argparse
import os
import sys

from apex_gui.core.fit.rpc_workers import (DEFAULT_RPC_PORT, PROBE_TIMEOUT_S, WorkerProbe,
                                           parse_workers, probe_environment, probe_workers,
                                           worker_warnings)
from apex_gui.core.jobs.tools import LlamaTools, ToolNotFoundError
from apex_gui.core.settings import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "rpc-worker", help="run a llama.cpp rpc-server here (a worker for --rpc)",
        description="Start llama.cpp's rpc-server in the foreground so another machine's "
                    "imatrix, evaluation or llama-server runs can use this machine's devices "
                    "with --rpc HOST:PORT. It listens on 127.0.0.1 unless --host is given; "
                    "the RPC protocol has no authentication, so expose it to trusted private "
                    "networks only. Ctrl-C stops it.")
    worker.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    worker.add_argument("--port", type=int, default=DEFAULT_RPC_PORT,
                        help=f"port (default {DEFAULT_RPC_PORT})")
    worker.add_argument("-t", "--threads", type=int, default=0,
                        help="CPU threads for a CPU device (default: rpc-server's, half the cores)")
    worker.add_argument("--device", action="append", default=[], metavar="NAME",
                        help="expose only this device (CUDA0, ...); repeatable (default: every "
                             "accelerator, else the CPU)")
    worker.add_argument("--cache", action="store_true",
                        help="let rpc-server cache received tensors on disk (faster reloads)")
    worker.add_argument("--llama-cpp-dir", help="a llama.cpp build folder to look in first")
    worker.set_defaults(func=run_rpc_worker)


def add_rpc_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpc", metavar="HOST:PORT,...",
                        help="llama.cpp RPC workers (rpc-server) to split the model across; "
                             "probed before the run")


def checked_workers(text: str | None, tools: object | None = None,
                    timeout_s: float = PROBE_TIMEOUT_S,
                    stream: object | None = None) -> tuple[list[str], tuple[WorkerProbe, ...]]:
    """(endpoints, probes) for ``--rpc TEXT``; warnings go to ``stream`` (stderr).

    ValueError (one line per worker, exit code 2) when the list is malformed or a worker
    cannot be used: a run across it would abort after loading the model.
    """
    if not text:
        return [], ()

    out = stream if stream is not None else sys.stderr
    workers = parse_workers(text)
    for line in worker_warnings(workers):
        print(line, file=out)  # type: ignore[call-overload]
    try:
        probes = probe_workers(workers, tools if tools is not None else LlamaTools(),  # type: ignore[arg-type]
                               timeout_s)
    except ToolNotFoundError as error:
        raise ValueError(str(error)) from None
    failed = [p.error or str(p.worker) for p in probes if not p.reachable]
    if failed:
        raise ValueError("; ".join(failed))
    return [w.endpoint for w in workers], probes


def probe_dict(probe: WorkerProbe) -> dict[str, object]:
    """A probe as JSON: the worker, whether it answered, its devices, or the error line."""
    return {"worker": probe.worker.endpoint, "reachable": probe.reachable,
            "devices": [{"name": d.name, "total_bytes": d.total_bytes,
                         "free_bytes": d.free_bytes} for d in probe.devices],
            "error": probe.error, "version_mismatch": probe.version_mismatch}


def run_rpc_worker(args: argparse.Namespace) -> int:
    # start-up: the local worker loads only when one is started
    from apex_gui.core.fit.rpc_local import (bind_warning, check_port_free, listen_address,
                                             rpc_server_argv)

    if args.threads < 0:
        raise ValueError(f"-t {args.threads}: give a number of threads, or 0 for rpc-server's "
                         "default")
    # rpc-server exits 0 on a host it cannot read or a port it cannot take: both are
    # checked here first, and the host is passed on written in full.
    address = listen_address(args.host)
    check_port_free(address, args.port)
    try:
        tools = LlamaTools(args.llama_cpp_dir or load_settings().llama_cpp_dir or None)
        argv = rpc_server_argv(tools, address, args.port, args.threads, args.device,
                               args.cache)
    except ToolNotFoundError as error:
        raise ValueError(f"{error} (rpc-server comes with builds made with -DGGML_RPC=ON)") \
            from None
    if address != args.host:
        print(f"apex-studio rpc-worker: --host {args.host} is {address}", file=sys.stderr)
    warning = bind_warning(address)
    if warning:
        print(warning, file=sys.stderr)
    reach = "THIS-MACHINE'S-ADDRESS" if address == "0.0.0.0" else address
    print(f"apex-studio rpc-worker: {' '.join(argv)}  (use --rpc {reach}:{args.port} on the "
          "client; Ctrl-C stops it)", file=sys.stderr, flush=True)
    # Become rpc-server: Ctrl-C, SIGTERM and a closed terminal reach it directly, and no
    # Python parent is left to die first and orphan it.
    os.execve(argv[0], argv, probe_environment())
    return 0  # not reached
