"""A sensitivity table is a file strangers publish: every number is checked on load, the
model fingerprint must match, and a type the table did not measure is estimated and named."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from apex_gui.core.gguf.model import open_model
from apex_gui.core.quality.sensitivity import model_fingerprint
from apex_gui.core.quality.table import (TABLE_CAP_BYTES, SensitivityFileError, SensitivityTable,
                                         respond, vec_dot_class)
from quality_tables import synthetic_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def saved(tiny_qwen2moe: Path, tmp_path: Path) -> Path:
    return synthetic_table(open_model(tiny_qwen2moe)).save(tmp_path / "s.json")


def _edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_a_saved_table_loads_back_and_matches_its_model(saved: Path, tiny_qwen2moe: Path) -> None:
    model = open_model(tiny_qwen2moe)
    table = SensitivityTable.load(saved, model)
    assert table.fingerprint == model_fingerprint(model)
    assert table.errors == synthetic_table(model).errors


@pytest.mark.parametrize("content, says", [
    ("[]", "is not a JSON object"),
    ("{}", "sensitivity format null"),
    ('{"version": 1}', "sensitivity format 1"),
    ("not json", "is not a sensitivity table"),
    ("", "is not a sensitivity table"),
    ("[" * 100_000, "nests deeper than any table does"),
])
def test_a_malformed_file_is_one_line(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SensitivityFileError) as caught:
        SensitivityTable.load(path)
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", -0.5, "1e400", "true", '"x"'])
def test_nan_inf_negative_and_non_numbers_are_refused(saved: Path, bad) -> None:
    """json.dumps writes bare NaN / Infinity; a hand edit can write anything."""
    text = saved.read_text()
    data = json.loads(text)
    name = next(iter(data["errors"]))
    kind = next(iter(data["errors"][name]))
    marker = 123456.75
    data["errors"][name][kind] = marker
    saved.write_text(json.dumps(data).replace(str(marker), str(bad)))
    with pytest.raises(SensitivityFileError) as caught:
        SensitivityTable.load(saved)
    assert name in str(caught.value) or "not a" in str(caught.value)


def test_a_negative_scale_or_floor_is_refused(saved: Path) -> None:
    _edit(saved, lambda d: d["kind_scale"].update({"attn_q": -1e-3}))
    with pytest.raises(SensitivityFileError, match="the scale of attn_q"):
        SensitivityTable.load(saved)


def test_an_unknown_type_name_is_refused(saved: Path) -> None:
    _edit(saved, lambda d: d["errors"]["output.weight"].update({"Q9_K": 1.0}))
    with pytest.raises(SensitivityFileError, match="not a ggml type"):
        SensitivityTable.load(saved)


def test_another_models_table_is_refused_in_one_line(saved: Path, tiny_qwen3moe: Path) -> None:
    other = open_model(tiny_qwen3moe)
    with pytest.raises(SensitivityFileError) as caught:
        SensitivityTable.load(saved, other)
    message = str(caught.value)
    assert "measured on another model" in message and other.path.name in message
    assert "\n" not in message


def test_tensors_the_model_lacks_are_refused_under_its_own_fingerprint(
        saved: Path, tiny_qwen2moe: Path) -> None:
    """Another model's errors under this model's fingerprint (a hand edit) were taken and
    ranked nothing (found by the fault campaign: recommend exited 0)."""
    _edit(saved, lambda data: data.__setitem__("errors", {"blk.0.other": {"Q4_K": 1.0}}))
    model = open_model(tiny_qwen2moe)
    with pytest.raises(SensitivityFileError) as caught:
        SensitivityTable.load(saved, model)
    message = str(caught.value)
    assert "names 1 tensor" in message and "blk.0.other" in message and "\n" not in message


def test_an_oversized_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(TABLE_CAP_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ValueError, match="more than"):
        SensitivityTable.load(path)


def test_saving_never_writes_a_bare_nan(saved: Path, tiny_qwen2moe: Path) -> None:
    table = SensitivityTable.load(saved)
    table.kind_scale["attn_q"] = math.nan
    with pytest.raises(ValueError):
        table.save(saved.with_name("nan.json"))
    assert not saved.with_name("nan.json").exists()


def test_unmeasured_types_are_estimated_between_measured_ones(saved: Path) -> None:
    table = SensitivityTable.load(saved)
    name = "blk.0.attn_q.weight"
    measured = table.errors[name]
    # Q4_1 (5.0 bits a weight) sits between Q4_K (4.5) and Q5_K (5.5).
    error, how = table.estimated_error(name, "Q4_1")
    assert measured["Q5_K"] < error < measured["Q4_K"]
    assert how == "between Q4_K and Q5_K"
    prediction = table.predict({name: "Q4_1"})
    assert prediction.estimated == {"Q4_1": (1, how)}
    assert prediction.note() == f"estimated: Q4_1 on 1 tensor {how}"
    assert prediction.kld > table.predict({}).kld  # damage added, not free


def test_the_response_curve_is_identity_without_points_and_monotone_with_them() -> None:
    assert respond([], 0.003) == 0.003
    points = [(0.001, 0.001), (0.02, 0.015)]
    values = [respond(points, x) for x in (0.0005, 0.001, 0.005, 0.02, 0.04)]
    assert values == sorted(values)
    assert respond(points, 0.0005) == pytest.approx(0.0005)
    assert respond(points, 0.04) == pytest.approx(0.04 * 0.015 / 0.02)


def test_activation_classes_follow_llama_cpp_vec_dot_types() -> None:
    assert vec_dot_class("Q4_K") == vec_dot_class("IQ4_XS") == "q8_K"
    assert vec_dot_class("Q8_0") == vec_dot_class("Q5_0") == vec_dot_class("IQ4_NL") == "q8_0"
    assert vec_dot_class("Q5_1") == "q8_1"
    assert vec_dot_class("F16") is None and vec_dot_class("BF16") is None


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apex_gui", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_recommend_goes_on_without_a_malformed_table_beside_the_model(
        tiny_qwen2moe: Path, tmp_path: Path) -> None:
    """``echo '[]' > demo.sensitivity.json; apex-studio recommend demo.gguf --vram 24GB``"""
    model = tmp_path / "demo.gguf"
    model.write_bytes(tiny_qwen2moe.read_bytes())
    (tmp_path / "demo.sensitivity.json").write_text("[]")
    done = _cli("recommend", str(model), "--vram", "24GB", "--ram", "64GB", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    notes = [line for line in done.stderr.splitlines() if "demo.sensitivity.json" in line]
    assert len(notes) == 1 and "not a JSON object" in notes[0]


def test_recommend_refuses_another_models_table_in_one_line(
        tiny_qwen2moe: Path, tiny_qwen3moe: Path, saved: Path, tmp_path: Path) -> None:
    done = _cli("recommend", str(tiny_qwen3moe), "--vram", "24GB", "--ram", "64GB",
                "--sensitivity", str(saved), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "measured on another model" in done.stderr


@pytest.mark.gui
def test_the_tier_table_keeps_working_beside_a_malformed_table(qtbot, tmp_path: Path) -> None:
    """``echo '[]' > demo.sensitivity.json`` once broke the Hardware & tiers table with
    "'list' object has no attribute 'get'": now the tiers rank as without a table (the
    published KL means are Qwen3.5-35B-A3B's, so this model ranks by fit and tier order)."""
    from apex_gui.core.fixtures.synthetic import DEMO_SPEC, write_synthetic_model
    from apex_gui.views.hardware.hardware_panel import COLUMNS, HardwarePanel

    path = write_synthetic_model(tmp_path / "demo.gguf", DEMO_SPEC)
    (tmp_path / "demo.sensitivity.json").write_text("[]")
    panel = HardwarePanel(open_model(path), snapshot=None, auto_probe=False,
                          manual_devices="RTX 4090 24GB")
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.recommendationChanged, timeout=20_000,
                          check_params_cb=lambda rec: rec is not None):
        panel.show()
    assert panel.table.rowCount() >= 4
    row = panel.recommended_row()
    assert row is not None
    assert panel.table.item(row, COLUMNS.index("KL mean")).text() == "--"
    panel.shutdown()
