"""Try a quant: llama-completion's answer and speed in a dialog (real tool, tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_prompts import close_window
from pytestqt.qtbot import QtBot

from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.try_quant import CompletionJob, parse_completion_speed
from apex_gui.core.settings import load_settings
from apex_gui.views.window.main_window import MainWindow

LOG = Path(__file__).parent / "logs" / "llama-completion-demo.stderr.txt"


def test_speed_parsed_from_a_recorded_llama_completion_log() -> None:
    speed = parse_completion_speed(LOG.read_text(errors="replace").splitlines())
    assert speed.prompt_tokens_per_s == pytest.approx(44.13)
    assert speed.generated_tokens == 15 and speed.tokens_per_s == pytest.approx(2.19)
    assert parse_completion_speed(["nothing here"]).tokens_per_s is None


def test_argv_is_plain_completion(llama_tools) -> None:  # type: ignore[no-untyped-def]
    argv = CompletionJob(Path("m.gguf"), "Hi", 5, options=RunOptions(threads=2)).argv(llama_tools)
    assert Path(argv[0]).name == "llama-completion"
    assert argv[argv.index("-p") + 1] == "Hi" and argv[argv.index("-n") + 1] == "5"
    assert "-no-cnv" in argv and "--no-display-prompt" in argv and argv[-2:] == ["-t", "2"]
    assert "--temp" not in argv  # llama.cpp's own sampling unless asked
    greedy = CompletionJob(Path("m.gguf"), "Hi", 5, temperature=0).argv(llama_tools)
    assert greedy[greedy.index("--temp") + 1] == "0"


@pytest.mark.gui
def test_try_dialog_runs_llama_completion_on_the_open_model(qtbot: QtBot, tiny_qwen2moe: Path,
                                                           llama_tools) -> None:  # type: ignore[no-untyped-def]
    main = MainWindow(load_settings(), probe_hardware=False)
    main.show()
    try:
        with qtbot.waitSignal(main.modelLoadFinished, timeout=10_000):
            main.open_model_file(tiny_qwen2moe)
        main.try_action.trigger()
        dialog = main.try_dialog
        dialog.tools = llama_tools
        dialog.tokens.setValue(4)
        with qtbot.waitSignal(dialog.finishedRun, timeout=120_000) as finished:
            dialog.run_button.click()
        assert finished.args == [0], dialog.status.text()
        # The speed, or (when llama.cpp's async logger dropped its last lines) the wall time.
        assert "tokens/s" in dialog.status.text() or "Done in" in dialog.status.text()
        assert dialog.output.toPlainText().startswith(dialog.prompt_edit.text())
        assert len(dialog.output.toPlainText()) > len(dialog.prompt_edit.text())
        dialog.close()
    finally:
        close_window(main)


def test_try_dialog_runs_a_crashed_completion_again_without_repacking(qtbot: QtBot,
                                                                      tiny_qwen2moe: Path,
                                                                      tmp_path: Path) -> None:
    from fakes import crashing_completion

    from apex_gui.core.jobs.tools import LlamaTools
    from apex_gui.views.run.try_quant import TryQuantDialog

    folder = tmp_path / "bin"
    crashing_completion(folder)
    dialog = TryQuantDialog(tiny_qwen2moe, LlamaTools(folder))
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.finishedRun, timeout=30_000) as finished:
        dialog.run_button.click()
    assert finished.args == [0], dialog.status.text()
    assert dialog.output.toPlainText().endswith("recursion and caching.")
    assert "100.0 tokens/s" in dialog.status.text()
    assert "crashed; ran it again without repacking" in dialog.status.text()


@pytest.mark.parametrize(("speaks_on", "shown"), [(3, True), (4, False)])
def test_text_lost_at_exit_is_asked_for_up_to_three_runs(qtbot: QtBot, tiny_qwen2moe: Path,
                                                        tmp_path: Path, speaks_on: int,
                                                        shown: bool) -> None:
    from fakes import silent_completion

    from apex_gui.core.jobs.tools import LlamaTools
    from apex_gui.views.run.try_quant import RUNS_WHEN_TEXT_LOST, TryQuantDialog

    folder = tmp_path / "bin"
    silent_completion(folder, speaks_on)
    dialog = TryQuantDialog(tiny_qwen2moe, LlamaTools(folder))
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.finishedRun, timeout=30_000) as finished:
        dialog.run_button.click()
    assert finished.args == [0]
    assert dialog.output.toPlainText().endswith("recursion and caching.") is shown
    assert int((folder / "llama-completion.runs").read_text()) == min(speaks_on,
                                                                      RUNS_WHEN_TEXT_LOST)


def test_characters_split_across_writes_are_whole_and_spm_marks_are_spaces() -> None:
    from apex_gui.core.jobs.try_quant import CompletionText, writes_spaces_as_spm_marks

    # What llama-completion wrote for the bundled demo, one byte-fallback token per write.
    written = "def\u2581main(args):\n\u2581\u2581\u2581\u2581return\u2581\u00e9t\u00e9".encode()
    plain = CompletionText()
    assert "".join(plain.feed(written[i:i + 1]) for i in range(len(written))) + plain.finish() \
        == written.decode()  # no U+FFFD from a character cut between two reads
    spm = CompletionText(spm_spaces=True)
    assert "".join(spm.feed(written[i:i + 1]) for i in range(len(written))) + spm.finish() \
        == "def main(args):\n    return \u00e9t\u00e9"
    cut = CompletionText()
    # The token limit cut the last character: it is left out, not shown as U+FFFD...
    assert cut.feed(b"ok \xe2\x96") == "ok " and cut.finish() == ""
    # ...while a byte no character starts with, written mid-text, still shows as one.
    assert CompletionText().feed(b"a\xffb") == "a\ufffdb"
    assert writes_spaces_as_spm_marks("llama", ["<unk>", "<s>", "</s>", "<0x20>"])
    assert not writes_spaces_as_spm_marks("llama", ["<unk>", "\u2581the", "\u2581"])
    assert not writes_spaces_as_spm_marks("gpt2", ["a", "b"])


def test_the_trained_demo_writes_readable_text(qtbot: QtBot, llama_tools) -> None:  # type: ignore[no-untyped-def]
    """The bundled demo's vocabulary is bytes only: its spaces and any accented letter arrive
    a byte at a time, and the dialog still shows plain text."""
    from apex_gui.views.run.try_quant import TryQuantDialog

    demo = Path(__file__).resolve().parents[1] / "resources" / "demo" / \
        "apex-demo-trained-qwen2moe-f16.gguf"
    dialog = TryQuantDialog(demo, llama_tools, threads=2)
    qtbot.addWidget(dialog)
    dialog.prompt_edit.setText("The three most important ideas in computer science are")
    # Greedy: a sampled byte may be one no character starts with (a U+FFFD of the model's own).
    job = CompletionJob(demo, dialog.prompt_edit.text(), 40, options=RunOptions(threads=2), temperature=0)
    with qtbot.waitSignal(dialog.finishedRun, timeout=120_000) as finished:
        dialog.generate(job)
    assert finished.args == [0], dialog.status.text()
    shown = dialog.output.toPlainText()
    assert "\ufffd" not in shown and "\u2581" not in shown, shown
    assert " " in shown.removeprefix(dialog.prompt_edit.text())  # the model writes spaces
