"""Polish from issue 15: --json on twin/synth, detect on an unquantized model, labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_gui.cli import main
from apex_gui.core.fixtures.twin_layouts import TWIN_LAYOUTS
from apex_gui.core.plan.profiles import builtin_profiles
from apex_gui.core.report.card_facts import BEST_FOR


def test_twin_and_synth_take_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["twin", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"layouts": list(TWIN_LAYOUTS)}
    target = tmp_path / "olmoe.gguf"
    assert main(["twin", "olmoe-1b-7b", "-o", str(target), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"files": [str(target)]}
    synth = tmp_path / "tiny.gguf"
    preset = sorted(__import__("apex_gui.core.fixtures.synthetic", fromlist=["PRESETS"]).PRESETS)[0]
    assert main(["synth", preset, "-o", str(synth), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"files": [str(synth)]}


def test_detect_on_an_unquantized_model_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "olmoe-bf16.gguf"
    assert main(["twin", "olmoe-1b-7b", "-o", str(target)]) == 0
    capsys.readouterr()
    assert main(["detect", str(target)]) == 0
    out = capsys.readouterr().out
    assert "not quantized" in out and len(out.splitlines()) == 1  # no list of meaningless differences


def test_profile_labels_follow_their_keys_and_cards_claim_no_unmeasured_ratio() -> None:
    trinity = builtin_profiles()["trinity-gradient"]
    assert trinity.label.lower().replace(" ", "-") == trinity.key
    assert "Best overall" not in BEST_FOR["i-balanced"]
