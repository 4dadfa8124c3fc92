"""The measured table in the model card (and in the upload), and the probes' evaluations
spread over ``--rpc`` workers as ``eval`` spreads them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import inputs_from

from apex_gui.core.fixtures.bundled_demo import TRAINED_DEMO_SENSITIVITY
from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.types import effective_type
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.quality.card_table import sensitivity_summary
from apex_gui.core.quality.table import SensitivityTable, tensor_kind
from apex_gui.core.report.model_card import build_card_inputs, render_model_card
from apex_gui.core.settings import data_dir

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
DEMO_MODEL = DEMO / "apex-demo-trained-qwen2moe-f16.gguf"


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")


def test_the_card_publishes_the_measured_table(store: RunStore, tmp_path: Path) -> None:
    model = open_model(DEMO_MODEL)
    table = SensitivityTable.load(DEMO / TRAINED_DEMO_SENSITIVITY, model)
    summary = sensitivity_summary(table, model, DEMO / TRAINED_DEMO_SENSITIVITY, "Demo")
    card = render_model_card(replace(inputs_from(store, tmp_path), sensitivity=summary))
    section = card.split("## Sensitivity Table", 1)[1].split("\n## ", 1)[0]
    assert "`Demo.sensitivity.json`" in section
    assert ("--sensitivity hf://alice/Qwen3.5-35B-A3B-APEX-GGUF/Demo.sensitivity.json"
            in section)
    assert table.fingerprint[:16] in section
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    kinds = sorted({tensor_kind(n) for n in table.errors})
    assert [row.split("`")[1] for row in rows] == kinds
    # Each cell is that kind alone at that type: the table's own prediction.
    attn_q = next(row for row in rows if row.startswith("| `attn_q`"))
    members = [n for n in table.errors if tensor_kind(n) == "attn_q"]
    expected = table.predict({n: effective_type("Q4_K", model.tensor(n).row_length)
                              for n in members}).kld
    cells = [c.strip() for c in attn_q.strip("|").split("|")]
    assert cells[1] == str(len(members))
    assert float(cells[2 + table.candidates.index("Q4_K")]) == pytest.approx(expected, rel=0.05)


def test_the_upload_sends_the_table_beside_the_quants(store: RunStore, tmp_path: Path) -> None:
    model = open_model(DEMO_MODEL)
    table = SensitivityTable.load(DEMO / TRAINED_DEMO_SENSITIVITY, model)
    summary = sensitivity_summary(table, model, DEMO / TRAINED_DEMO_SENSITIVITY, "Demo")
    _inputs, names = build_card_inputs([], {}, repo_id="alice/Demo-APEX-GGUF",
                                       model_name="Demo", profiles={}, sensitivity=summary)
    assert names[str(DEMO / TRAINED_DEMO_SENSITIVITY)] == "Demo.sensitivity.json"


def test_the_probes_run_across_rpc_workers(llama_tools, tiny_qwen2moe: Path,
                                           tmp_path: Path) -> None:
    from apex_gui.core.fit.rpc_local import LocalRpcWorker

    (data_dir() / "sensitivity-speed.json").write_text(json.dumps(  # no pilot
        {"io_bytes_per_s": 4e8, "points": {"quantize": [[2e7, 1.0]], "readback": [[6e7, 1.0]],
                                           "eval": [[4e10, 1.0]]}}))
    text = tmp_path / "probe.txt"
    text.write_text("experts route tokens through mixture layers of a small model " * 150)
    worker = LocalRpcWorker(llama_tools, threads=1).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "apex_gui", "sensitivity", str(tiny_qwen2moe), "-o",
             str(tmp_path / "s.json"), "--types", "Q3_K,Q6_K", "--probe-ctx", "128",
             "--chunks", "6", "--text", str(text), "--rpc", worker.worker.endpoint, "--json"],
            capture_output=True, text=True, timeout=900)
    finally:
        log = worker.stop()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    evaluations = len(report["probes"]) + 1  # every probe and the reference logits
    assert log.lower().count("accepted client connection") >= evaluations, log[-2000:]
