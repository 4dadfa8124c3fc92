"""End to end with the real tools: imatrix -> an I-profile quantize that needs it ->
perplexity and KL divergence against the F16 reference, results parsed and stored; and the
same through the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.pipeline import EvaluationOptions, build_pipeline
from apex_gui.core.jobs.quantize import ImatrixJob, QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import run_pipeline
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import Band, BandedType, get_profile


def words(n: int, seed: int = 0) -> str:
    import random

    vocabulary = ("the quick brown fox jumps over a lazy dog while experts route tokens "
                  "through mixture layers of a small model").split()
    rng = random.Random(seed)
    return " ".join(rng.choice(vocabulary) for _ in range(n)) + "\n"


@pytest.fixture(scope="module")
def three_layer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model

    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=3, n_expert=4, seed=11,
                              name="APEX 3-layer test model")
    return write_synthetic_model(tmp_path_factory.mktemp("e2e") / "three-f16.gguf", spec)


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(words(600))
    return path


def i_mini_for_three_layers():
    """I-Mini scaled to 3 layers: one-layer edge bands, and IQ3_XXS instead of IQ2_S for the
    middle layer's routed experts. IQ3_XXS needs the importance matrix just as IQ2_S does, but
    llama-quantize builds its search grid in about a second where IQ2_S takes 3-9 s on a
    2-core machine; the stock I-Mini (IQ2_S) runs in the slow CLI test below."""
    i_mini = get_profile("i-mini")
    routed = BandedType((Band(1, 1, i_mini.routed_experts.edge),), "IQ3_XXS")
    return dataclasses.replace(i_mini, routed_experts=routed,
                               shared_experts=BandedType((Band(1, 1, "Q5_K"),), "Q4_K"),
                               attention=BandedType((Band(1, 1, "Q4_K"),), "Q3_K"))


def test_imatrix_i_quant_perplexity_and_kld_stored(three_layer_model, text, tmp_path,
                                                   llama_tools):
    plan = plan_from_profile(open_model(three_layer_model), i_mini_for_three_layers())
    assert plan.needs_imatrix()
    imatrix = ImatrixJob(model=three_layer_model, calibration=text,
                         output_path=tmp_path / "imatrix.gguf", context=128, chunks=4, options=RunOptions(threads=2))
    quant = QuantizeJob.from_plan(plan, tmp_path / "three-i-mini.gguf",
                                  imatrix=imatrix.output_path, options=RunOptions(threads=2))
    options = EvaluationOptions(reference=three_layer_model, text=text, context=128, chunks=4,
                                kl_divergence=True, perplexity=True)
    pipeline = build_pipeline([quant], imatrix, options)
    assert [s.key for s in pipeline.steps] == ["imatrix", "reference", "i-mini:quantize",
                                               "i-mini:kld", "i-mini:ppl"]
    store = RunStore()
    outcomes = run_pipeline(pipeline, llama_tools, store)
    failed = {k: o.message for k, o in outcomes.items() if not o.succeeded}
    assert not failed

    written = open_model(quant.output_path)
    middle = written.tensor("blk.1.ffn_up_exps.weight").type_name
    assert middle == "IQ3_XXS" and written.tensor("blk.0.ffn_up_exps.weight").type_name == "Q3_K"
    assert quant.output_path.stat().st_size == outcomes["i-mini:quantize"].results["output_bytes"]

    kld = outcomes["i-mini:kld"].results
    assert 0.0 < kld["kld_mean"] <= kld["kld_p999"] <= kld["kld_max"]
    assert kld["kld_median"] <= kld["kld_max"] and 0.0 <= kld["same_top_p"] <= 100.0
    ppl = outcomes["i-mini:ppl"].results["ppl"]
    assert ppl == pytest.approx(kld["ppl"], rel=1e-3)  # the same text, the same quant

    # Everything survives a restart of the app: a new store on the same database file.
    records: dict = {}
    for record in RunStore().runs():  # newest first: a rerun after lost output wins
        records.setdefault(record.kind, record)
    assert set(records) == {"imatrix", "reference-logits", "quantize", "kl-divergence",
                            "perplexity"}
    assert all(r.status == "succeeded" for r in records.values())
    assert records["kl-divergence"].results["kld_max"] == kld["kld_max"]
    assert records["quantize"].spec["imatrix"] == str(imatrix.output_path)
    assert RunStore().results_for(quant.output_path)["kld_mean"] == kld["kld_mean"]

    # The reference logits are cached: a second evaluation does not recompute them.
    again = build_pipeline([], None, options)
    assert [s.key for s in again.steps] == []


def command(*argv: str) -> int:
    from apex_gui.commands import pipeline as jobs

    parser = argparse.ArgumentParser(prog="apex-studio")
    jobs.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_quantize_with_a_tensor_type_file_prints_json(tiny_qwen2moe, tmp_path, capsys):
    types = tmp_path / "types.txt"
    types.write_text("^blk\\.0\\.ffn_down_exps\\.weight$=q6_k\n")
    output = tmp_path / "cli.gguf"
    code = command("quantize", str(tiny_qwen2moe), "--tensor-type-file", str(types),
                   "--type", "Q4_K_M", "-o", str(output), "-t", "2", "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)
    assert [r["step"] for r in rows] == ["quantize"] and rows[0]["status"] == "succeeded"
    assert rows[0]["output"] == str(output) and rows[0]["results"]["quant_mib"] > 0
    assert open_model(output).tensor("blk.0.ffn_down_exps.weight").type_name == "Q6_K"
    assert "> quantize:" in captured.err and "ok (" in captured.err


def test_cli_refuses_an_iq_profile_without_imatrix_and_names_the_fix(tiny_qwen2moe, tmp_path,
                                                                     capsys):
    types = tmp_path / "types.txt"
    types.write_text("^blk\\.1\\.ffn_up_exps\\.weight$=iq2_s\n")
    code = command("quantize", str(tiny_qwen2moe), "--tensor-type-file", str(types),
                   "--type", "Q4_K_M", "-o", str(tmp_path / "x.gguf"), "-t", "2")
    captured = capsys.readouterr()
    assert code == 1
    assert "--imatrix auto" in captured.err and "failed" in captured.out
    assert not (tmp_path / "x.gguf").exists()


def test_cli_eval_table(tiny_qwen2moe, text, tmp_path, capsys):
    code = command("eval", str(tiny_qwen2moe), "--reference", str(tiny_qwen2moe), "--kld",
                   "--ppl", str(text), "--ctx", "128", "--chunks", "4", "--bench",
                   "--bench-prompt", "32", "--bench-gen", "8", "--bench-reps", "1", "-t", "2")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    header, rule, *rows = captured.out.strip().splitlines()
    assert "KLD mean" in header and "pp32 t/s" in header and "tg8 t/s" in header
    assert [r.split()[0] for r in rows] == ["reference", "tiny-qwen2moe-f16:kld",
                                            "tiny-qwen2moe-f16:bench"]
    # The model against its own logits: no divergence at all.
    kld = next(r for r in rows if r.startswith("tiny-qwen2moe-f16:kld"))
    assert "0.000000" in kld


@pytest.mark.slow
def test_cli_pipeline_with_the_stock_i_mini_profile(tmp_path, capsys):
    """The real I-Mini on a 21-layer model (layer 10 is the middle band: IQ2_S experts),
    with the importance matrix computed automatically from a user calibration file."""
    from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model

    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=21, n_expert=2, n_expert_used=1, seed=7,
                              name="APEX 21-layer test model")
    model = write_synthetic_model(tmp_path / "deep-f16.gguf", spec)
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(words(800, seed=1))
    evaluation = tmp_path / "eval.txt"
    evaluation.write_text(words(800, seed=2))
    code = command("pipeline", str(model), "--profiles", "compact,i-mini",
                   "--output-dir", str(tmp_path / "quants"), "--calibration", str(calibration),
                   "--imatrix-ctx", "128", "--imatrix-chunks", "4", "--eval", "--ppl",
                   str(evaluation), "--ctx", "128", "--chunks", "4", "-t", "2", "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = {r["step"]: r for r in json.loads(captured.out)}
    assert list(rows) == ["imatrix", "reference", "compact:quantize", "compact:kld",
                          "i-mini:quantize", "i-mini:kld"]
    assert rows["compact:quantize"]["job"]["imatrix"] is None
    assert rows["i-mini:quantize"]["job"]["imatrix"] == rows["imatrix"]["output"]
    # The quant's name follows the published naming (<stem>-APEX-<Label>.gguf).
    assert rows["i-mini:quantize"]["output"] == str(tmp_path / "quants" / "deep-APEX-I-Mini.gguf")
    mini = open_model(rows["i-mini:quantize"]["output"])
    assert mini.tensor("blk.10.ffn_down_exps.weight").type_name == "IQ2_S"
    assert rows["i-mini:kld"]["results"]["kld_mean"] > rows["compact:kld"]["results"]["kld_mean"]
