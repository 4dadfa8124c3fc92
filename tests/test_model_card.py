"""The model card: files table, per-profile methods, benchmark numbers from the run store,
honest noise notes and run commands, in the shape of the published APEX cards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.plan.profiles import builtin_profiles
from apex_gui.core.report.card_facts import (
    CardFile, CardInputs, ModelFacts, card_file_name, describe_profile,
)
from apex_gui.core.report.model_card import render_model_card
from apex_gui.core.report.results import Measure, QuantResult, collect_results, compare_ppl
from fakes import inputs_from, record


def table_rows(card: str, heading: str) -> list[list[str]]:
    section = card.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if set("".join(cells)) <= set("-"):
            continue
        rows.append(cells)
    return rows


def test_collect_results_merges_runs_per_file_and_skips_failures(store: RunStore,
                                                                  tmp_path: Path) -> None:
    rows = collect_results(store, reference=tmp_path / "qwen-f16.gguf")
    labels = [r.label for r in rows]
    assert labels == ["F16", "APEX Quality", "APEX I-Quality", "APEX Compact"]
    quality = rows[1]
    assert quality.size_bytes == 2130
    assert quality.ppl == Measure(6.527, 0.041)
    assert quality.kld_mean == Measure(0.0114, 0.0002)  # not the failed run's 99.0
    assert quality.accuracy["HellaSwag"] == Measure(83.0, 1.9)
    assert quality.speed_of("tg") == ("tg128", Measure(60.0 + 21.3, 0.5))
    assert rows[0].kind == "reference" and rows[0].ppl == Measure(6.537, 0.041)
    assert rows[0].size_bytes == 6000
    assert quality.eval_text == "quick_eval-abc.txt" and quality.eval_context == 512


def test_card_files_table_lists_every_file_with_size_and_best_for(store: RunStore,
                                                                   tmp_path: Path) -> None:
    card = render_model_card(inputs_from(store, tmp_path))
    rows = table_rows(card, "## Available Files")
    by_file = {r[0].strip("`"): r for r in rows[1:]}
    assert set(by_file) == {"Qwen3.5-35B-A3B-APEX-Quality.gguf",
                            "Qwen3.5-35B-A3B-APEX-I-Quality.gguf",
                            "Qwen3.5-35B-A3B-APEX-Compact.gguf", "mmproj-F16.gguf"}
    quality = by_file["Qwen3.5-35B-A3B-APEX-Quality.gguf"]
    assert quality[1] == "APEX Quality"
    assert quality[3] == "6.527"  # PPL column from the run store
    assert quality[4] == "81.3 t/s"
    assert "Highest quality" in quality[5]
    assert by_file["mmproj-F16.gguf"][2] == "899 MB"
    assert "vision" in by_file["mmproj-F16.gguf"][5].lower()


def test_card_benchmark_table_numbers_match_the_run_store(store: RunStore,
                                                          tmp_path: Path) -> None:
    card = render_model_card(inputs_from(store, tmp_path))
    rows = {r[0]: r for r in table_rows(card, "### Core Metrics")}
    header = table_rows(card, "### Core Metrics")  # first row is the header
    # The fixture's "quants" are a few kB: the size column takes their unit.
    assert header[0][:6] == ["Quantization", "Size (kB)", "PPL", "KL mean", "KL max", "KL 99.9%"]
    for record in store.runs(kind="kl-divergence", status="succeeded"):
        key = record.spec["model"].rsplit("APEX-", 1)[1].removesuffix(".gguf")
        label = "APEX " + builtin_profiles()[key].label
        r = record.results
        assert rows[label][2] == f"{r['ppl']:.3f} ± {r['ppl_error']:.3f}"
        # KL mean keeps two significant digits of its error: 0.01140 ± 0.00020.
        assert rows[label][3] == Measure(r["kld_mean"], r["kld_mean_error"]).format(4)
        assert float(rows[label][3].split(" ± ")[0]) == pytest.approx(r["kld_mean"])
        assert float(rows[label][3].split(" ± ")[1]) == pytest.approx(r["kld_mean_error"])
        assert float(rows[label][4]) == r["kld_max"]
    assert rows["F16"][2] == "6.537 ± 0.041" and rows["F16"][3] == "--"
    assert rows["APEX Quality"][6] == "83.0%"  # HellaSwag column
    assert "99.0" not in card  # the failed run


def test_card_is_honest_about_noise(store: RunStore, tmp_path: Path) -> None:
    card = render_model_card(inputs_from(store, tmp_path))
    notes = card.split("### Reading the numbers", 1)[1].split("\n\n")[1]
    # Quality 6.527 vs F16 6.537: 0.010 apart with ~0.058 combined error -> noise, not a win.
    assert re.search(r"APEX Quality and F16 differ by -0\.0100 PPL, within the measurement "
                     r"error", notes)
    # Compact 6.783 vs F16: 0.246 apart -> a real difference.
    assert "APEX Compact has a higher PPL than F16 by 0.2460, beyond the measurement error" in notes
    assert "beats F16" not in card
    assert "quick check, not wikitext-2" in card


def test_compare_ppl_without_errors_says_unknown() -> None:
    verdict = compare_ppl(Measure(6.5), Measure(6.6))
    assert not verdict.within_noise and "unknown" in verdict.describe("a", "b")


def test_card_methods_describe_only_the_profiles_produced_with_this_models_layers(
        store: RunStore, tmp_path: Path) -> None:
    card = render_model_card(inputs_from(store, tmp_path))
    methods = card.split("## How each file was made", 1)[1].split("## Benchmark", 1)[0]
    assert "APEX Quality (40 layers): routed experts Q6_K (layers 0-4, 35-39), Q5_K (5-9, " \
           "30-34), IQ4_XS (10-29); shared experts Q8_0 in every layer" in methods
    assert "APEX I-Quality" in methods and "importance matrix" in methods
    assert "APEX Compact (40 layers): routed experts Q4_K (layers 0-4, 35-39), Q3_K (5-34)" \
        in methods
    assert "Balanced" not in methods and "Mini" not in methods


def test_describe_profile_for_lfm2_style_leading_dense_layers() -> None:
    facts = ModelFacts(name="LFM2.5-8B-A1B", architecture="lfm2moe", n_layer=24,
                       n_leading_dense=2, n_expert=32, n_expert_used=4, n_expert_shared=0,
                       total_params=8_000_000_000, active_params=1_000_000_000,
                       context_length=128_000,
                       mixers=(("short convolution", 18), ("full attention", 6)))
    text = describe_profile(builtin_profiles()["compact"], facts)
    assert "shared experts" not in text  # the model has none
    assert "routed experts Q4_K (layers 2-4, 19-23)" in text
    assert "the 2 leading dense FFN layers Q6_K in every layer" in text
    assert "token-mixing" in text


def test_card_run_commands_llama_cpp_ollama_localai_and_mmproj(store: RunStore,
                                                               tmp_path: Path) -> None:
    card = render_model_card(inputs_from(store, tmp_path))
    repo = "alice/Qwen3.5-35B-A3B-APEX-GGUF"
    file = "Qwen3.5-35B-A3B-APEX-Quality.gguf"
    assert f"hf download {repo} {file} --local-dir ." in card
    assert f"llama-server -m {file} -c 8192 -ngl 99 --mmproj mmproj-F16.gguf" in card
    assert f"llama-cli -m {file} -c 8192 -ngl 99 --mmproj mmproj-F16.gguf" in card
    assert f"ollama run hf.co/{repo}:Quality" in card
    assert f"echo 'FROM ./{file}' > Modelfile" in card
    assert f"local-ai run {repo}@{file}" in card
    assert f"hf download {repo} mmproj-F16.gguf" in card


def test_card_reproduction_uses_stock_llama_quantize_with_repo_recipes(store: RunStore,
                                                                       tmp_path: Path) -> None:
    card = render_model_card(inputs_from(store, tmp_path))
    assert ("llama-quantize --tensor-type-file recipes/Qwen3.5-35B-A3B-APEX-I-Quality"
            ".tensor-types.txt --token-embedding-type q6_k --imatrix imatrix.gguf "
            "qwen-f16.gguf Qwen3.5-35B-A3B-APEX-I-Quality.gguf Q6_K") in card
    assert card.startswith("---\nbase_model:\n- Qwen/Qwen3.5-35B-A3B\nlicense: apache-2.0\n")


def test_card_uses_the_memory_checks_flags(store: RunStore, tmp_path: Path, tiny_qwen2moe) -> None:
    from dataclasses import replace

    from apex_gui.core.fit.device_spec import parse_device_spec
    from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry
    from apex_gui.core.gguf.model import open_model
    from apex_gui.core.fit.recommend import evaluate, profile_candidates
    from apex_gui.core.fit.placement import MachineMemory

    model = open_model(tiny_qwen2moe)
    geom = ModelGeometry.from_model(model)
    candidate = profile_candidates(model, [builtin_profiles()["quality"]])[0]
    machine = MachineMemory(tuple(parse_device_spec("RTX 4090")), 64 * 10**9)
    fit = evaluate(geom, candidate, machine, ContextSettings(n_ctx=8192))
    inputs = inputs_from(store, tmp_path)
    inputs = replace(inputs, fits={"Qwen3.5-35B-A3B-APEX-Quality.gguf": fit},
                     hardware="RTX 4090 24GB")
    card = render_model_card(inputs)
    assert f"llama-server -m Qwen3.5-35B-A3B-APEX-Quality.gguf -c 8192 {fit.flags}" in card
    rows = table_rows(card, "## Hardware Requirements")
    assert rows[1][0] == "`Qwen3.5-35B-A3B-APEX-Quality.gguf`"
    assert rows[1][2] == "full GPU offload"


def test_card_without_measurements_says_so_and_has_no_benchmark_numbers() -> None:
    inputs = CardInputs(repo_id="bob/Tiny-APEX-GGUF", model_name="Tiny",
                        files=(CardFile("Tiny-APEX-Mini.gguf", "APEX Mini", 3_600_000_000,
                                        profile_key="mini"),),
                        results=(QuantResult("Q4_K_M", "baseline", size_bytes=4_900_000_000,
                                             measured=False),))
    card = render_model_card(inputs)
    assert "Benchmarks coming soon" in card
    assert "Core Metrics" not in card
    assert "| `Tiny-APEX-Mini.gguf` | APEX Mini | 3.60 GB | Smallest viable |" in card


def test_measure_format_keeps_two_significant_digits_of_the_error() -> None:
    assert Measure(6.527, 0.041).format(3) == "6.527 ± 0.041"
    assert Measure(0.0114, 0.0002).format(4) == "0.01140 ± 0.00020"
    assert Measure(0.000130, 0.0).format(4) == "0.00013"  # below the printed precision
    assert Measure(83.0, 1.9).format(1, "%") == "83.0% ± 1.9%"
    assert Measure(6.5).format(3) == "6.500"


def test_card_file_names_are_safe_for_shells_and_the_hub() -> None:
    assert card_file_name("APEX tiny qwen2moe", "I-Quality") == "APEX-tiny-qwen2moe-APEX-I-Quality.gguf"
    assert card_file_name("Qwen3.5-35B-A3B", "Trinity 5-band") == \
        "Qwen3.5-35B-A3B-APEX-Trinity-5-band.gguf"


def test_results_of_one_model_family_leave_other_models_out(tmp_path):
    from apex_gui.core.report.results import collect_results
    from apex_gui.core.jobs.run_store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")

    def record(kind: str, spec: dict, results: dict) -> None:
        run_id = store.start(kind, kind, spec, ["tool"], None)
        store.finish(run_id, "succeeded", 0, "ok", "", results)

    for source in ("/m/a-F16.gguf", "/m/b-F16.gguf"):
        stem = source[3]
        logits = f"/cache/{stem}.kld"
        record("reference-logits", {"model": source, "output_path": logits, "text": "t.txt"},
               {"ppl": 10.0})
        record("quantize", {"source": source, "output_path": f"/q/{stem}-APEX-Quality.gguf",
                            "profile": "quality"}, {"output_bytes": 100})
        record("kl-divergence", {"model": f"/q/{stem}-APEX-Quality.gguf",
                                 "reference_logits": logits}, {"kld_mean": 0.01, "ppl": 10.1})
    # a quant made elsewhere but measured against a's logits belongs with a
    record("kl-divergence", {"model": "/elsewhere/a-Q4_K_M.gguf",
                             "reference_logits": "/cache/a.kld"}, {"kld_mean": 0.02})
    rows = collect_results(store, reference="/m/a-F16.gguf", family_only=True)
    assert {r.path for r in rows} == {"/m/a-F16.gguf", "/q/a-APEX-Quality.gguf",
                                      "/elsewhere/a-Q4_K_M.gguf"}
    everything = collect_results(store, reference="/m/a-F16.gguf")
    assert "/q/b-APEX-Quality.gguf" in {r.path for r in everything}
    store.close()


def test_relative_and_absolute_paths_of_one_file_are_one_row(tmp_path, monkeypatch):
    from apex_gui.core.jobs.evaluations import PerplexityJob
    from apex_gui.core.report.results import collect_results
    from apex_gui.core.jobs.run_store import RunStore

    monkeypatch.chdir(tmp_path)
    store = RunStore(tmp_path / "runs.sqlite")
    job = PerplexityJob(model=Path("mini.gguf"), text=Path("t.txt"))
    spec = job.to_dict()
    assert spec["model"] == str(tmp_path / "mini.gguf")  # stored absolute
    run_id = store.start("perplexity", "ppl", spec, ["llama-perplexity"], None)
    store.finish(run_id, "succeeded", 0, "ok", "", {"ppl": 7.0})
    # a run recorded by an older version with a relative path
    old = store.start("perplexity", "ppl", {"model": "mini.gguf", "text": "t.txt"}, ["x"], None)
    store.finish(old, "succeeded", 0, "ok", "", {"ppl": 7.5})
    rows = [r for r in collect_results(store) if r.path.endswith("mini.gguf")]
    assert len(rows) == 1 and rows[0].path == str(tmp_path / "mini.gguf")
    assert store.results_for(tmp_path / "mini.gguf")["ppl"] == 7.5
    store.close()
