"""Job specs without running tools: argument lists, environment, checks, verdicts on real
recorded logs, pipelines, calibration files and the run history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_gui.core.jobs import calibration
from apex_gui.core.jobs.evaluations import (
    BenchJob, HellaSwagJob, KLDivergenceJob, MultipleChoiceJob, PerplexityJob, ReferenceLogitsJob,
    WinograndeJob, reference_logits_path,
)
from apex_gui.core.jobs.pipeline import EvaluationOptions, Pipeline, build_pipeline, job_from_dict
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.specs import JobError, partial_path

LOGS = Path(__file__).parent / "logs"


def log(name: str) -> str:
    return (LOGS / name).read_text(encoding="utf-8")


def words(n: int) -> str:
    vocabulary = "experts route tokens through mixture layers of a small model".split()
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(n)) + "\n"


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(words(600))
    return path


def test_quantize_argv_writes_the_partial_name_and_never_uses_a_shell(tiny_qwen2moe, tmp_path,
                                                                     llama_tools):
    types = tmp_path / "types.txt"
    types.write_text("^blk\\.0\\.ffn_up_exps\\.weight$=q5_k\n")
    job = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "out.gguf", base_type="Q4_K_M",
                      tensor_type_file=types, imatrix=tmp_path / "im.gguf",
                      token_embedding_type="q4_k", output_tensor_type="q6_k", options=RunOptions(threads=2))
    argv = job.argv(llama_tools)
    assert Path(argv[0]).name == "llama-quantize"
    assert argv[1:] == ["--tensor-type-file", str(types), "--token-embedding-type", "q4_k",
                        "--output-tensor-type", "q6_k", "--imatrix", str(tmp_path / "im.gguf"),
                        str(tiny_qwen2moe), str(tmp_path / "out.gguf.partial"), "Q4_K_M", "2"]
    assert job.partial_output() == partial_path(tmp_path / "out.gguf")


def test_child_environment_drops_llama_arg_variables(monkeypatch, tiny_qwen2moe, text, tmp_path):
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "4096")
    monkeypatch.setenv("APEX_KEEP_ME", "1")
    job = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=tmp_path / "im.gguf")
    env = job.env()
    assert "LLAMA_ARG_CTX_SIZE" not in env and env["APEX_KEEP_ME"] == "1"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in BenchJob(model=tiny_qwen2moe).env(
        {"PATH": "/usr/bin"})  # speed is measured as the user's own llama-bench would


def test_imatrix_and_perplexity_flags(tiny_qwen2moe, text, tmp_path):
    imatrix = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=tmp_path / "i.gguf",
                         context=128, chunks=2, options=RunOptions(threads=2))
    args = imatrix.args()
    for flag in ("--no-escape", "--no-log-prefix", "--output-format"):
        assert flag in args
    assert args[args.index("-o") + 1].endswith("i.gguf.partial")
    assert args[args.index("--chunks") + 1] == "2" and args[args.index("-c") + 1] == "128"
    reference = ReferenceLogitsJob.cached(tiny_qwen2moe, text, 128, 4)
    assert "--kl-divergence" not in reference.args()
    assert reference.args()[reference.args().index("--kl-divergence-base") + 1].endswith(".partial")
    kld = KLDivergenceJob(model=tiny_qwen2moe, reference_logits=reference.output_path, context=128)
    assert "--kl-divergence" in kld.args() and "-f" not in kld.args()
    mc = MultipleChoiceJob(model=tiny_qwen2moe, data=text, tasks=10)
    assert mc.args()[2:7] == ["-bf", str(text), "--multiple-choice", "--multiple-choice-tasks", "10"]
    bench = BenchJob(model=tiny_qwen2moe, n_prompt=64, n_gen=16, repetitions=2)
    assert bench.args()[bench.args().index("-o") + 1] == "jsonl"


def test_reference_logits_are_cached_per_model_text_and_context(tiny_qwen2moe, text, tmp_path):
    first = reference_logits_path(tiny_qwen2moe, text, 128, None)
    assert first == reference_logits_path(tiny_qwen2moe, text, 128, None)
    assert first != reference_logits_path(tiny_qwen2moe, text, 256, None)
    other = tmp_path / "other.txt"
    other.write_text(words(601))
    assert first != reference_logits_path(tiny_qwen2moe, other, 128, None)
    assert first.is_relative_to(Path(__import__("os").environ["APEX_STUDIO_DATA_DIR"]))


def test_output_equal_to_an_input_is_refused(tiny_qwen2moe):
    job = QuantizeJob(source=tiny_qwen2moe, output_path=tiny_qwen2moe, base_type="Q4_K_M")
    with pytest.raises(JobError, match="also an input"):
        job.check()


def test_unreadable_model_is_refused_before_starting(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a gguf file at all" * 10)
    job = QuantizeJob(source=bogus, output_path=tmp_path / "out.gguf", base_type="Q4_K_M")
    with pytest.raises(JobError, match="not a usable GGUF"):
        job.check()
    with pytest.raises(JobError, match="does not exist"):
        QuantizeJob(source=tmp_path / "nope.gguf", output_path=tmp_path / "o.gguf",
                    base_type="Q4_K_M").check()


def test_iq_types_without_imatrix_are_refused_before_starting(tiny_qwen2moe, tmp_path):
    types = tmp_path / "types.txt"
    types.write_text("^blk\\.1\\.ffn_up_exps\\.weight$=iq2_s\n")
    job = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "o.gguf", base_type="Q4_K_M",
                      tensor_type_file=types)
    with pytest.raises(JobError, match=r"need an importance matrix \(IQ2_S\).*--imatrix"):
        job.check()
    # The base type alone can need one too (IQ2_S files default to IQ2_XS tensors).
    with pytest.raises(JobError, match="IQ2_XS"):
        QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "o.gguf",
                    base_type="IQ2_S").check()


def test_disk_space_is_checked_against_the_predicted_size(tiny_qwen2moe, tmp_path):
    job = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "o.gguf", base_type="Q4_K_M",
                      predicted_bytes=10**18)
    with pytest.raises(JobError, match="not enough disk space"):
        job.check()


def test_too_short_calibration_is_refused_before_starting(tiny_qwen2moe, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("far too short for two chunks of context\n")
    job = ImatrixJob(model=tiny_qwen2moe, calibration=short, output_path=tmp_path / "i.gguf",
                     context=128)
    with pytest.raises(JobError, match=r"too short.*needs at least 256"):
        job.check()


def test_quantize_verdicts_on_recorded_logs(tiny_qwen2moe, tmp_path):
    job = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "o.gguf", base_type="Q4_K_M")
    ok = job.verdict(0, log("quantize_q4km.log"))
    assert ok.succeeded and ok.results["quant_mib"] == 1.46 and ok.results["quant_bpw"] == 4.89
    refused = job.verdict(1, log("quantize_needs_imatrix.log"))
    assert not refused.succeeded
    assert "blk.0.attn_k.weight" in refused.message and "--imatrix" in refused.message
    fallback = job.verdict(0, log("quantize_fallback.log"))
    assert fallback.results["fallback_tensors"] == 2


def test_perplexity_success_needs_the_final_line_not_just_exit_zero(tiny_qwen2moe, text):
    job = PerplexityJob(model=tiny_qwen2moe, text=text, context=128)
    ok = job.verdict(0, log("perplexity.log"))
    assert ok.succeeded and ok.results == {"ppl": 279.2694, "ppl_error": 6.83813}
    short = job.verdict(0, log("perplexity_too_short.log"))  # exit 0, yet nothing computed
    assert not short.succeeded and "only 57 tokens" in short.message
    assert "--ctx" in short.message and not short.output_lost


def test_lost_final_lines_are_recognised_and_recovered_where_possible(tiny_qwen2moe, text):
    """llama.cpp's logger can drop the last lines at exit; the running values still count."""
    full = log("perplexity.log")
    cut = full[:full.index("Final estimate")]
    recovered = PerplexityJob(model=tiny_qwen2moe, text=text, context=128).verdict(0, cut)
    assert recovered.succeeded and recovered.results == {"ppl": 279.2694}
    kld_full = log("kld.log")
    kld_cut = kld_full[:kld_full.index("====== KL divergence")]
    kld = KLDivergenceJob(model=tiny_qwen2moe, reference_logits=text, context=128)
    lost = kld.verdict(0, kld_cut)
    assert not lost.succeeded and lost.output_lost


