"""After "Export tensor-type file": the llama-quantize command to run, copyable, with the
importance matrix it needs (and the llama-imatrix command that makes one) when the plan
uses types that require it."""

from __future__ import annotations

import shlex
from pathlib import Path

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QPushButton,
                               QVBoxLayout, QWidget)

from apex_gui.core.jobs.assembly import uses_imatrix
from apex_gui.core.jobs.quantize import quantize_argv
from apex_gui.core.plan.precision import PrecisionPlan
from apex_gui.core.plan.profiles import quant_file_name


def export_commands(plan: PrecisionPlan, tensor_type_file: Path) -> tuple[str, str | None]:
    """(llama-quantize command, llama-imatrix command or None) for an exported plan.

    A plan that needs an importance matrix (IQ types) or whose profile is an I-variant
    (I-Compact is Compact's plan made with one), but has none, gets a placeholder path next to
    the model and the command that writes it: a command that would fail, or make another
    quant than the one named, is never shown alone.
    """
    model_path = plan.model.path
    output = model_path.with_name(quant_file_name(model_path, plan.output_label()))
    imatrix = plan.imatrix
    imatrix_command: str | None = None
    if imatrix is None and uses_imatrix(plan):
        imatrix = model_path.with_name(f"{model_path.name.removesuffix('.gguf')}.imatrix.gguf")
        imatrix_command = shlex.join(["llama-imatrix", "-m", str(model_path), "-f", "CALIBRATION.txt",
                                      "-o", str(imatrix)])
    quantize = shlex.join(quantize_argv(plan, "llama-quantize", model_path, output, tensor_type_file,
                                             imatrix=imatrix))
    return quantize, imatrix_command


class ExportedDialog(QDialog):
    """Shows where the file went and the command(s) to run, with a Copy button."""

    def __init__(self, plan: PrecisionPlan, tensor_type_file: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("exportedDialog")
        self.setWindowTitle("Tensor-type file written")
        quantize, imatrix = export_commands(plan, tensor_type_file)
        self.commands = "\n".join(c for c in (imatrix, quantize) if c)
        layout = QVBoxLayout(self)
        heading = QLabel(f"Wrote <b>{tensor_type_file}</b>. Quantize with:")
        heading.setWordWrap(True)
        layout.addWidget(heading)
        if imatrix:
            why = ("Some tensors use types that need an importance matrix" if plan.needs_imatrix()
                   else f"{plan.file_label} is made with an importance matrix")
            note = QLabel(f"{why}: make it first with llama-imatrix (replace CALIBRATION.txt "
                          "with your text), or use the Run panel, which does both.")
            note.setObjectName("imatrixNote")
            note.setWordWrap(True)
            layout.addWidget(note)
        self.command_edit = QPlainTextEdit(self.commands)
        self.command_edit.setReadOnly(True)
        self.command_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.command_edit.setMinimumWidth(560)
        self.command_edit.setMaximumHeight(130)
        layout.addWidget(self.command_edit)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("&Copy command")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.commands)
        self.copy_button.setText("Copied")
