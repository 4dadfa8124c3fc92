"""Done-when for llama.cpp RPC workers, with the real tools and two rpc-server processes on
loopback: imatrix and perplexity of a synthetic model across the workers through the job
engine give what one process gives; a worker killed mid-run fails the run clearly, keeps no
output, and the next run works; probing names what each worker offers or why not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from apex_gui.core.fit.rpc_local import LocalRpcWorker, free_port
from apex_gui.core.fit.rpc_workers import RpcWorker, probe_workers
from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.progress import Progress
from apex_gui.core.jobs.quantize import ImatrixJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobStatus, run_job
from apex_gui.core.jobs.specs import partial_path

CONTEXT = 128


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model

    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=4, n_expert=4, seed=21,
                              name="APEX RPC test model")
    return write_synthetic_model(tmp_path_factory.mktemp("rpc") / "rpc-f16.gguf", spec)


def text_file(folder: Path, n_words: int) -> Path:
    import random

    vocabulary = ("experts route tokens through mixture layers while workers hold the "
                  "layers of a model split across machines").split()
    rng = random.Random(5)
    path = folder / f"text-{n_words}.txt"
    path.write_text(" ".join(rng.choice(vocabulary) for _ in range(n_words)) + "\n")
    return path


@pytest.fixture
def workers(llama_tools):
    """Two rpc-server processes on free loopback ports, one CPU thread each."""
    started = [LocalRpcWorker(llama_tools, threads=1).start(),
               LocalRpcWorker(llama_tools, threads=1).start()]
    yield started
    for worker in started:
        worker.stop()


def imatrix_entries(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {t.name: np.array(t.data) for t in reader.tensors}


def test_imatrix_and_perplexity_across_two_workers_equal_one_process(model, tmp_path, workers,
                                                                      llama_tools):
    store = RunStore(tmp_path / "runs.sqlite")
    text = text_file(tmp_path, 1200)
    endpoints = tuple(w.worker.endpoint for w in workers)
    # The single-process runs keep weights as stored (--no-repack): an rpc-server offers its
    # device's plain buffers only, while a local CPU with AMX repacks some F16 weights into
    # its own layout and rounds differently (PPL 282.8215 against 282.8199 on this model).
    local_imatrix = ImatrixJob(model=model, calibration=text, output_path=tmp_path / "one.gguf",
                               context=CONTEXT, chunks=4,
                               options=RunOptions(threads=1, no_repack=True))
    spread_imatrix = replace(local_imatrix, output_path=tmp_path / "rpc.gguf",
                             options=RunOptions(threads=1, rpc_workers=endpoints))
    one = run_job(local_imatrix, llama_tools, store)
    spread = run_job(spread_imatrix, llama_tools, store)
    assert one.succeeded, one.message
    assert spread.succeeded, spread.message
    assert "--rpc" in store.get(spread.run_id).argv
    local_entries = imatrix_entries(tmp_path / "one.gguf")
    remote_entries = imatrix_entries(tmp_path / "rpc.gguf")
    assert local_entries.keys() == remote_entries.keys() and local_entries
    for name, values in local_entries.items():
        # equal_nan: the ".stats" rows keep NaN in the slots llama-imatrix leaves unset.
        assert np.array_equal(values, remote_entries[name], equal_nan=True), name

    local_ppl = PerplexityJob(model=model, text=text, context=CONTEXT, chunks=4,
                              options=RunOptions(threads=1, no_repack=True))
    one = run_job(local_ppl, llama_tools, store)
    spread = run_job(local_ppl.with_options(RunOptions(threads=1, rpc_workers=endpoints)),
                     llama_tools, store)
    assert one.succeeded and spread.succeeded, (one.message, spread.message)
    assert round(spread.results["ppl"], 4) == round(one.results["ppl"], 4)
    # The run store says which workers took part (and that the local runs had none).
    recorded = store.get(spread.run_id)
    assert recorded.rpc_workers == endpoints
    assert recorded.argv[recorded.argv.index("--rpc") + 1] == ",".join(endpoints)
    assert store.get(one.run_id).rpc_workers == ()


def test_a_worker_killed_mid_run_fails_clearly_keeps_nothing_and_the_next_run_works(
        model, tmp_path, workers, llama_tools):
    store = RunStore(tmp_path / "runs.sqlite")
    text = text_file(tmp_path, 12000)  # ~90 chunks: far from done when the worker goes
    endpoints = tuple(w.worker.endpoint for w in workers)
    output = tmp_path / "imatrix.gguf"
    job = ImatrixJob(model=model, calibration=text, output_path=output, context=CONTEXT,
                     options=RunOptions(threads=1, rpc_workers=endpoints))
    victim = workers[1]

    def kill_after_first_chunk(progress: Progress, _eta: float | None) -> None:
        if progress.done >= 1:
            victim.kill()

    outcome = run_job(job, llama_tools, store, on_progress=kill_after_first_chunk)
    assert outcome.status is JobStatus.FAILED
    assert "RPC worker stopped answering mid-run" in outcome.message
    assert all(e in outcome.message for e in endpoints)
    assert "ran it again" not in outcome.message  # no crash retry against a lost worker
    assert not output.exists() and not partial_path(output).exists()
    assert store.get(outcome.run_id).status == "failed"

    # The survivor serves the next client; with a fresh second worker the run completes.
    with LocalRpcWorker(llama_tools, threads=1) as fresh:
        again = replace(job, calibration=text_file(tmp_path, 1200), chunks=3,
                        options=RunOptions(threads=1, rpc_workers=(workers[0].worker.endpoint,
                                                                   fresh.worker.endpoint)))
        second = run_job(again, llama_tools, store)
    assert second.succeeded, second.message
    assert output.is_file() and not partial_path(output).exists()


def test_probes_report_devices_and_name_an_unreachable_worker_quickly(workers, llama_tools):
    down = RpcWorker("127.0.0.1", free_port())
    probes = probe_workers([workers[0].worker, down, workers[1].worker], llama_tools,
                           timeout_s=20)
    first, missing, second = probes
    assert first.reachable and second.reachable
    assert first.devices[0].name == "RPC0" and first.free_bytes > 0
    assert second.devices[0].name == "RPC1"  # numbered as one run across both numbers them
    assert first.total_bytes >= first.free_bytes
    assert not missing.reachable
    assert missing.error.startswith(f"RPC worker {down}: connection refused")
    assert missing.seconds < 20


def test_a_worker_that_never_answers_is_reported_within_the_deadline(llama_tools):
    import socket

    # A listening socket that never accepts: the client's connect succeeds, its HELLO
    # waits forever, like a worker busy with another client.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        worker = RpcWorker("127.0.0.1", silent.getsockname()[1])
        (probe,) = probe_workers([worker], llama_tools, timeout_s=2)
    assert not probe.reachable
    assert probe.error.startswith(f"RPC worker {worker}: no answer within 2 s")
    assert probe.seconds < 10


def test_hardware_and_recommend_commands_plan_across_a_live_worker(workers, llama_tools,
                                                                   tmp_path, capsys):
    from apex_gui.cli import main
    from apex_gui.core.fixtures.twins import write_shape_twin

    endpoint = workers[0].worker.endpoint
    assert main(["hardware", "--rpc", endpoint]) == 0
    assert f"RPC worker {endpoint}: RPC0 " in capsys.readouterr().out
    down = f"127.0.0.1:{free_port()}"
    assert main(["hardware", "--rpc", f"{endpoint},{down}"]) == 1
    assert f"RPC worker {down}: connection refused" in capsys.readouterr().out

    twin = write_shape_twin(tmp_path / "Qwen3.5-35B-A3B-BF16.gguf", "qwen3.5-35b-a3b")[0]
    assert main(["recommend", str(twin), "--vram", "24GB", "--ram", "64GB",
                 "--rpc", endpoint]) == 0
    out = capsys.readouterr().out
    assert f"--rpc {endpoint}" in out and " -ts " in out
    assert f"  RPC0 {endpoint}: layers " in out and "  Manual 24GB: layers " in out
    assert main(["recommend", str(twin), "--vram", "24GB", "--rpc", down]) == 2
    assert f"RPC worker {down}: connection refused" in capsys.readouterr().err


def test_rpc_worker_command_serves_on_loopback_until_stopped(llama_tools):
    import subprocess
    import sys

    from apex_gui.core.fit.rpc_local import wait_until_listening

    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "apex_gui.cli", "rpc-worker", "--port",
                              str(port), "-t", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert wait_until_listening("127.0.0.1", port, 30, alive=lambda: child.poll() is None)
        (probe,) = probe_workers([RpcWorker("127.0.0.1", port)], llama_tools)
        assert probe.reachable and probe.devices
    finally:
        child.terminate()  # the command became rpc-server: the signal reaches it directly
        _, err = child.communicate(timeout=10)
    text = err.decode()
    assert f"--rpc 127.0.0.1:{port}" in text and "warning" not in text


def test_cli_imatrix_runs_across_workers_and_refuses_a_dead_one_before_loading(
        model, workers, tmp_path, capsys):
    import json

    from apex_gui.cli import main

    text = text_file(tmp_path, 1200)
    endpoints = ",".join(w.worker.endpoint for w in workers)
    output = tmp_path / "cli-imatrix.gguf"
    common = [str(model), "-o", str(output), "--calibration", str(text), "--imatrix-ctx",
              str(CONTEXT), "--imatrix-chunks", "2", "-t", "1"]
    assert main(["imatrix", *common, "--rpc", endpoints, "--json"]) == 0
    captured = capsys.readouterr()
    (step,) = json.loads(captured.out)
    assert step["status"] == "succeeded" and output.is_file()
    assert tuple(step["job"]["rpc_workers"]) == tuple(endpoints.split(","))
    assert captured.err.count("RPC worker 127.0.0.1:") == 2  # what each worker offers
    down = f"127.0.0.1:{free_port()}"
    output.unlink()
    assert main(["imatrix", *common, "--rpc", f"{endpoints},{down}"]) == 2
    err = capsys.readouterr().err
    assert f"RPC worker {down}: connection refused" in err and not output.exists()
