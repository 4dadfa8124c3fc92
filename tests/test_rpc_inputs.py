"""Hostile input to the RPC worker command and fields (issue 20, findings 13 and 14, and the
unresolvable host): one line and a non-zero exit where rpc-server would have failed and
exited 0, the address that is really bound named in the warning, no traceback in the window."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from apex_gui.core.fit.rpc_local import bind_warning, listen_address
from apex_gui.core.fit.rpc_workers import (RpcWorker, RpcWorkerError, parse_probe_output,
                                           parse_worker, probe_workers)
from fakes import cli, fake_snapshot, refused

LOGS = Path(__file__).parent / "logs"


@pytest.mark.parametrize("entry", ["h:\u00b2", "h:\uff15\uff10\uff10\uff15\uff12", "h:\u0665",
                                   "10.0.0.2:5\u00b9"])
def test_a_port_of_non_ascii_digits_is_named_not_a_raw_int_error(entry: str) -> None:
    with pytest.raises(RpcWorkerError) as caught:
        parse_worker(entry)
    assert "port must be a number from 1 to 65535" in str(caught.value)
    assert repr(entry) in str(caught.value)


def test_the_cli_names_a_bad_port_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, ["hardware", "--rpc", "h:\u00b2"], "port must be a number")
    assert "invalid literal" not in err


@pytest.mark.parametrize("host,address", [("0", "0.0.0.0"), ("0x0", "0.0.0.0"),
                                          ("127.1", "127.0.0.1"), ("localhost", "127.0.0.1"),
                                          (" 192.168.1.20 ", "192.168.1.20")])
def test_the_host_is_the_address_rpc_server_would_bind(host: str, address: str) -> None:
    assert listen_address(host) == address


def test_every_interface_is_called_so_however_it_is_written() -> None:
    for host in ("0", "0x0", "0.0.0.0", "0x00000000"):
        warning = bind_warning(listen_address(host))
        assert warning is not None and "every interface" in warning
        assert "named interface" not in warning


@pytest.mark.parametrize("host,says", [("nosuchhost.invalid", "cannot be resolved"),
                                       ("255.255.255.255", "broadcast"), ("", "empty")])
def test_rpc_worker_refuses_a_host_it_cannot_listen_on(capsys: pytest.CaptureFixture[str],
                                                       host: str, says: str) -> None:
    refused(capsys, ["rpc-worker", "--host", host, "--port", "50999"], says)


def test_rpc_worker_refuses_a_port_in_use_with_exit_2(llama_tools) -> None:  # type: ignore[no-untyped-def]
    """rpc-server prints "Failed to create server socket" and exits 0; the command does not
    get that far."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(cli("rpc-worker", "--port", str(port)), capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{port} is in use" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_rpc_worker_on_localhost_serves_on_loopback(llama_tools) -> None:  # type: ignore[no-untyped-def]
    """rpc-server itself refuses "localhost" ("Invalid host address", exit 0)."""
    from apex_gui.core.fit.rpc_local import free_port, wait_until_listening

    port = free_port()
    child = subprocess.Popen(cli("rpc-worker", "--host", "localhost", "--port", str(port),
                                 "-t", "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until_listening("127.0.0.1", port, 60, alive=lambda: child.poll() is None)
        (probe,) = probe_workers([RpcWorker("127.0.0.1", port)], llama_tools, timeout_s=20)
        assert probe.reachable
    finally:
        child.terminate()
        _, err = child.communicate(timeout=30)
    assert "--host localhost is 127.0.0.1" in err.decode()


def test_an_unresolvable_worker_is_not_called_refused() -> None:
    """The tools print the same "Failed to connect" for a name that does not resolve (their
    "Cannot resolve host" line is lost): recorded for 127.0.0.1, renamed here."""
    output = (LOGS / "rpc_connect_refused.log").read_text(encoding="utf-8")
    worker = RpcWorker("nosuch.invalid", 50052)
    output = output.replace("127.0.0.1", "nosuch.invalid")
    port = output.split("nosuch.invalid:")[1].split()[0] if "nosuch.invalid:" in output else ""
    output = output.replace(f"nosuch.invalid:{port}", "nosuch.invalid:50052")
    assert "refused" in (parse_probe_output(worker, output, -6).error or "")
    probe = parse_probe_output(worker, output, -6, host_resolves=False)
    assert probe.error is not None and "does not resolve" in probe.error
    assert "refused" not in probe.error


def test_probing_an_unresolvable_worker_says_it_does_not_resolve(llama_tools) -> None:  # type: ignore[no-untyped-def]
    (probe,) = probe_workers([RpcWorker("nosuchhost.invalid", 50052)], llama_tools,
                             timeout_s=30)
    assert not probe.reachable
    assert probe.error is not None and "'nosuchhost.invalid' does not resolve" in probe.error


@pytest.mark.gui
def test_the_window_field_names_a_bad_port_without_a_traceback(qtbot, twin_model) -> None:  # type: ignore[no-untyped-def]
    from apex_gui.views.hardware.hardware_panel import HardwarePanel

    panel = HardwarePanel(twin_model, snapshot=fake_snapshot(), auto_probe=False)
    qtbot.addWidget(panel)
    panel.rpc_box.edit.setText("h:\u00b2")
    assert panel.rpc_box.probe() is None
    assert "port must be a number from 1 to 65535" in panel.rpc_box.status.text()
    assert panel.rpc_box.endpoints() == ()
    panel.shutdown()


def test_a_worker_list_from_settings_with_a_bad_port_refuses_the_run_in_one_line() -> None:
    from apex_gui.core.fit.rpc_workers import parse_workers

    with pytest.raises(RpcWorkerError, match="port must be a number"):
        parse_workers("10.0.0.2:50052, h:\u00b2")


@pytest.mark.gui
def test_a_probe_due_after_the_window_closed_does_nothing(qtbot) -> None:  # type: ignore[no-untyped-def]
    """The field's debounce fired after Ctrl+Q had shut the worker pool: a traceback."""
    from apex_gui.qt.workers import WorkerPool
    from apex_gui.views.hardware.rpc_workers_box import RpcWorkersBox

    pool = WorkerPool()
    box = RpcWorkersBox(pool, "127.0.0.1:1", probe=lambda workers: ())
    qtbot.addWidget(box)
    pool.shutdown()
    assert box.probe() is None
    assert box.probe_button.isEnabled()
