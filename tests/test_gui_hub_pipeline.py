"""File > Quantize a Hugging Face model, driven as a user would: a local checkpoint folder
(the trained demo exported by training/export_hf.py) -> converted with llama.cpp's converter
-> an APEX quant and its card; Start again reuses every finished step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from hf_pipeline_helpers import export_demo

from apex_gui.core.workflow.state import STATE_FILE


#: A real conversion and quantization from the window (minutes on 2 busy cores).
pytestmark = pytest.mark.timeout(900)


@pytest.mark.gui
def test_window_turns_a_checkpoint_folder_into_quants_and_resumes(
        qtbot: QtBot, demo_window, tmp_path: Path, llama_tools) -> None:
    checkpoint = export_demo(tmp_path / "demo-qwen2moe")
    dialog = demo_window.show_hub_pipeline_dialog()
    assert not dialog.setup_button.isVisible(), dialog.setup_label.text()
    dialog.source_edit.setText(str(checkpoint))
    dialog.profiles_edit.setText("mini")
    dialog.output_edit.setText(str(tmp_path / "work"))
    dialog.pre_tokenizer_edit.setText("gpt-2")
    dialog.evaluate_box.setChecked(False)
    with qtbot.waitSignal(dialog.finishedWith, timeout=600_000) as done:
        dialog.start_button.click()
    assert done.args[0].startswith("Done"), dialog.status_label.text()
    assert (tmp_path / "work" / "demo-qwen2moe-APEX-Mini.gguf").is_file()
    assert (tmp_path / "work" / "README.md").is_file()
    steps = [dialog.steps.item(i).text() for i in range(dialog.steps.count())]
    assert any(s.startswith("convert: done") for s in steps), steps
    with qtbot.waitSignal(dialog.finishedWith, timeout=120_000) as again:
        dialog.start_button.click()
    assert again.args[0].startswith("Done")
    journal = json.loads((tmp_path / "work" / STATE_FILE).read_text())["journal"]
    assert [e["event"] for e in journal if e["step"] == "convert"] == ["started", "done",
                                                                       "reused"]
    dialog.close()