def test_imatrix_verdicts(tiny_qwen2moe, text, tmp_path):
    job = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=tmp_path / "i.gguf",
                     context=128)
    ok = job.verdict(0, log("imatrix_job.log"))
    assert ok.succeeded and ok.results["calibration_ppl"] == 270.8251 and ok.results["chunks"] == 4
    short = job.verdict(1, log("imatrix_too_short.log"))
    assert not short.succeeded and "only 57 tokens" in short.message


def test_kl_divergence_and_benchmark_verdicts(tiny_qwen2moe, text):
    kld = KLDivergenceJob(model=tiny_qwen2moe, reference_logits=text, context=128)
    verdict = kld.verdict(0, log("kld.log"))
    assert verdict.succeeded
    assert verdict.results["kld_mean"] == 0.00096 and verdict.results["kld_p999"] == 0.001395
    assert verdict.results["same_top_p"] == 76.984
    hs = HellaSwagJob(model=tiny_qwen2moe, data=text).verdict(0, log("hellaswag.log"))
    assert hs.succeeded and hs.results["hellaswag"] == 30.0 and hs.results["hellaswag_tasks"] == 10
    wg = WinograndeJob(model=tiny_qwen2moe, data=text).verdict(0, log("winogrande.log"))
    assert wg.succeeded and wg.results["winogrande"] == 46.789
    mc = MultipleChoiceJob(model=tiny_qwen2moe, data=text).verdict(0, log("multiple_choice.log"))
    assert mc.succeeded and mc.results["multiple_choice"] == 28.1818
    bench = BenchJob(model=tiny_qwen2moe).verdict(0, log("bench.jsonl"))
    assert bench.succeeded and set(bench.results) >= {"pp64", "tg16", "backends"}


