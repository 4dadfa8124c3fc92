"""Hardware & tiers panel: injected NVML snapshot, bars, the tier table, apply and copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from apex_gui.core.fit import hardware
from apex_gui.core.fit.placement import Verdict
from apex_gui.core.gguf.model import open_model
from apex_gui.core.units import format_size
from apex_gui.views.hardware.hardware_panel import IMATRIX_MARK, HardwarePanel
from fakes import FakeNvml
from fakes import fake_snapshot

pytestmark = pytest.mark.gui

SCREENSHOTS = Path(os.environ.get("APEX_SCREENSHOT_DIR", "/tmp/apex-screenshots"))


def make_panel(qtbot, model, snapshot) -> HardwarePanel:
    panel = HardwarePanel(model, snapshot=snapshot, context=8192)
    qtbot.addWidget(panel)
    panel.resize(760, 720)
    with qtbot.waitSignal(panel.recommendationChanged, timeout=10_000,
                          check_params_cb=lambda rec: rec is not None):
        panel.show()
    return panel


def test_probe_runs_off_the_gui_thread_and_shows_bars(qtbot) -> None:
    snapshot = fake_snapshot()
    panel = HardwarePanel(None, probe=lambda: snapshot)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.snapshotChanged, timeout=5000):
        pass  # the probe was submitted in the constructor
    names = [bar.name for bar in panel.bars]
    assert names == ["NVIDIA GeForce RTX 4090", "System RAM"]
    assert panel.bars[0].text().startswith("NVIDIA GeForce RTX 4090: 23.6 GB free of 25.8 GB (24.0 GiB)")
    assert "Open a model" in panel.summary.text()
    panel.shutdown()


def test_tier_table_lists_every_profile_with_the_recommended_one_highlighted(
        qtbot, twin_model) -> None:
    panel = make_panel(qtbot, twin_model, fake_snapshot())
    rec = panel.recommendation
    assert rec is not None and panel.table.rowCount() == len(rec.results) >= 9
    labels = [panel.table.item(r, 0).text().removeprefix("★ ") for r in range(panel.table.rowCount())]
    assert labels[:4] == ["Quality", "I-Quality", "Balanced", "I-Balanced"]
    best = panel.recommended_row()
    assert best is not None
    assert rec.recommended.verdict is Verdict.FULL_GPU
    assert panel.table.item(best, 0).text() == "★ " + rec.recommended.candidate.label
    assert panel.table.item(best, 0).font().bold()
    assert sum(panel.table.item(r, 0).font().bold() for r in range(panel.table.rowCount())) == 1
    verdicts = {panel.table.item(r, 2).text() for r in range(panel.table.rowCount())}
    assert "Full GPU" in verdicts
    # Balanced (26 GB) cannot sit whole on a 22 GiB-free card: experts go to the CPU.
    balanced = labels.index("Balanced")
    assert panel.table.item(balanced, 2).text().startswith("Experts on CPU (--n-cpu-moe ")
    size = panel.table.item(balanced, 1).text()
    assert size == format_size(rec.results[balanced].candidate.file_bytes) and size.endswith(" GB")
    assert panel.table.selectionModel().selectedRows()[0].row() == best
    assert panel.bars[0].need == rec.recommended.estimate.devices[0].total
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    panel.grab().save(str(SCREENSHOTS / "hardware_panel.png"))
    panel.shutdown()


def test_apply_emits_the_profile_key_and_copy_puts_the_command_on_the_clipboard(
        qtbot, twin_model) -> None:
    panel = make_panel(qtbot, twin_model, fake_snapshot())
    best = panel.recommendation.recommended
    with qtbot.waitSignal(panel.applyProfileRequested, timeout=1000) as signal:
        panel.apply_button.click()
    assert signal.args == [best.candidate.key]

    row = [panel.table.item(r, 0).text() for r in range(panel.table.rowCount())].index("Balanced")
    panel.table.selectRow(row)
    command = panel.command_edit.text()
    assert command.startswith("llama-server -m ") and "-APEX-Balanced.gguf" in command
    assert "--n-cpu-moe" in command and "-c 8192" in command
    QApplication.clipboard().clear()
    panel.copy_button.click()
    assert QApplication.clipboard().text() == command
    with qtbot.waitSignal(panel.applyProfileRequested, timeout=1000) as signal:
        panel.apply_button.click()
    assert signal.args == ["balanced"]
    panel.shutdown()


def test_manual_devices_and_common_cards_replan(qtbot, twin_model) -> None:
    panel = make_panel(qtbot, twin_model, fake_snapshot())
    with qtbot.waitSignal(panel.recommendationChanged, timeout=10_000):
        panel.choose_card("RTX 3060 12GB")
    assert panel.manual_edit.text() == "RTX 3060 12GB"
    assert [bar.name for bar in panel.bars][0] == "RTX 3060 12GB (manual)"
    verdicts = {fit.verdict for fit in panel.recommendation.results}
    assert Verdict.FULL_GPU not in {panel.recommendation.results[0].verdict}  # Quality: no
    assert verdicts & {Verdict.EXPERTS_IN_RAM, Verdict.PARTIAL}
    assert panel.hardware_label() == "RTX 3060 12GB"

    with qtbot.waitSignal(panel.recommendationChanged, timeout=10_000):
        panel.manual_edit.setText("2 x H100 80GB")
    assert all(f.verdict is Verdict.FULL_GPU for f in panel.recommendation.results)
    assert panel.recommendation.recommended.candidate.key == "balanced"  # lowest published KL

    panel.manual_edit.setText("2 x nonsense")
    assert "Unknown card" in panel.manual_status.text()
    panel.shutdown()


def test_context_and_kv_type_change_the_verdicts(qtbot, twin_model) -> None:
    panel = make_panel(qtbot, twin_model, fake_snapshot())
    before = {f.candidate.key: f for f in panel.recommendation.results}
    with qtbot.waitSignal(panel.recommendationChanged, timeout=10_000):
        panel.kv_combo.setCurrentText("q8_0")
    after = {f.candidate.key: f for f in panel.recommendation.results}
    assert after["quality"].estimate.kv.kv_bytes < before["quality"].estimate.kv.kv_bytes
    assert "-ctk q8_0 -ctv q8_0" in panel.command_edit.text()
    with qtbot.waitSignal(panel.recommendationChanged, timeout=10_000):
        panel.context_spin.setValue(32768)
    assert panel.recommendation.context.n_ctx == 32768
    assert "-c 32768" in panel.command_edit.text()
    panel.shutdown()


def test_no_gpu_snapshot_fits_to_ram(qtbot, twin_model) -> None:
    from pynvml import NVML_ERROR_LIBRARY_NOT_FOUND, NVMLError

    snapshot = hardware.snapshot(backend=FakeNvml(init_error=NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)))
    panel = make_panel(qtbot, twin_model, snapshot)
    assert [bar.name for bar in panel.bars] == ["System RAM"]
    assert "No NVIDIA GPU found" in panel.notes_label.text()
    verdicts = {f.verdict for f in panel.recommendation.results}
    assert verdicts <= {Verdict.CPU_ONLY, Verdict.DOES_NOT_FIT}
    panel.shutdown()


def test_a_quantized_file_is_fitted_as_it_is_first(qtbot, tmp_path: Path,
                                                   tiny_qwen2moe: Path, llama_tools) -> None:
    import subprocess

    quant = tmp_path / "tiny-Q4_K_M.gguf"
    subprocess.run([str(llama_tools.path("quantize")), str(tiny_qwen2moe), str(quant), "Q4_K_M"],
                   check=True, capture_output=True)
    panel = make_panel(qtbot, open_model(quant), fake_snapshot())
    first = panel.recommendation.results[0]
    assert first.candidate.key == "as-is" and first.candidate.label == quant.name
    assert first.candidate.file_bytes == quant.stat().st_size
    panel.table.selectRow(0)
    with qtbot.waitSignal(panel.applyProfileRequested, timeout=1000) as signal:
        panel.apply_button.click()
    assert signal.args == ["stored"]  # MainWindow.switch_profile's key for the file's types
    panel.shutdown()


def test_typed_devices_can_be_added_to_the_detected_ones(qtbot, twin_model) -> None:
    panel = make_panel(qtbot, twin_model, fake_snapshot(free_gib=22, total_gib=24))
    with qtbot.waitSignal(panel.recommendationChanged, timeout=10_000):
        panel.manual_edit.setText("RTX 3060 12GB")
    replaced = panel.machine()
    assert [g.name for g in replaced.gpus] == ["RTX 3060 12GB"]
    assert any("System RAM is this machine's" in note for note in replaced.notes)
    with qtbot.waitSignal(panel.recommendationChanged, timeout=10_000):
        panel.add_detected_check.setChecked(True)
    added = panel.machine()
    assert len(added.gpus) == 2 and added.gpus[1].name == "RTX 3060 12GB"
    assert [g.index for g in added.gpus] == [0, 1]
    assert "detected GPUs plus 1 device" in panel.manual_status.text()
    panel.shutdown()


def test_context_is_capped_at_the_models_training_context(qtbot, tmp_path) -> None:
    from apex_gui.core.gguf.model import open_model
    from apex_gui.core.fixtures.twins import write_shape_twin

    olmoe = open_model(write_shape_twin(tmp_path / "olmoe.gguf", "olmoe-1b-7b")[0])
    panel = make_panel(qtbot, olmoe, fake_snapshot())
    assert olmoe.context_length == 4096
    assert panel.context_spin.value() == 4096
    # the next model, trained on more, gets the asked-for 8192 back
    panel.set_model(open_model(write_shape_twin(tmp_path / "q.gguf", "qwen3-30b-a3b")[0]))
    assert panel.context_spin.value() == 8192
    panel.shutdown()


def test_a_16_gb_card_stars_a_tier_that_builds_as_shown(qtbot, twin_model) -> None:
    """Mini and I-Mini are the same bytes and both need an imatrix: one row, I-Mini, marked
    so; the star goes to a tier built without one (it starred the plain Mini, then I-Mini)."""
    panel = make_panel(qtbot, twin_model, fake_snapshot(free_gib=15, total_gib=16))
    texts = [panel.table.item(r, 0).text() for r in range(panel.table.rowCount())]
    labels = [t.removeprefix("★ ").removesuffix(IMATRIX_MARK) for t in texts]
    assert "I-Mini" in labels and "Mini" not in labels and "Nano" not in labels
    assert "Micro" not in labels
    assert texts[labels.index("I-Mini")].endswith(IMATRIX_MARK)
    rec = panel.recommendation
    assert rec is not None and rec.recommended is not None
    assert not rec.recommended.candidate.needs_imatrix
    assert panel.summary.toolTip() == rec.rule
