"""RPC workers without running a model: worker lists, address safety, the probe parser on
recorded real llama.cpp output, jobs' --rpc arguments, and the memory plan across workers."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from apex_gui.core.fit.cluster import explicit_split, machine_with_workers, machines_needed
from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry
from apex_gui.core.fit.device_spec import parse_device_spec
from apex_gui.core.fit.memory import estimate_memory, weight_table
from apex_gui.core.fit.recommend import evaluate, profile_candidates, recommend
from apex_gui.core.fit.placement import MachineMemory, Verdict
from apex_gui.core.fit.rpc_local import bind_warning, parse_server_banner
from apex_gui.core.fit.rpc_workers import (
    AddressScope, RemoteDevice, RpcWorker, RpcWorkerError, WorkerProbe, classify_host,
    parse_list_devices, parse_probe_output, parse_worker, parse_workers,
    worker_warnings,
)
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.evaluations import KLDivergenceJob, PerplexityJob
from apex_gui.core.jobs.parsers import rpc_failure_message
from apex_gui.core.jobs.pipeline import Pipeline, job_from_dict
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions, rpc_args
from apex_gui.core.jobs.specs import JobError

LOGS = Path(__file__).parent / "logs"
GB = 10**9
MiB = 1024**2


def log(name: str) -> str:
    return (LOGS / name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- worker lists


def test_worker_lists_parse_in_order_with_commas_or_spaces():
    workers = parse_workers("192.168.1.20:50052, gpu-box.lan:50053 127.0.0.1:1")
    assert workers == (RpcWorker("192.168.1.20", 50052), RpcWorker("gpu-box.lan", 50053),
                       RpcWorker("127.0.0.1", 1))
    assert rpc_args([w.endpoint for w in workers]) == [
        "--rpc", "192.168.1.20:50052,gpu-box.lan:50053,127.0.0.1:1"]
    assert rpc_args([]) == []


@pytest.mark.parametrize("text, says", [
    ("10.0.0.2", "has no port; write 10.0.0.2:50052"),
    ("10.0.0.2:0", "port must be a number from 1 to 65535"),
    ("10.0.0.2:70000", "port must be a number from 1 to 65535"),
    ("10.0.0.2:http", "port must be a number"),
    ("[::1]:50052", "IPv4 addresses or host names only"),
    ("fe80::1:50052", "IPv4 addresses or host names only"),
    ("bad_host!:50052", "is not an IPv4 address or host name"),
    (":50052", "is not an IPv4 address or host name"),
])
def test_bad_worker_entries_are_named_with_the_fix(text, says):
    with pytest.raises(RpcWorkerError, match="RPC worker") as caught:
        parse_worker(text)
    assert says in str(caught.value)


def test_a_worker_listed_twice_or_more_than_sixteen_is_refused():
    with pytest.raises(RpcWorkerError, match="10.0.0.2:50052 is listed twice"):
        parse_workers("10.0.0.2:50052,10.0.0.3:50052,10.0.0.2:50052")
    with pytest.raises(RpcWorkerError, match="at most 16"):
        parse_workers(",".join(f"10.0.0.{i}:50052" for i in range(1, 18)))


# ----------------------------------------------------------------------------- address safety


@pytest.mark.parametrize("host, resolved, scope", [
    ("127.0.0.1", None, AddressScope.LOOPBACK),
    ("127.5.5.5", None, AddressScope.LOOPBACK),
    ("localhost", None, AddressScope.LOOPBACK),
    ("10.1.2.3", None, AddressScope.PRIVATE),
    ("172.16.0.9", None, AddressScope.PRIVATE),
    ("192.168.1.20", None, AddressScope.PRIVATE),
    ("169.254.10.1", None, AddressScope.PRIVATE),  # link-local (a direct cable)
    ("100.101.102.103", None, AddressScope.PRIVATE),  # 100.64/10: VPN meshes (Tailscale)
    ("8.8.8.8", None, AddressScope.PUBLIC),
    ("172.32.0.1", None, AddressScope.PUBLIC),  # just outside 172.16/12
    ("0.0.0.0", None, AddressScope.PUBLIC),  # every interface
    ("gpu-box.lan", "192.168.1.30", AddressScope.PRIVATE),
    ("worker.example.com", "93.184.216.34", AddressScope.PUBLIC),
    ("no-such-host.invalid", None, AddressScope.UNRESOLVED),
])
def test_addresses_are_classified_for_the_security_warning(host, resolved, scope):
    assert classify_host(host, resolved) is scope
    assert scope.safe == (scope in (AddressScope.LOOPBACK, AddressScope.PRIVATE))


def test_warnings_name_public_and_unresolved_workers_only():
    names = {"gpu-box.lan": "192.168.1.30", "cloud.example.com": "93.184.216.34"}
    workers = parse_workers("127.0.0.1:50052,gpu-box.lan:50052,cloud.example.com:50052,"
                            "ghost.invalid:50052")
    lines = worker_warnings(workers, resolve=names.get)
    assert len(lines) == 2
    assert "cloud.example.com:50052 is on a public address" in lines[0]
    assert "no authentication" in lines[0]
    assert "ghost.invalid:50052" in lines[1] and "does not resolve" in lines[1]


def test_local_workers_warn_when_bound_beyond_loopback():
    assert bind_warning("127.0.0.1") is None
    assert "every interface" in bind_warning("0.0.0.0")
    assert "private-network" in bind_warning("192.168.1.5")
    assert "no authentication" in bind_warning("203.0.113.7")


# ----------------------------------------------------------------------------- probe output


def test_list_devices_of_one_worker_from_recorded_output():
    devices = parse_list_devices(log("rpc_list_devices.log"))
    assert len(devices) == 1
    device = devices[0]
    assert device.name == "RPC0" and device.endpoint.startswith("127.0.0.1:")
    assert 0 < device.free_bytes <= device.total_bytes
    assert device.total_bytes % MiB == 0
    worker = parse_worker(device.endpoint)
    probe = parse_probe_output(worker, log("rpc_list_devices.log"), 0)
    assert probe.reachable and probe.error is None and probe.devices == (device,)
    assert probe.summary().startswith(f"RPC worker {worker}: RPC0 ")


def test_list_devices_of_two_workers_are_numbered_across_both():
    devices = parse_list_devices(log("rpc_list_devices_two.log"))
    assert [d.name for d in devices] == ["RPC0", "RPC1"]
    assert devices[0].endpoint != devices[1].endpoint


def test_a_refused_connection_names_the_worker_and_how_to_start_it():
    output = log("rpc_connect_refused.log")
    endpoint = output.split("Failed to connect to ")[1].split()[0]
    probe = parse_probe_output(parse_worker(endpoint), output, -6)
    assert not probe.reachable and not probe.devices
    assert probe.error.startswith(f"RPC worker {endpoint}: connection refused")
    assert "apex-studio rpc-worker" in probe.error


def test_a_worker_of_another_protocol_version_is_reported_as_such():
    output = log("rpc_version_mismatch.log")
    probe = parse_probe_output(RpcWorker("127.0.0.1", 50052), output, -6)
    assert probe.version_mismatch == "6.1.0"
    assert "speaks RPC protocol 6.1.0, these tools 7.0.0" in probe.error
    assert "same llama.cpp version" in probe.error


def test_a_probe_that_timed_out_says_so_without_hanging():
    probe = parse_probe_output(RpcWorker("10.9.9.9", 50052), "", None, timeout_s=3)
    assert not probe.reachable
    assert probe.error.startswith("RPC worker 10.9.9.9:50052: no answer within 3 s")
    assert "one at a time" in probe.error


def test_the_rpc_server_banner_names_its_devices():
    version, devices = parse_server_banner(log("rpc_server_start.log"))
    assert version == "7.0.0"
    assert devices and devices[0].name == "CPU" and devices[0].total_mib > 0


def test_a_worker_lost_mid_run_gives_a_clear_message():
    # Recorded: llama-perplexity across a worker killed mid-run dies of SIGPIPE, silently.
    lost = log("rpc_worker_lost.log")
    assert lost.rstrip().endswith("[exit code -13]")
    message = rpc_failure_message(lost, ["127.0.0.1:40001"], 13)
    assert message is not None
    assert "stopped answering mid-run" in message and "127.0.0.1:40001" in message
    assert "no output was kept" in message
    aborted = rpc_failure_message("Remote RPC server crashed or returned malformed response",
                                  ["127.0.0.1:40001"], 6)
    assert aborted == message
    # Without workers nothing is blamed on one; other deaths and logs have no RPC cause.
    assert rpc_failure_message(lost, [], 13) is None
    assert rpc_failure_message(lost, ["127.0.0.1:40001"], 9) is None
    assert rpc_failure_message(log("perplexity.log"), ["127.0.0.1:40001"]) is None


def test_a_worker_down_at_start_is_named():
    output = log("rpc_connect_refused.log")
    endpoint = output.split("Failed to connect to ")[1].split()[0]
    message = rpc_failure_message(output, [endpoint, "127.0.0.1:1"], 6)
    assert message.startswith(f"RPC worker {endpoint} could not be reached")


# ----------------------------------------------------------------------------- jobs


def test_evaluation_jobs_pass_workers_and_quantize_refuses_them(tiny_qwen2moe, tmp_path,
                                                                llama_tools):
    text = tmp_path / "t.txt"
    text.write_text("x " * 4000)
    workers = ("127.0.0.1:50052", "192.168.1.20:50052")
    imatrix = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=tmp_path / "i.gguf",
                         options=RunOptions(rpc_workers=workers))
    argv = imatrix.argv(llama_tools)
    assert argv[-2:] == ["--rpc", "127.0.0.1:50052,192.168.1.20:50052"]
    assert imatrix.env()["GGML_NO_BACKTRACE"] == "1"
    local = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=tmp_path / "i.gguf")
    assert "--rpc" not in local.argv(llama_tools) and "GGML_NO_BACKTRACE" not in local.env({})
    quantize = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "q.gguf",
                           base_type="Q4_K_M", options=RunOptions(rpc_workers=workers))
    with pytest.raises(JobError, match="quantize jobs run locally only"):
        quantize.argv(llama_tools)


def test_a_pipeline_runs_its_evaluations_across_workers_and_the_spec_keeps_them(tmp_path):
    model, text = tmp_path / "m.gguf", tmp_path / "t.txt"
    steps = [("imatrix", ImatrixJob(model=model, calibration=text,
                                    output_path=tmp_path / "i.gguf")),
             ("quantize", QuantizeJob(source=model, output_path=tmp_path / "q.gguf",
                                      base_type="Q4_K_M", imatrix=tmp_path / "i.gguf")),
             ("ppl", PerplexityJob(model=tmp_path / "q.gguf", text=text)),
             ("kld", KLDivergenceJob(model=tmp_path / "q.gguf",
                                     reference_logits=tmp_path / "r.kld"))]
    spread = Pipeline.from_jobs(steps).with_options(RunOptions(rpc_workers=("10.0.0.2:50052",)))
    by_key = {s.key: s for s in spread.steps}
    workers = {key: step.job.options.rpc_workers for key, step in by_key.items()}
    assert workers["imatrix"] == workers["ppl"] == workers["kld"] == ("10.0.0.2:50052",)
    assert workers["quantize"] == ()
    assert by_key["quantize"].after == ("imatrix",)  # dependencies survive
    spec = by_key["imatrix"].job.to_dict()
    assert spec["rpc_workers"] == ("10.0.0.2:50052",)
    rebuilt = job_from_dict({**spec, "rpc_workers": list(spec["rpc_workers"])})  # as from JSON
    assert rebuilt == by_key["imatrix"].job


# ----------------------------------------------------------------------------- memory plan


@pytest.fixture(scope="module")
def trinity(tmp_path_factory: pytest.TempPathFactory):
    from apex_gui.core.fixtures.twins import write_shape_twin

    path = write_shape_twin(tmp_path_factory.mktemp("trinity") / "Trinity-Large-BF16.gguf",
                            "trinity-large-399b")[0]
    model = open_model(path)
    return ModelGeometry.from_model(model), profile_candidates(model)


def h100_worker(host: str) -> WorkerProbe:
    endpoint = f"{host}:50052"
    return WorkerProbe(parse_worker(endpoint), True,
                       (RemoteDevice("RPC0", endpoint, 80 * GB, 80 * GB),))


def test_workers_lead_the_device_list_and_unreachable_ones_become_notes():
    local = MachineMemory(tuple(parse_device_spec("1 x H100")), 64 * GB)
    down = WorkerProbe(RpcWorker("10.0.0.9", 50052), False,
                       error="RPC worker 10.0.0.9:50052: connection refused")
    machine = machine_with_workers(local, [h100_worker("10.0.0.2"), down,
                                           h100_worker("10.0.0.3")])
    assert [g.name for g in machine.gpus] == ["RPC0 10.0.0.2:50052", "RPC1 10.0.0.3:50052",
                                              local.gpus[0].name]
    assert [g.source for g in machine.gpus] == ["rpc", "rpc", "manual"]
    assert machine.rpc_workers == ("10.0.0.2:50052", "10.0.0.3:50052")
    assert machine.notes == ("RPC worker 10.0.0.9:50052: connection refused (left out of the "
                             "plan)",)


def test_trinity_quality_fits_one_h100_plus_two_h100_workers_with_the_exact_command(trinity):
    geom, candidates = trinity
    quality = next(c for c in candidates if c.key == "quality")
    local = MachineMemory(tuple(parse_device_spec("1 x H100")), 64 * GB)
    alone = evaluate(geom, quality, local, ContextSettings(n_ctx=8192))
    assert alone.verdict is not Verdict.FULL_GPU
    machine = machine_with_workers(local, [h100_worker("10.0.0.2"), h100_worker("10.0.0.3")])
    fit = evaluate(geom, quality, machine, ContextSettings(n_ctx=8192))
    assert fit.verdict is Verdict.FULL_GPU
    command = list(fit.command)
    assert command[command.index("--rpc") + 1] == "10.0.0.2:50052,10.0.0.3:50052"
    split = command[command.index("-ts") + 1].split(",")
    assert len(split) == 3 and sum(map(float, split)) == geom.n_layer_all + 1
    # Per-device headroom: every device keeps its margin, the smallest one is reported.
    for gpu, usage in zip(machine.gpus, fit.estimate.devices):
        assert gpu.free_bytes - usage.total >= 1024 * MiB
    assert fit.headroom_bytes == min(g.free_bytes - u.total
                                     for g, u in zip(machine.gpus, fit.estimate.devices))
    remote = len(fit.estimate.devices[0].layers) + len(fit.estimate.devices[1].layers)
    assert f"{remote} of {geom.n_layer_all} blocks on RPC workers (10.0.0.2:50052, " \
        "10.0.0.3:50052)" in fit.notes[-1]


def test_the_written_out_split_places_every_layer_where_the_default_split_does(trinity):
    geom, candidates = trinity
    mini = next(c for c in candidates if c.key == "mini")
    machine = machine_with_workers(MachineMemory((), 64 * GB),
                                   [h100_worker("10.0.0.2"), h100_worker("10.0.0.3")])
    ctx = ContextSettings(n_ctx=8192)
    weights = weight_table(mini.tensor_bytes, geom)
    free = [g.free_bytes for g in machine.gpus]
    from apex_gui.core.fit.context_memory import Placement

    default = estimate_memory(geom, weights, ctx, free, Placement())
    pinned_placement = explicit_split(geom, machine, Placement())
    pinned = estimate_memory(geom, weights, ctx, free, pinned_placement)
    assert pinned_placement.tensor_split is not None
    assert [d.layers for d in pinned.devices] == [d.layers for d in default.devices]
    assert pinned.devices == default.devices


def test_nothing_fits_says_how_many_machines_like_this_one_would(trinity):
    geom, candidates = trinity
    ctx = ContextSettings(n_ctx=8192)
    laptop = MachineMemory(tuple(parse_device_spec("1 x RTX 4090")), 32 * GB)
    rec = recommend(geom, candidates, laptop, ctx)
    assert rec.recommended is None
    smallest = min(candidates, key=lambda c: c.file_bytes)
    needed = rec.machines_needed
    assert needed is not None and needed >= 2
    assert f"{needed} machines like this one" in rec.notes[-1]
    # The answer is the smallest: one machine fewer does not hold it, that many do.
    assert machines_needed(geom, smallest, laptop, ctx) == needed
    from apex_gui.core.fit.cluster import _clone_workers

    fewer = evaluate(geom, smallest, _clone_workers(laptop, needed - 2), ctx)
    enough = evaluate(geom, smallest, _clone_workers(laptop, needed - 1), ctx)
    assert fewer.verdict is Verdict.DOES_NOT_FIT and enough.verdict is not Verdict.DOES_NOT_FIT
    assert "--rpc" in enough.command


# ----------------------------------------------------------------------------- CLI


def test_cli_refuses_a_malformed_worker_list_in_one_line(capsys, tmp_path, tiny_qwen2moe):
    from apex_gui.cli import main

    code = main(["imatrix", str(tiny_qwen2moe), "-o", str(tmp_path / "i.gguf"),
                 "--rpc", "10.0.0.2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "RPC worker '10.0.0.2' has no port" in err and err.count("\n") == 1


def test_cli_has_rpc_on_imatrix_eval_pipeline_recommend_and_hardware():
    from apex_gui.cli import build_parser

    parser = build_parser()
    for argv in (["imatrix", "m", "-o", "o"], ["eval", "m"], ["pipeline", "m", "--profiles", "q"],
                 ["recommend", "m"], ["hardware"]):
        args = parser.parse_args([*argv, "--rpc", "127.0.0.1:50052"])
        assert args.rpc == "127.0.0.1:50052"
    quantize = parser.parse_args(["quantize", "m", "--profile", "q", "-o", "o"])
    assert not hasattr(quantize, "rpc")  # llama-quantize runs locally
    worker = parser.parse_args(["rpc-worker"])
    assert isinstance(worker, argparse.Namespace)
    assert (worker.host, worker.port) == ("127.0.0.1", 50052)


def test_probed_devices_are_numbered_as_one_run_across_all_workers_numbers_them():
    from apex_gui.core.fit.rpc_workers import number_devices

    output = log("rpc_list_devices.log")
    endpoint = parse_list_devices(output)[0].endpoint
    alone = parse_probe_output(parse_worker(endpoint), output, 0)
    down = WorkerProbe(RpcWorker("10.0.0.9", 50052), False, error="refused")
    numbered = number_devices([alone, down, alone])
    assert [d.name for p in numbered for d in p.devices] == ["RPC0", "RPC1"]
    assert numbered[1] == down and alone.devices[0].name == "RPC0"
