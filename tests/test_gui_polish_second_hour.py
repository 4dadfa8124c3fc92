"""The polish list of issue 22, driven through the real window: the hover text follows a paint
stroke under the mouse; one cell is "1 cell"; the demo is in Open recent; typed devices are
not headed "Detected on this machine"; a quant of the 12-layer demo detected as I-Quality
says that I-Quality and I-Balanced are one plan there, and a plan of it is not named
"...-APEX-I-Balanced-APEX-Balanced.gguf"."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from fakes import FakeNvml
from pynvml import NVML_ERROR_LIBRARY_NOT_FOUND, NVMLError
from window_fixtures import demo_with_panels  # noqa: F401 - a fixture

from apex_gui.core.fit.hardware import snapshot
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.plan.detect import detect_profile
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile, quant_file_name
from apex_gui.views.plan.export_dialog import export_commands
from apex_gui.views.window.main_window import MainWindow

pytestmark = pytest.mark.gui


def test_the_hover_text_follows_a_stroke_and_counts_one_cell(demo_window: MainWindow) -> None:
    heatmap = demo_window.heatmap
    demo_window.plan_panel.palette_widget.set_current_type("Q2_K")
    cell = (3, "attn_q")
    centre = heatmap.cell_rect(cell).center()
    QTest.mouseMove(heatmap.viewport(), centre)
    assert demo_window.hover_label.text().startswith("layer 3 attn_q: Q6_K")
    QTest.mousePress(heatmap.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    QTest.mouseRelease(heatmap.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    assert demo_window.current_plan.cell_type(*cell) == "Q2_K"
    assert demo_window.statusBar().currentMessage().startswith("paint 1 cell Q2_K: now ")
    QTest.qWait(5)  # one turn of the event loop, the mouse still on the cell
    assert demo_window.hover_label.text().startswith("layer 3 attn_q: Q2_K")


def test_the_demo_is_in_open_recent(demo_window: MainWindow) -> None:
    demo = demo_window.current_model.path
    assert demo_window.settings.recent_files[0] == str(demo)
    demo_window.recent_menu.aboutToShow.emit()
    assert any(action.text().endswith(demo.name) for action in demo_window.recent_menu.actions())


def test_typed_devices_are_not_headed_as_this_machines(qtbot, demo_with_panels) -> None:  # type: ignore[no-untyped-def]
    _window, panels = demo_with_panels
    hardware = panels.hardware
    # This machine as the probe sees it without NVIDIA's library (the injected-NVML pattern).
    hardware.set_snapshot(snapshot(backend=FakeNvml(
        init_error=NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND))))
    notes = hardware.notes_label
    assert hardware.devices_heading.text() == "Detected on this machine"
    assert "No NVIDIA GPU found" in notes.text() and not notes.isHidden()
    hardware.manual_edit.setText("RTX 4090")
    assert hardware.devices_heading.text().startswith("Planning for the devices typed below")
    assert notes.isHidden()  # "planning for CPU only" is not true of the typed devices
    hardware.add_detected_check.setChecked(True)
    assert "plus the devices typed below" in hardware.devices_heading.text()
    assert not notes.isHidden()
    hardware.manual_edit.setText("")
    assert hardware.devices_heading.text() == "Detected on this machine"


def test_a_quant_name_is_not_labelled_twice() -> None:
    assert quant_file_name("demo-APEX-I-Balanced.gguf", "Balanced") == "demo-APEX-Balanced.gguf"
    assert quant_file_name("Qwen3-30B-A3B-BF16.gguf", "I-Quality") == \
        "Qwen3-30B-A3B-APEX-I-Quality.gguf"


@pytest.mark.slow
def test_a_demo_quant_says_its_profiles_are_one_plan(qtbot, demo_window: MainWindow,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path, llama_tools) -> None:
    """Real llama-imatrix and llama-quantize make an I-Balanced quant of the demo."""
    quant = tmp_path / "demo-APEX-I-Balanced.gguf"
    made = subprocess.run([sys.executable, "-m", "apex_gui", "quantize",
                           str(demo_window.current_model.path), "--profile", "i-balanced",
                           "--imatrix", "auto", "--imatrix-chunks", "2", "-o", str(quant)],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr
    with qtbot.waitSignal(demo_window.modelLoadFinished, timeout=20_000):
        demo_window.open_model_file(quant)
    detected = demo_window.plan_panel.detected_label.text()
    assert "I-Quality = I-Balanced" in detected and "one plan on this 12-layer model" in detected
    quantize, _ = export_commands(demo_window.current_plan, tmp_path / "plan.txt")
    output = Path(shlex.split(quantize)[-2]).name  # llama-quantize ... SOURCE OUTPUT TYPE
    assert output.count("-APEX-") == 1, quantize


def test_profiles_that_are_one_plan_on_a_shallow_model_are_named_together(tmp_path: Path) -> None:
    """16 layers: the 10-deep edge bands meet, Quality and Balanced plan the same types."""
    source = open_model(write_shape_twin(tmp_path / "olmoe-bf16.gguf", "olmoe-1b-7b")[0])
    assert source.n_layer == 16
    plan = plan_from_profile(source, get_profile("quality"))
    quant = open_model(write_shape_twin(tmp_path / "olmoe-APEX-Quality.gguf", "olmoe-1b-7b",
                                        tensor_types={n: plan.effective_type(n)
                                                      for n in plan.types})[0])
    best = detect_profile(quant)[0]
    assert best.exact and "Quality = Balanced" in best.describe()
    assert "one plan on this 16-layer model" in best.describe()
