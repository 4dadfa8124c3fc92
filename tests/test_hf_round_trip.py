"""From a Hugging Face model id to evaluated APEX quants, through the product, for real.

The bundled trained demo is exported as a transformers Qwen2-MoE checkpoint, served by the
local Hub stand-in (tests/local_hub.py), and ``apex-studio pipeline hf://...`` downloads it,
converts it with llama.cpp's own converter, computes an importance matrix, quantizes, measures
KL divergence and writes the card. The converted GGUF must hold the demo's tensors and give
its perplexity; a second run, killed (SIGKILL) in each step and started again, must finish
with the same files, having run no finished step twice and downloaded no byte twice.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

import local_hub
from hf_pipeline_helpers import (DEMO_GGUF, HUB_REPO, cli_env, export_demo, gated_tools,
                                 start_pipeline, wait_for)

from apex_gui.core.convert.converter import find_converter, missing_modules
from apex_gui.core.workflow.state import STATE_FILE

#: Converting, quantizing and measuring a real model twice over (a few minutes on 2 busy cores).
pytestmark = pytest.mark.timeout(1200)
SPM_SPACE = "\u2581"


@pytest.fixture(scope="module")
def served_demo(tmp_path_factory: pytest.TempPathFactory):
    assert not missing_modules(), ("the convert extra is not installed: `make test` installs "
                                   "it (pip install -e .[convert])")
    root = tmp_path_factory.mktemp("hub")
    export_demo(root / HUB_REPO)
    with local_hub.serve(root) as hub:
        yield hub


@pytest.fixture(scope="module")
def clean_run(served_demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted pipeline run; its work folder."""
    home = tmp_path_factory.mktemp("clean-home")
    work = home / "work"
    process = start_pipeline(work, cli_env(home, served_demo.url))
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output
    return work


def _tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
    reader = GGUFReader(path)
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape),
                     np.asarray(t.data, dtype=np.float32).ravel()) for t in reader.tensors}


def test_converted_demo_has_the_demo_tensors(clean_run: Path) -> None:
    converted = _tensors(clean_run / "demo-qwen2moe-F16.gguf")
    bundled = _tensors(DEMO_GGUF)
    assert converted.keys() == bundled.keys()
    for name, (kind, shape, values) in bundled.items():
        got_kind, got_shape, got_values = converted[name]
        assert np.array_equal(got_values, values), name  # every value, bit for bit
        if name.endswith("ffn_gate_inp.weight"):
            assert got_kind == "F32"  # llama.cpp's converter keeps the router in F32
        else:
            assert got_kind == kind, name
        if name.endswith("ffn_gate_inp_shexp.weight"):
            assert got_shape == (*shape, 1)  # transformers' Linear(hidden, 1), as converted
        else:
            assert got_shape == shape, name


def test_converted_demo_gives_the_demo_perplexity(clean_run: Path, llama_tools,
                                                  tmp_path: Path) -> None:
    from apex_gui.core.jobs.calibration import quick_eval_text
    from apex_gui.core.jobs.evaluations import PerplexityJob
    from apex_gui.core.jobs.run_options import RunOptions
    from apex_gui.core.jobs.runner import run_job

    # The demo's vocabulary is SPM bytes (a space is U+2581); the converter writes the same
    # bytes as a GPT-2 vocabulary, where a space is its own byte: text written with U+2581
    # reaches both models as the same token ids.
    text = tmp_path / "eval.txt"
    text.write_text(quick_eval_text().read_text(encoding="utf-8")[:6000]
                    .replace(" ", SPM_SPACE), encoding="utf-8")
    ppl = {}
    for model in (DEMO_GGUF, clean_run / "demo-qwen2moe-F16.gguf"):
        outcome = run_job(PerplexityJob(model=model, text=text, context=128, chunks=4,
                                        options=RunOptions(threads=2)), llama_tools)
        assert outcome.succeeded, outcome.message
        ppl[model] = outcome.results["ppl"]
    bundled, converted = ppl.values()
    assert converted == pytest.approx(bundled, abs=1e-3)


def test_clean_run_made_the_quant_and_its_card(clean_run: Path) -> None:
    quant = clean_run / "demo-qwen2moe-APEX-I-Mini.gguf"
    assert quant.is_file() and quant.read_bytes()[:4] == b"GGUF"
    card = (clean_run / "README.md").read_text(encoding="utf-8")
    assert "I-Mini" in card and HUB_REPO in card
    state = json.loads((clean_run / STATE_FILE).read_text())
    assert state["steps"]["i-mini:kld"]["results"]["kld_mean"] > 0


