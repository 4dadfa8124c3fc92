"""Try this quant: a short prompt through llama-completion, its answer and speed shown.

One short interactive process owned by the dialog (not a queued pipeline step): it ends
when the answer is complete, on Stop, or when the dialog closes (terminate, then kill).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QElapsedTimer, QProcess, Signal
from PySide6.QtGui import QFontDatabase, QTextCursor
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QLineEdit,
                               QPlainTextEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.reader import GGUFError
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.tools import LlamaTools, ToolNotFoundError
from apex_gui.core.jobs.try_quant import (DEFAULT_PROMPT, CompletionJob, CompletionText,
                                          parse_completion_speed, writes_spaces_as_spm_marks)

KILL_AFTER_MS = 3000
#: llama.cpp's logger drops the last text at exit now and then (issue 22142): when a run shows
#: nothing, it is run again, up to this many runs in all.
RUNS_WHEN_TEXT_LOST = 3


class TryQuantDialog(QDialog):
    """Prompt -> llama-completion -> the text it writes, with tokens per second."""

    finishedRun = Signal(int)  # exit code

    def __init__(self, model: Path, tools: LlamaTools | None = None, threads: int = 0,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("tryQuantDialog")
        self.setWindowTitle(f"Try {model.name}")
        self.resize(640, 420)
        self.model = model
        self.tools = tools or LlamaTools()
        self.threads = threads
        self.process: QProcess | None = None
        self._job: CompletionJob | None = None
        self._retried = ""  # why the current run repeats the previous one
        self._runs = 0  # runs of the current job, retries included
        self._log: list[str] = []
        self._clock = QElapsedTimer()
        self._spm_spaces = _spm_spaces(model)
        self._text = CompletionText(self._spm_spaces)
        self._stderr_text = CompletionText()
        self.prompt_edit = QLineEdit(DEFAULT_PROMPT)
        self.prompt_edit.setObjectName("tryPrompt")
        self.tokens = QSpinBox()
        self.tokens.setRange(1, 2048)
        self.tokens.setValue(48)
        self.tokens.setSuffix(" tokens")
        self.run_button = QPushButton("Generate")
        self.run_button.setDefault(True)
        row = QHBoxLayout()
        row.addWidget(self.prompt_edit, 1)
        row.addWidget(self.tokens)
        row.addWidget(self.run_button)
        self.output = QPlainTextEdit()
        self.output.setObjectName("tryOutput")
        self.output.setReadOnly(True)
        self.output.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.status = QLabel(f"{model}: press Generate to run llama-completion on it.")
        self.status.setObjectName("tryStatus")
        self.status.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.output, 1)
        layout.addWidget(self.status)
        layout.addWidget(buttons)
        self.run_button.clicked.connect(self.toggle)
        self.prompt_edit.returnPressed.connect(self.toggle)

    def toggle(self) -> None:
        if self.process is not None:
            self.stop()
        else:
            self.generate()

    def generate(self, job: CompletionJob | None = None, retried: str = "") -> None:
        job = job or CompletionJob(self.model, self.prompt_edit.text().strip() or DEFAULT_PROMPT,
                                   self.tokens.value(),
                                   options=RunOptions(threads=self.threads))
        self._job, self._retried = job, retried
        self._runs = self._runs + 1 if retried else 1
        try:
            argv = job.argv(self.tools)
        except ToolNotFoundError as error:
            self.status.setText(str(error))
            return
        self.output.setPlainText(job.prompt)
        self._text = CompletionText(self._spm_spaces)
        self._stderr_text = CompletionText()
        self._log = []
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        process.readyReadStandardOutput.connect(self._stdout)
        process.readyReadStandardError.connect(self._stderr)
        process.finished.connect(self._finished)
        process.errorOccurred.connect(self._error)
        self.process = process
        self.run_button.setText("Stop")
        self.status.setText(f"Running llama-completion on {self.model.name}...")
        self._clock.start()
        process.start(argv[0], argv[1:])

    def _stdout(self) -> None:
        if self.process is not None:
            text = self._text.feed(bytes(self.process.readAllStandardOutput().data()))
            cursor = self.output.textCursor()
            cursor.movePosition(QTextCursor.MoveOperation.End)
            cursor.insertText(text)

    def _stderr(self) -> None:
        if self.process is not None:
            text = self._stderr_text.feed(bytes(self.process.readAllStandardError().data()))
            self._log.extend(text.splitlines())

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.status.setText(f"llama-completion did not start: {self.process.errorString() if self.process else error}")
            self._done(-1)

    def _finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._stdout()
        self._stderr()
        rest = self._text.finish()
        if rest:
            cursor = self.output.textCursor()
            cursor.movePosition(QTextCursor.MoveOperation.End)
            cursor.insertText(rest)
        retry = self._retry_after(code, status)
        if retry is not None:
            job, why = retry
            if self.process is not None:
                self.process.deleteLater()
            self.process = None
            self.generate(job, why)
            return
        speed = parse_completion_speed(self._log)
        note = f" ({self._retried})" if self._retried else ""
        if code == 0 and speed.tokens_per_s is not None:
            self.status.setText(f"{speed.generated_tokens} tokens at {speed.tokens_per_s:.1f} tokens/s "
                                f"(prompt {speed.prompt_tokens_per_s or 0:.1f} tokens/s) on this "
                                f"machine.{note}")
        elif code == 0:
            # llama.cpp's asynchronous logger can drop its last lines at exit (issue 22142).
            seconds = self._clock.elapsed() / 1000
            self.status.setText(f"Done in {seconds:.1f} s (llama-completion's timing lines were "
                                "lost at exit, a known llama.cpp logger issue: run again for "
                                f"tokens/s).{note}")
        else:
            tail = next((line for line in reversed(self._log) if line.strip()), "")
            self.status.setText(f"llama-completion ended with exit code {code}: {tail}")
        self._done(code)

    def _retry_after(self, code: int, status: QProcess.ExitStatus
                     ) -> tuple[CompletionJob, str] | None:
        """Run once more when the tool crashed (without repacking, as the job engine does) or
        when its text was lost at exit (llama.cpp's logger, issue 22142)."""
        job = self._job
        if job is None:
            return None
        if status == QProcess.ExitStatus.CrashExit and not job.run_options(self.tools).no_repack:
            return (replace(job, options=replace(job.options, no_repack=True)),
                    "llama-completion crashed; ran it again without repacking the weights "
                    "(--no-repack)")
        if (code == 0 and self.output.toPlainText() == job.prompt
                and self._runs < RUNS_WHEN_TEXT_LOST):
            return job, "llama-completion's text was lost at exit; ran it again"
        return None

    def _done(self, code: int) -> None:
        if self.process is not None:
            self.process.deleteLater()
        self.process = None
        self.run_button.setText("Generate")
        self.finishedRun.emit(code)

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        process.terminate()
        if not process.waitForFinished(KILL_AFTER_MS):
            process.kill()
            process.waitForFinished(KILL_AFTER_MS)

    def done(self, result: int) -> None:  # close, Esc: never leave the tool running
        self.stop()
        super().done(result)


def _spm_spaces(model: Path) -> bool:
    """Whether this model's spaces come out as ``▁`` marks (see writes_spaces_as_spm_marks)."""
    try:
        metadata = open_model(model).metadata
    except (GGUFError, OSError):
        return False  # llama-completion will say what is wrong with the file
    return writes_spaces_as_spm_marks(metadata.get("tokenizer.ggml.model"),
                                      metadata.get("tokenizer.ggml.tokens"))
