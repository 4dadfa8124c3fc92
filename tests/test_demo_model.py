"""The bundled demo is a trained model: opened from the cache, and its quality figures are real.

Random weights gave the demo a perplexity near its vocabulary size and quants that scored better
than their source; a trained model gives a low perplexity and KL divergences that grow as the
file shrinks. These run the real llama.cpp tools on the bundled file (11 MB, about 20 s).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apex_gui.core.fixtures import bundled_demo
from apex_gui.core.fixtures.bundled_demo import (TRAINED_DEMO_NAME, TRAINED_DEMO_SENSITIVITY,
                                                 demo_model)
from apex_gui.core.fixtures.synthetic import VOCAB_SIZE
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.calibration import quick_eval_text
from apex_gui.core.jobs.evaluations import KLDivergenceJob, PerplexityJob, ReferenceLogitsJob
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.runner import run_job
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from apex_gui.core.quality.known import known_sensitivity

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "resources" / "demo" / TRAINED_DEMO_NAME
CONTEXT = 128
CHUNKS = 24


def test_the_trained_demo_is_in_the_repository_and_small() -> None:
    assert BUNDLED.is_file(), "resources/demo/ lost its trained model (training/train_demo_moe.py)"
    assert BUNDLED.stat().st_size <= 12_000_000
    model = open_model(BUNDLED)
    assert model.architecture == "qwen2moe" and model.n_layer == 12
    assert (BUNDLED.parent / TRAINED_DEMO_SENSITIVITY).is_file()


def test_the_demo_is_copied_to_the_cache_once_and_repaired_when_damaged(tmp_path: Path) -> None:
    first = demo_model(tmp_path)
    assert first.trained and not first.note
    assert first.path == tmp_path / "demo" / TRAINED_DEMO_NAME
    assert first.path.read_bytes() == BUNDLED.read_bytes()
    stamp = first.path.stat().st_mtime_ns
    assert demo_model(tmp_path).path.stat().st_mtime_ns == stamp  # identical: not copied again
    with open(first.path, "r+b") as damaged:
        damaged.seek(5_000_000)
        damaged.write(b"\x00" * 64)
    assert demo_model(tmp_path).path.read_bytes() == BUNDLED.read_bytes()
    assert not list((tmp_path / "demo").glob(".*.part"))
    # Its measured sensitivity sits beside it, where the window and `recommend` look.
    table = known_sensitivity(open_model(first.path))
    assert table is not None and table.errors


def test_a_missing_bundle_opens_the_random_stand_in_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled_demo, "bundled_demo_folder", lambda: tmp_path / "nowhere")
    demo = demo_model(tmp_path / "cache")
    assert not demo.trained and demo.path.is_file()
    assert "missing" in demo.note and "Reinstall" in demo.note and "noise" in demo.note


def _kld_mean(model: Path, reference: Path, tools) -> float:  # type: ignore[no-untyped-def]
    outcome = run_job(KLDivergenceJob(model=model, reference_logits=reference, context=CONTEXT,
                                      chunks=CHUNKS, options=RunOptions(threads=2)), tools)
    assert outcome.succeeded, outcome.message
    return float(outcome.results["kld_mean"])


def test_the_demo_quality_figures_are_real(llama_tools, tmp_path: Path) -> None:
    """F16 perplexity far below the vocabulary; every quant loses something, more as it shrinks."""
    text = quick_eval_text()
    ppl = run_job(PerplexityJob(model=BUNDLED, text=text, context=CONTEXT, chunks=CHUNKS,
                                options=RunOptions(threads=2)), llama_tools)
    # The verdict's figure: the final line, or the last running value when the logger lost it.
    assert ppl.succeeded, ppl.message
    assert ppl.results["ppl"] < VOCAB_SIZE / 10, ppl.results

    reference = tmp_path / "reference.kld"
    made = run_job(ReferenceLogitsJob(model=BUNDLED, text=text, context=CONTEXT, chunks=CHUNKS,
                                      output_path=reference, options=RunOptions(threads=2)), llama_tools)
    assert made.succeeded, made.message
    model = open_model(BUNDLED)
    jobs = [QuantizeJob(source=BUNDLED, output_path=tmp_path / "q8_0.gguf", base_type="Q8_0",
                        options=RunOptions(threads=2))]
    jobs += [QuantizeJob.from_plan(plan_from_profile(model, get_profile(key)),
                                   tmp_path / f"{key}.gguf", options=RunOptions(threads=2))
             for key in ("balanced", "quality", "compact", "mini")]
    measured: list[tuple[int, float, str]] = []
    for job in jobs:
        outcome = run_job(job, llama_tools)
        assert outcome.succeeded, outcome.message
        size = os.path.getsize(job.output_path)
        measured.append((size, _kld_mean(job.output_path, reference, llama_tools),
                         job.output_path.stem))
    measured.sort(reverse=True)  # largest file first
    assert all(kld > 0 for _, kld, _ in measured), measured
    klds = [kld for _, kld, _ in measured]
    assert klds == sorted(klds), f"KL divergence should grow as the file shrinks: {measured}"


@pytest.mark.gui
def test_first_start_shows_quality_on_the_demo(qtbot, tmp_path: Path, llama_tools) -> None:  # type: ignore[no-untyped-def]
    """Opened without a model, the window has the demo's measured sensitivity at once: the
    overlay can be switched on, the plan panel predicts KLD, and says where bands meet."""
    from apex_gui.core.jobs.run_store import RunStore
    from apex_gui.qt.job_queue import JobQueue
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels

    store = RunStore(tmp_path / "runs.sqlite")
    window = MainWindow(probe_hardware=False)
    qtbot.addWidget(window)
    install_panels(window, store=store, queue=JobQueue(llama_tools, store), probe_hardware=False)
    window.resize(1400, 900)
    window.show()
    state = window.quality_state
    with qtbot.waitSignal(state.tableChanged, timeout=20_000,
                          check_params_cb=lambda table: table is not None):
        window.open_demo()
    try:
        assert state.overlay_action.isEnabled()
        state.overlay_action.setChecked(True)
        assert window.heatmap.overlay is not None
        window.switch_profile("quality")
        predicted = float(state.kld_label.text())
        assert 0 < predicted < 0.1
        # KL divergence depends on the text and the context: the prediction says for which.
        assert ("for text like the bundled mix of chat, code, reasoning and tool calls at a "
                "context of 512 tokens") in state.kld_label.toolTip()
        note = window.plan_panel.profile_note.text()
        assert "12-layer" in note and "never get IQ4_XS" in note
        window.switch_profile("compact")
        # A smaller tier is predicted to lose more.
        assert float(state.kld_label.text()) > predicted
    finally:
        window.close()
        store.close()
