"""Export writes a command that builds the quant it names: an I-variant (I-Compact: Compact's
types, made with an importance matrix) gets ``--imatrix`` and the llama-imatrix step, like the
CLI's "add --imatrix FILE" (issue 22, #7); and the demo's export is not suggested into the
app's cache folder (polish)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog, QLabel

from apex_gui.core.settings import cache_dir
from apex_gui.views.window.main_window import MainWindow

pytestmark = pytest.mark.gui


def export(window: MainWindow, target: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Trigger File > Export, answering the save dialog with ``target``; returns the path the
    dialog suggested."""
    suggested: list[str] = []

    def answer(_parent, _title, start, _filter):  # type: ignore[no-untyped-def]
        suggested.append(start)
        return str(target), ""

    # The native save dialog cannot be driven offscreen: answer it with a path.
    monkeypatch.setattr(QFileDialog, "getSaveFileName", answer)
    window.export_action.trigger()
    return suggested


def test_an_i_variant_exports_with_its_importance_matrix(
        demo_window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo_window.switch_profile("i-compact")
    plan = demo_window.current_plan
    assert plan is not None and plan.profile.key == "i-compact" and not plan.needs_imatrix()
    export(demo_window, tmp_path / "plan.txt", monkeypatch)
    dialog = demo_window.exported_dialog
    lines = dialog.command_edit.toPlainText().splitlines()
    quantize = next(line for line in lines if line.startswith("llama-quantize"))
    assert "--imatrix" in quantize and "-APEX-I-Compact.gguf" in quantize
    assert any(line.startswith("llama-imatrix") for line in lines)
    note = dialog.findChild(QLabel, "imatrixNote")
    assert note is not None and "I-Compact is made with an importance matrix" in note.text()
    dialog.close()

    demo_window.switch_profile("compact")  # the same types without one: no --imatrix
    export(demo_window, tmp_path / "plan-compact.txt", monkeypatch)
    assert "imatrix" not in demo_window.exported_dialog.command_edit.toPlainText()
    demo_window.exported_dialog.close()


def test_the_demos_export_is_not_suggested_into_the_cache(
        demo_window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert demo_window.current_model.path.is_relative_to(cache_dir())
    suggested = export(demo_window, tmp_path / "plan.txt", monkeypatch)
    assert suggested and not Path(suggested[0]).is_relative_to(cache_dir()), suggested
    assert Path(suggested[0]).name.endswith(".tensor-types.txt")
    demo_window.exported_dialog.close()