KILL_POINTS = [  # (step, what the gate waits for): the tool or converter at its start
    ("convert", "convert_hf_to_gguf.py", ""),
    ("imatrix", "llama-imatrix", ""),
    ("i-mini:quantize", "llama-quantize", ""),
    ("i-mini:kld", "llama-perplexity", "--kl-divergence"),
]


def test_killed_in_every_step_it_resumes_to_the_same_files(
        served_demo, clean_run: Path, tmp_path: Path, llama_tools) -> None:
    converter = find_converter()
    assert converter is not None
    gates = tmp_path / "gates"
    gates.mkdir()
    tools = gated_tools(tmp_path / "llama.cpp", llama_tools.path("quantize").parent,
                        converter.folder)
    home = tmp_path / "home"
    work = home / "work"
    env = cli_env(home, served_demo.url, gates)
    extra = ["--llama-cpp-dir", str(tools)]
    weights = "model.safetensors"
    size = (served_demo.repo_folder(HUB_REPO) / weights).stat().st_size
    served_before = served_demo.bytes_served(weights)

    # 1. SIGKILL in the middle of the weights' download, once the client has written its
    # first block (huggingface_hub writes in blocks of DOWNLOAD_CHUNK_SIZE).
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    from apex_gui.core.hub.checkpoint_download import RepoFile, partial_path

    assert size > DOWNLOAD_CHUNK_SIZE
    served_demo.hold(weights, DOWNLOAD_CHUNK_SIZE)
    kept = partial_path(work / "checkpoint", RepoFile(weights, size))
    process = start_pipeline(work, env, extra)
    wait_for(lambda: kept.is_file() and kept.stat().st_size == DOWNLOAD_CHUNK_SIZE, process,
             "the download's first block on disk")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    served_demo.release(drop=True)
    # 2-5. SIGKILL while each later step's tool has started.
    for step, gate, argument in KILL_POINTS:
        (gates / gate).write_text(argument)
        process = start_pipeline(work, env, extra)
        waiting = gates / (gate + ".waiting")
        wait_for(waiting.exists, process, f"step {step} to start")
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
        (gates / gate).unlink()
        waiting.unlink()
    # 6. The last run goes through.
    process = start_pipeline(work, env, extra)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output

    # No byte downloaded twice: the resumed download asked only for the rest.
    assert served_demo.bytes_served(weights) - served_before == size
    assert [r.range for r in served_demo.log if r.method == "GET" and r.path.endswith(weights)
            ][-1] == f"bytes={DOWNLOAD_CHUNK_SIZE}-"
    # Same files as the uninterrupted run, the GGUFs byte for byte.
    names = lambda folder: sorted(p.name for p in folder.iterdir()  # noqa: E731
                                  if p.is_file() and p.name != STATE_FILE)
    assert names(work) == names(clean_run)
    converted = "demo-qwen2moe-F16.gguf"
    assert (work / converted).read_bytes() == (clean_run / converted).read_bytes()
    # The quant's header names its importance matrix by path (each run has its own data
    # folder); every tensor must be the same, type and bytes.
    quant = "demo-qwen2moe-APEX-I-Mini.gguf"
    resumed, clean = GGUFReader(work / quant), GGUFReader(clean_run / quant)
    assert [(t.name, t.tensor_type, bytes(t.data)) for t in resumed.tensors] == \
        [(t.name, t.tensor_type, bytes(t.data)) for t in clean.tensors]
    state = json.loads((work / STATE_FILE).read_text())
    clean = json.loads((clean_run / STATE_FILE).read_text())
    assert (state["steps"]["i-mini:kld"]["results"]["kld_mean"]
            == pytest.approx(clean["steps"]["i-mini:kld"]["results"]["kld_mean"], rel=1e-4))
    # No step finished twice; each killed step started once more, and only once.
    done = [e["step"] for e in state["journal"] if e["event"] == "done"]
    assert sorted(done) == sorted(set(done))
    started = {}
    for entry in state["journal"]:
        if entry["event"] == "started":
            started[entry["step"]] = started.get(entry["step"], 0) + 1
    for step in ("download", *(k for k, _, _ in KILL_POINTS)):
        assert started[step] == 2, (step, started)
    assert started["card"] == 1
