"""The output parsers against real recorded llama.cpp logs (tests/logs, see record.sh and
record_eval.py for how each was made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_gui.core.jobs import parsers

LOGS = Path(__file__).parent / "logs"


def log(name: str) -> str:
    return (LOGS / name).read_text(encoding="utf-8")


def test_tensor_progress_lines_of_a_real_quantize():
    lines = [parsers.parse_tensor_progress(line) for line in log("quantize_q4km.log").splitlines()]
    tensors = [t for t in lines if t is not None]
    assert [t.index for t in tensors] == list(range(1, 38))
    assert {t.total for t in tensors} == {37}
    q = next(t for t in tensors if t.name == "blk.0.attn_q.weight")
    assert (q.shape, q.source_type, q.target_type) == ((256, 256, 1, 1), "f16", "q4_K")
    assert (q.source_mib, q.target_mib) == (0.12, 0.04)
    norm = next(t for t in tensors if t.name == "output_norm.weight")
    assert norm.target_type == "f32" and norm.source_mib == norm.target_mib == 0.001


def test_tensor_progress_on_a_partial_line_and_a_dry_run_line():
    partial = ("[  12/ 733]                 blk.0.attn_q.weight - [  2048,   4096,      1,      1],"
               " type =    f16, converting to q6_K .. ")
    tensor = parsers.parse_tensor_progress(partial)
    assert tensor is not None and not tensor.complete
    assert (tensor.index, tensor.total, tensor.target_type) == (12, 733, "q6_K")
    dry = [parsers.parse_tensor_progress(line) for line in log("quantize_dry_run.log").splitlines()]
    output = next(t for t in dry if t is not None and t.name == "output.weight")
    assert (output.target_type, output.target_mib) == ("q6_K", 0.05)


def test_quantize_summary_and_fallback_warnings():
    summary = parsers.parse_quantize_log(log("quantize_q4km.log"))
    assert (summary.model_mib, summary.model_bpw) == (4.77, 16.02)
    assert (summary.quant_mib, summary.quant_bpw) == (1.46, 4.89)
    assert summary.fallback_count == 0 and summary.needs_imatrix_tensor is None

    text = log("quantize_fallback.log")
    warnings = [w for w in map(parsers.parse_fallback_warning, text.splitlines()) if w]
    assert [(w.tensor, w.ncols, w.wanted, w.used) for w in warnings] == [
        ("blk.0.ffn_down_exps.weight", 288, "iq4_xs", "iq4_nl"),
        ("blk.1.ffn_down_exps.weight", 288, "q6_K", "q8_0")]
    assert parsers.parse_quantize_log(text).fallback_count == 2


def test_missing_imatrix_refusal_names_the_tensor():
    summary = parsers.parse_quantize_log(log("quantize_needs_imatrix.log"))
    assert summary.needs_imatrix_tensor == "blk.0.attn_k.weight"
    assert summary.needs_imatrix_type == "iq2_xs"
    assert summary.quant_mib is None


@pytest.mark.parametrize("name, chunks, final", [
    ("imatrix.log", 2, (279.2694, 6.83813)),
    ("imatrix_job.log", 4, (270.8251, 5.56929)),
    ("perplexity.log", 2, (279.2694, 6.83813)),
    ("kld_base.log", 4, (275.0246, 5.58202)),
])
def test_chunk_count_values_and_final_estimate(name, chunks, final):
    text = log(name)
    counts = [c for c in map(parsers.parse_chunk_count, text.splitlines()) if c is not None]
    assert counts == [chunks]
    values = parsers.parse_chunk_values(text)
    assert [i for i, _ in values] == list(range(1, chunks + 1))
    assert values[-1][1] == final[0]
    estimate = parsers.parse_final_estimate(text)
    assert estimate is not None and (estimate.ppl, estimate.error) == final


@pytest.mark.parametrize("name, needed, found", [
    ("perplexity_too_short.log", 256, 57),
    ("imatrix_too_short.log", 256, 57),
])
def test_too_short_text_is_recognised(name, needed, found):
    text = log(name)
    assert parsers.parse_final_estimate(text) is None
    assert parsers.parse_too_few_tokens(text) == parsers.TooFewTokens(needed, found)


def test_kl_divergence_statistics():
    stats = parsers.parse_kl_divergence(log("kld.log"))
    assert stats.complete
    assert (stats.kld_mean, stats.kld_mean_error) == (0.000960, 0.000006)
    assert (stats.kld_max, stats.kld_p999, stats.kld_median) == (0.001447, 0.001395, 0.000939)
    assert (stats.same_top_p, stats.same_top_p_error) == (76.984, 2.657)
    assert (stats.ppl, stats.ppl_base) == (275.792423, 275.024769)
    assert stats.delta_p_rms == 0.022
    rows = [r for r in map(parsers.parse_kld_chunk_row, log("kld.log").splitlines()) if r]
    assert rows == [1, 2, 3, 4]
    assert parsers.parse_chunk_count(log("kld.log").splitlines()[4]) == 4


def test_kl_divergence_of_a_log_without_statistics_is_incomplete():
    assert not parsers.parse_kl_divergence(log("kld_base.log")).complete


def test_hellaswag_last_row_is_the_result():
    text = log("hellaswag.log")
    score = parsers.parse_hellaswag(text)
    assert score is not None
    assert (score.accuracy, score.tasks, score.ci_low, score.ci_high) == (
        30.0, 10, 10.7791, 60.3222)
    totals = [t for t in map(parsers.parse_task_total, text.splitlines()) if t is not None]
    assert totals[-1] == 10  # "selecting 10 randomized tasks" after "loaded 12 tasks"


def test_winogrande_final_score():
    text = log("winogrande.log")
    score = parsers.parse_winogrande(text)
    assert score is not None and (score.accuracy, score.error, score.tasks) == (46.789, 4.8013, 109)
    rows = [r for r in map(parsers.parse_task_row, text.splitlines()) if r is not None]
    assert rows[-1] == 109


def test_multiple_choice_final_result():
    text = log("multiple_choice.log")
    score = parsers.parse_multiple_choice(text)
    assert score is not None
    assert (score.accuracy, score.error, score.tasks, score.random_chance) == (
        28.1818, 4.3091, 110, 25.0)
    assert parsers.parse_hellaswag(text) is None and parsers.parse_winogrande(text) is None


def test_bench_jsonl():
    text = log("bench.jsonl")
    results = parsers.parse_bench(text)
    assert [r.test for r in results] == ["pp64", "tg16"]
    # Timings change with every recording: compare with the raw JSON, not fixed numbers.
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r.tokens_per_second for r in results] == [row["avg_ts"] for row in rows]
    assert [r.stddev for r in results] == [row["stddev_ts"] for row in rows]
    assert results[0].tokens_per_second > 0
    assert results[0].model_size == 4999168 and results[0].backends == "CPU"
    assert parsers.parse_bench_line("llama-bench: benchmark 1/2: starting") is None
    assert parsers.parse_bench_line("{not json") is None


def test_line_splitter_handles_cr_crlf_and_split_reads():
    splitter = parsers.LineSplitter()
    assert splitter.feed("one\r") == ["one"]
    assert splitter.feed("\ntwo\rthr") == ["two"]  # \r\n split across reads is one break
    assert splitter.pending == "thr"
    assert splitter.feed("ee\n[1]5.0,[2]4") == ["three"]
    assert parsers.parse_chunk_values(splitter.pending) == [(1, 5.0)]
    assert splitter.flush() == ["[1]5.0,[2]4"]
    assert splitter.flush() == []
