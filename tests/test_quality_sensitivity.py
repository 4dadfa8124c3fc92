"""Sensitivity measured with the real tools: candidate types on a row sample, read back, KL
probes per kind plus "all low" and "all high"; cached by content; a stopped run resumes from
the last finished type and probe, and leaves no scratch files behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.types import effective_type
from apex_gui.core.quality.sensitivity import (SensitivityCancelled, SensitivityTable,
                                               kld_from_rows, measure_sensitivity,
                                               probe_type_for)
from apex_gui.core.settings import cache_dir

LOGS = Path(__file__).parent / "logs"
TYPES = ("Q2_K", "Q3_K", "Q6_K")


def test_kld_from_the_per_chunk_rows_when_the_statistics_were_lost() -> None:
    """Recorded llama-perplexity --kl-divergence output cut before its closing statistics."""
    log = (LOGS / "kld_statistics_lost.log").read_text()
    assert "Mean    KLD" not in log
    assert kld_from_rows(log) == pytest.approx(0.00141)
    half = "\n".join(log.splitlines()[:90])  # rows up to about chunk 70 of 142
    assert kld_from_rows(half) is None
    assert kld_from_rows(half, min_share=0.4) is not None


def test_probe_type_comes_from_the_measured_types() -> None:
    assert probe_type_for(("Q2_K", "Q3_K", "Q8_0")) == "Q3_K"
    assert probe_type_for(("Q8_0", "Q4_K")) == "Q4_K"
    assert probe_type_for(("IQ2_XXS", "Q6_K")) == "Q6_K"


def _measure(model: Path, text: Path, **kwargs):
    return measure_sensitivity(model, text=text, context=128, chunks=6, candidates=TYPES,
                               **kwargs)


@pytest.fixture()
def probe_text(tmp_path: Path, text_words) -> Path:
    path = tmp_path / "probe.txt"
    path.write_text(text_words(900))
    return path


def _probe_types(model_path: Path, table: SensitivityTable, probe: dict) -> dict[str, str]:
    model = open_model(model_path)
    return {n: effective_type(probe["type"], model.tensor(n).row_length) for n in table.errors
            if n.split(".")[-2] in probe["kinds"]}


def test_measured_sensitivity_orders_types_and_is_cached(llama_tools, tiny_qwen2moe: Path,
                                                         probe_text: Path) -> None:
    stages: list[str] = []
    table = _measure(tiny_qwen2moe, probe_text, tools=llama_tools,
                     on_progress=lambda stage, fraction, eta: stages.append(stage))
    assert any("quantizing the row sample to Q3_K" in s for s in stages)
    assert any(s.startswith("probe: kind:ffn_down_exps") for s in stages)
    assert len(table.errors) == 22  # 2 layers x 10 + token_embd + output
    for name, by_type in table.errors.items():
        assert 0 < by_type["Q6_K"] < by_type["Q3_K"] < by_type["Q2_K"], name
    keys = {p["key"] for p in table.probes}
    assert {"kind:ffn_gate_exps", "kind:ffn_down_shexp", "kind:attn_q", "kind:output",
            "all-low", "all-high"} <= keys
    assert all(scale > 0 for scale in table.kind_scale.values())
    assert table.floor["q8_K"] >= 0 and table.energy and table.response
    # The calibration reproduces every probe it was fitted to: each kind alone, all kinds
    # at the probe type (the response curve) and all at the high type (the floor).
    for probe in table.probes:
        predicted = table.predict(_probe_types(tiny_qwen2moe, table, probe)).kld
        assert predicted == pytest.approx(probe["kld_mean"], rel=1e-4), probe["key"]
    entries = list((cache_dir() / "sensitivity").glob("*.json"))
    assert len(entries) == 1
    again: list[str] = []
    cached = _measure(tiny_qwen2moe, probe_text, tools=llama_tools,
                      on_progress=lambda stage, fraction, eta: again.append(stage))
    assert again == ["loaded from cache"]
    assert cached.errors == table.errors
    # Another text is another measurement: not answered from the cache.
    probe_text.write_text(probe_text.read_text() + "more words\n")
    other: list[str] = []
    _measure(tiny_qwen2moe, probe_text, tools=llama_tools,
             on_progress=lambda stage, fraction, eta: other.append(stage))
    assert "loaded from cache" not in other
    assert len(list((cache_dir() / "sensitivity").glob("[!p]*.json"))) == 2


def test_a_stopped_run_resumes_from_the_last_finished_type_and_probe(
        llama_tools, tiny_qwen2moe: Path, probe_text: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    work = tmp_path / "work"
    work.mkdir()
    first: list[str] = []

    def progress(stage: str, fraction: float, eta: float | None) -> None:
        first.append(stage)
        if stage.startswith("probe: kind:attn_v done"):
            cancel.set()  # the calibration is under way: some probes done, some not

    with pytest.raises(SensitivityCancelled):
        _measure(tiny_qwen2moe, probe_text, tools=llama_tools, on_progress=progress,
                 cancel=cancel, work_dir=work)
    finished = [s for s in first if s.startswith("probe:") and s.endswith(" done")]
    assert list(work.iterdir()) == []  # the scratch folder went with the stop
    assert not list((cache_dir() / "sensitivity").glob("[!p]*.json"))  # no finished entry
    assert any(p.name.startswith("partial-") for p in (cache_dir() / "sensitivity").iterdir())

    second: list[str] = []
    table = _measure(tiny_qwen2moe, probe_text, tools=llama_tools, work_dir=work,
                     on_progress=lambda stage, fraction, eta: second.append(stage))
    assert not any("quantizing the row sample" in s for s in second)  # every type was kept
    redone = [s for s in second if s.startswith("probe:") and s.endswith(" done")]
    assert not set(redone) & set(finished)  # finished probes are not run again
    assert "probe: kind:attn_v done" in finished and "probe: all-low done" in redone
    assert list(work.iterdir()) == []
    # The resumed table is the table a run without a stop measures.
    fresh = _measure(tiny_qwen2moe, probe_text, tools=llama_tools, use_cache=False)
    assert fresh.errors == table.errors
    assert {p["key"] for p in fresh.probes} == {p["key"] for p in table.probes}


def test_cancelled_sensitivity_leaves_no_partial_cache(llama_tools, tiny_qwen2moe: Path,
                                                       probe_text: Path,
                                                       tmp_path: Path) -> None:
    cancel = threading.Event()
    work = tmp_path / "work"
    work.mkdir()

    def progress(stage: str, fraction: float, eta: float | None) -> None:
        if stage.startswith("reading back"):
            cancel.set()  # after the first quantize run, during the read-back

    with pytest.raises(SensitivityCancelled):
        _measure(tiny_qwen2moe, probe_text, tools=llama_tools, on_progress=progress,
                 cancel=cancel, work_dir=work)
    assert not list((cache_dir() / "sensitivity").glob("[!p]*.json"))
    assert list(work.iterdir()) == []  # the quantized scratch files are gone too


def test_no_cache_starts_over_and_leaves_no_resume_state(llama_tools, tiny_qwen2moe: Path,
                                                         probe_text: Path) -> None:
    table = _measure(tiny_qwen2moe, probe_text, tools=llama_tools, use_cache=False)
    assert table.errors
    assert not (cache_dir() / "sensitivity").exists() or not list(
        (cache_dir() / "sensitivity").iterdir())


def test_imatrix_types_measured_where_llama_quantize_can_write_them(
        llama_tools, tiny_qwen2moe: Path, probe_text: Path, tmp_path: Path) -> None:
    """IQ2_XXS needs imatrix data for each tensor it quantizes (token_embd never has any):
    those stay out, the rest are measured, and the optimizer's plan quantizes to its size."""
    from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
    from apex_gui.core.quality.optimizer import optimize
    from apex_gui.core.jobs.runner import run_job

    imatrix = tmp_path / "tiny.imatrix.gguf"
    made = run_job(ImatrixJob(model=tiny_qwen2moe, calibration=probe_text, context=128,
                              chunks=4, output_path=imatrix), llama_tools)
    assert made.succeeded, made.message
    table = measure_sensitivity(tiny_qwen2moe, imatrix, text=probe_text, context=128,
                                chunks=6, candidates=("Q4_K", "IQ2_XXS"), tools=llama_tools)
    assert "IQ2_XXS" not in table.errors["token_embd.weight"]
    assert table.errors["blk.0.ffn_up_exps.weight"]["IQ2_XXS"] > table.errors[
        "blk.0.ffn_up_exps.weight"]["Q4_K"] > 0
    model = open_model(tiny_qwen2moe)
    result = optimize(model, table, int(model.file_size * 0.25), imatrix=str(imatrix))
    assert any(result.plan.effective_type(n) == "IQ2_XXS" for n in result.reasons)
    job = QuantizeJob.from_plan(result.plan, tmp_path / "opt.gguf", tmp_path / "opt.txt",
                                imatrix=imatrix)
    done = run_job(job, llama_tools)
    assert done.succeeded, done.message
    assert (tmp_path / "opt.gguf").stat().st_size == result.plan.total_bytes()