def test_a_model_that_fails_to_load_silently_gets_an_actionable_message(tiny_qwen2moe, text):
    verdict = PerplexityJob(model=tiny_qwen2moe, text=text).verdict(
        1, log("perplexity_missing_model.log"))
    assert not verdict.succeeded and "apex-studio inspect" in verdict.message


def test_job_round_trips_through_its_json_spec(tiny_qwen2moe, text, tmp_path):
    job = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=tmp_path / "i.gguf",
                     context=128, chunks=3, options=RunOptions(threads=2))
    spec = json.loads(json.dumps(job.to_dict()))
    assert spec["kind"] == "imatrix"
    assert job_from_dict(spec) == job


def test_pipeline_dependencies_follow_outputs_to_inputs(tiny_qwen2moe, text, tmp_path):
    imatrix = ImatrixJob(model=tiny_qwen2moe, calibration=text, output_path=tmp_path / "i.gguf",
                         context=128)
    quants = [QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / f"{name}.gguf",
                          base_type="Q4_K_M", imatrix=imatrix.output_path, profile=name)
              for name in ("a", "b")]
    options = EvaluationOptions(reference=tiny_qwen2moe, text=text, context=128, bench=True)
    pipeline = build_pipeline(quants, imatrix, options)
    keys = [s.key for s in pipeline.steps]
    assert keys == ["imatrix", "reference", "a:quantize", "a:kld", "a:bench", "b:quantize",
                    "b:kld", "b:bench"]
    assert pipeline.step("a:quantize").after == ("imatrix",)
    assert pipeline.step("a:kld").after == ("reference", "a:quantize")
    assert pipeline.step("b:bench").after == ("b:quantize",)
    # Files that earlier steps produce need not exist when the pipeline is checked.
    assert pipeline.check() == []


