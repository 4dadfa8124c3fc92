"""Hardware & tiers gives the answer `apex-studio recommend` gives, states the rule that
picked it, marks tiers that need an importance matrix and stars one only when nothing else
loads (issue 22, #4, #9); the KL column never shows another model's published figures and
shows this model's measured one (#3); "24 GB" typed by hand says how it differs from a card
sold as 24GB (#4); the demo's star is an APEX tier, not "Trinity gradient" (polish)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import record
from window_fixtures import demo_with_panels  # noqa: F401 - a fixture

from apex_gui.cli import main as cli_main
from apex_gui.core.fit.recommend import RULE_SHORT
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.views.hardware.hardware_panel import COLUMNS, IMATRIX_MARK

pytestmark = pytest.mark.gui


def tier_rows(panel) -> list[str]:  # type: ignore[no-untyped-def]
    return [panel.table.item(r, 0).text() for r in range(panel.table.rowCount())]


def refit(qtbot, panel, devices: str) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(panel.recommendationChanged, timeout=30_000,
                          check_params_cb=lambda rec: rec is not None):
        panel.manual_edit.setText(devices)


def test_the_window_and_the_cli_star_the_same_tier_by_one_stated_rule(
        qtbot, demo_with_panels, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    window, panels = demo_with_panels
    hardware = panels.hardware
    refit(qtbot, hardware, "12GB")
    twin = write_shape_twin(tmp_path / "Qwen3-30B-A3B-BF16.gguf", "qwen3-30b-a3b")[0]
    with qtbot.waitSignal(hardware.recommendationChanged, timeout=30_000,
                          check_params_cb=lambda rec: rec is not None and rec.results[0]
                          .candidate.path.startswith(str(tmp_path))):
        window.open_model_file(twin)
    rec = hardware.recommendation
    rows = tier_rows(hardware)
    ram = hardware.machine().ram_available

    assert cli_main(["recommend", str(twin), "--vram", "12GB", "--ram", f"{ram}B",
                     "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    labels = [row.removeprefix("★ ").removesuffix(IMATRIX_MARK) for row in rows]
    assert labels == [r["label"] for r in cli["results"]]
    starred = next(label for row, label in zip(rows, labels) if row.startswith("★ "))
    assert cli["recommended"] == rec.recommended.candidate.key
    assert starred == rec.recommended.candidate.label
    # I-Nano loads fully on 12 GB but needs an importance matrix: marked, and not starred.
    nano = labels.index("I-Nano")
    assert rows[nano].endswith(IMATRIX_MARK) and not rows[nano].startswith("★")
    assert rec.results[nano].verdict.name == "FULL_GPU"
    assert not rec.recommended.candidate.needs_imatrix
    summary = hardware.summary.text()
    assert RULE_SHORT in summary and cli["rule"] == rec.rule
    assert hardware.summary.toolTip() == rec.rule  # the whole rule on hover
    assert "No KL divergence is known for this model" in summary  # said, not left out

    # Typed "24 GB" is 22.4 GiB: the status says why a card sold as 24GB may get another tier.
    hardware.manual_edit.setText("24 GB")
    status = hardware.manual_status.text()
    assert "22.4 GiB" in status and "RTX 4090 24GB" in status and "24GiB" in status
    hardware.manual_edit.setText("RTX 4090 24GB")
    assert "cards sold as" not in hardware.manual_status.text()


def test_the_demos_tiers_show_its_own_figures_and_an_apex_tier_starred(
        qtbot, demo_with_panels) -> None:  # type: ignore[no-untyped-def]
    window, panels = demo_with_panels
    hardware = panels.hardware
    model = window.current_model
    # A measured I-Balanced quant of the demo in the run history (as a finished run records it).
    store = RunStore()
    quant = model.path.with_name("demo-APEX-I-Balanced.gguf")
    record(store, "quantize", {"source": str(model.path), "output_path": str(quant),
                               "base_type": "Q6_K", "profile": "i-balanced",
                               "imatrix": str(model.path.with_name("demo.imatrix.gguf"))},
           {"output_bytes": 5_150_000}, output=str(quant))
    record(store, "kl-divergence", {"model": str(quant), "text": "quick.txt", "context": 512},
           {"ppl": 1.5, "kld_mean": 0.000554, "kld_mean_error": 0.00002})
    store.close()
    refit(qtbot, hardware, "RTX 4090 24GB")
    kl = COLUMNS.index("KL mean")
    cells = {hardware.table.item(r, 0).text().removeprefix("★ "): hardware.table.item(r, kl).text()
             for r in range(hardware.table.rowCount())}
    assert not any("published" in text for text in cells.values()), cells
    assert cells["I-Balanced"] == "0.000554 (measured)"
    assert "Trinity gradient" not in cells
    assert hardware.recommendation.recommended.candidate.label in (
        "Quality", "I-Quality", "Balanced", "I-Balanced", "Compact", "I-Compact")
    assert "Qwen3.5-35B-A3B" not in hardware.summary.text()
