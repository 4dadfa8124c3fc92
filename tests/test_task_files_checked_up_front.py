"""Task files are checked before any run, in the words of what is wrong with them (issue 22,
#6: a README given as the HellaSwag file was accepted, and the step then "exited with code 0
without saying why ... check that the model opens")."""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import pytest
from window_fixtures import demo_with_panels  # noqa: F401 - a fixture

from apex_gui.cli import main as cli_main
from apex_gui.core.files.inputs import InputFileError
from apex_gui.core.files.task_files import check_task_file

REPO = Path(__file__).resolve().parents[1]
README = "APEX Studio\n\nA desktop app for people who quantize MoE models.\nSee the docs.\n"


def _writers():  # type: ignore[no-untyped-def]
    """The task-file writers whose files the real llama-perplexity read (tests/logs)."""
    spec = importlib.util.spec_from_file_location("record_eval",
                                                  REPO / "tests" / "logs" / "record_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture
def task_files(tmp_path: Path) -> dict[str, Path]:
    writers, rng = _writers(), random.Random(3)
    files = {"hellaswag": tmp_path / "hellaswag.txt", "winogrande": tmp_path / "wino.csv",
             "multiple-choice": tmp_path / "mc.bin", "readme": tmp_path / "README.txt"}
    writers.write_hellaswag(files["hellaswag"], 12, rng)
    writers.write_winogrande(files["winogrande"], 10, rng)
    writers.write_multiple_choice(files["multiple-choice"], 20, rng)
    files["readme"].write_text(README)
    return files


def test_each_format_is_read_as_llama_perplexity_reads_it(task_files: dict[str, Path],
                                                          tmp_path: Path) -> None:
    assert check_task_file("hellaswag", task_files["hellaswag"]) == 12
    assert check_task_file("winogrande", task_files["winogrande"]) == 10  # the header skipped
    assert check_task_file("multiple-choice", task_files["multiple-choice"]) == 20
    readme = task_files["readme"]
    for kind, words in (("hellaswag", "4 lines, not a multiple of 6"),
                        ("winogrande", "none of its 3 line(s) is a task"),
                        ("multiple-choice", "do not start llama.cpp's binary")):
        with pytest.raises(InputFileError, match=re.escape(words)) as refused:
            check_task_file(kind, readme)
        assert "README.txt" in str(refused.value) and "\n" not in str(refused.value)
    shifted = tmp_path / "shifted.txt"
    lines = task_files["hellaswag"].read_text().splitlines()
    shifted.write_text("\n".join(["a title line", *lines[:5]]) + "\n")
    with pytest.raises(InputFileError, match=r"line 2 should be the right ending's number"):
        check_task_file("hellaswag", shifted)
    # A HellaSwag file is not a multiple-choice binary, nor the other way round.
    with pytest.raises(InputFileError, match="not a multiple-choice task file"):
        check_task_file("multiple-choice", task_files["hellaswag"])
    with pytest.raises(InputFileError, match="not a HellaSwag task file"):
        check_task_file("hellaswag", task_files["multiple-choice"])


@pytest.mark.gui
def test_the_run_tab_refuses_a_readme_as_hellaswag_before_anything_runs(
        qtbot, demo_with_panels, task_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    window, panels = demo_with_panels
    run = panels.run
    run.set_checked_profiles(["quality"])
    run.hellaswag_file.edit.setText(str(task_files["readme"]))
    with qtbot.waitSignal(run.startRefused, timeout=5000) as refused:
        run.start_button.click()
    message = refused.args[0]
    assert "README.txt is not a HellaSwag task file" in message
    assert "not a multiple of 6" in message and "hellaswag_val_full.txt" in message
    assert not run.has_running_jobs() and run.table.rowCount() == 0
    # The right file is taken.
    run.hellaswag_file.edit.setText(str(task_files["hellaswag"]))
    assert run.request().hellaswag == task_files["hellaswag"]


def test_eval_refuses_a_wrong_task_file_in_one_line(task_files: dict[str, Path],
                                                    tiny_qwen2moe: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--hellaswag", "--winogrande", "--mc"):
        code = cli_main(["eval", str(tiny_qwen2moe), flag, str(task_files["readme"])])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "README.txt is not a" in err, err
        assert flag in err