def test_the_cost_is_stated_first_and_the_run_records_this_machines_speeds(
        tiny_qwen2moe: Path, probe_text: Path, tmp_path: Path) -> None:
    """The command says what it will cost before it starts (the first line, from a pilot on
    a first run); afterwards the speeds its own steps showed are this machine's record."""
    import json
    import subprocess
    import sys

    from apex_gui.core.quality.projection import load_speed
    from apex_gui.core.settings import data_dir

    done = subprocess.run(
        [sys.executable, "-m", "apex_gui", "sensitivity", str(tiny_qwen2moe), "-o",
         str(tmp_path / "s.json"), "--types", ",".join(TYPES), "--probe-ctx", "128",
         "--chunks", "6", "--text", str(probe_text), "--json"],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("projected: about ") and "scratch disk up to" in first, first
    report = json.loads(done.stdout)
    assert report["projected_seconds"] > 0 and report["projected_scratch_bytes"] > 0
    speed = load_speed()
    assert speed is not None and speed.source == "run"
    recorded = json.loads((data_dir() / "sensitivity-speed.json").read_text())["points"]
    # This run's own steps (after the pilot's): a quantize run and a read-back per type on
    # the sample, the whole-model quants, an evaluation per probe and the reference.
    assert len(recorded["quantize"]) >= len(TYPES) + 2
    assert len(recorded["readback"]) >= len(TYPES)
    assert len(recorded["eval"]) >= 1 + len(report["probes"])
    fixed, rate = speed.fit("eval")
    assert fixed >= 0 and rate > 0