def test_pipeline_refuses_unknown_or_late_dependencies(tiny_qwen2moe, text):
    from apex_gui.core.jobs.pipeline import PipelineStep

    job = PerplexityJob(model=tiny_qwen2moe, text=text)
    with pytest.raises(ValueError, match="must come before"):
        Pipeline((PipelineStep("a", job, ("b",)), PipelineStep("b", job)))
    with pytest.raises(ValueError, match="twice"):
        Pipeline((PipelineStep("a", job), PipelineStep("a", job)))


def test_bundled_calibration_is_combined_in_the_documented_order():
    files = calibration.bundled_calibration_files()
    assert [f.name for f in files] == list(calibration.BUNDLED_ORDER)
    combined = calibration.combine_calibration()
    text = combined.read_text(encoding="utf-8")
    starts = [text.index(f.read_text(encoding="utf-8").strip()[:200]) for f in files]
    assert starts == sorted(starts)
    assert combined.is_relative_to(Path(__import__("os").environ["APEX_STUDIO_CACHE_DIR"]))
    assert calibration.combine_calibration() == combined  # content-addressed, reused


def test_user_calibration_files_are_combined_and_checked(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first file\n")
    b.write_text("second file with a backslash \\n kept\n")
    combined = calibration.combine_calibration([a, b]).read_text(encoding="utf-8")
    assert combined == "first file\n\nsecond file with a backslash \\n kept\n"
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(calibration.CalibrationError, match="empty"):
        calibration.combine_calibration([a, empty])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(calibration.CalibrationError, match="not UTF-8"):
        calibration.combine_calibration([latin])


def test_imatrix_cache_key_follows_model_and_text(tiny_qwen2moe, text, tmp_path):
    first = calibration.imatrix_cache_path(tiny_qwen2moe, text, 512, None)
    assert first == calibration.imatrix_cache_path(tiny_qwen2moe, text, 512, None)
    assert first != calibration.imatrix_cache_path(tiny_qwen2moe, text, 256, None)
    assert first.name.endswith(".gguf")


def test_run_store_keeps_runs_across_a_restart(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.start("perplexity", "perplexity m", {"kind": "perplexity", "model": "m.gguf"},
                         ["llama-perplexity", "-m", "m.gguf"], None)
    store.finish(run_id, "succeeded", 0, "PPL 5.1", "log ±", {"ppl": 5.1})
    reopened = RunStore(tmp_path / "runs.sqlite")
    record = reopened.get(run_id)
    assert record is not None and record.status == "succeeded" and record.log == "log ±"
    assert record.results == {"ppl": 5.1} and record.duration is not None
    assert reopened.results_for("m.gguf") == {"ppl": 5.1}
    assert [r.id for r in reopened.runs(kind="perplexity")] == [run_id]
    # A run of a process that is still alive (this one) is not "interrupted".
    ongoing = reopened.start("bench", "b", {"kind": "bench"}, [], None)
    assert reopened.mark_interrupted() == 0
    assert reopened.get(ongoing).status == "running"  # type: ignore[union-attr]
    reopened.finish(ongoing, "succeeded", 0, "ok", "", {})
    reopened.close()
    store.close()


def test_a_live_cli_run_is_not_marked_interrupted_until_its_process_is_gone(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "runs.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from apex_gui.core.jobs.run_store import RunStore\n"
         f"store = RunStore({str(path)!r})\n"
         "print(store.start('quantize', 'q', {}, [], None), flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        run_id = int(writer.stdout.readline())
        window = RunStore(path)
        assert window.mark_interrupted() == 0
        assert window.get(run_id).status == "running"  # type: ignore[union-attr]
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert window.mark_interrupted() == 1
    assert window.get(run_id).status == "interrupted"  # type: ignore[union-attr]
    window.close()
