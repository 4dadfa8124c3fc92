"""The Run tab's queue keeps earlier runs after another model is opened, each under a heading
that names its model (issue 22, #10: the old rows stayed with no separator and no model
name). The tools are hidden, so each step ends at once, as it does on a machine without them."""

from __future__ import annotations

from pathlib import Path

import pytest
from window_fixtures import demo_with_panels  # noqa: F401 - a fixture

pytestmark = pytest.mark.gui


def headings(run) -> list[str]:  # type: ignore[no-untyped-def]
    return [run.table.item(row, 0).text() for row in run.run_headings]


def test_each_run_is_headed_by_its_model(qtbot, tools_hidden, demo_with_panels,  # type: ignore[no-untyped-def]
                                         tiny_qwen2moe: Path, tmp_path: Path) -> None:
    window, panels = demo_with_panels
    run = panels.run
    demo = window.current_model.path.name
    run.set_checked_profiles(["compact"])
    run.kl_box.setChecked(False)
    run.output_dir.edit.setText(str(tmp_path / "first"))
    with qtbot.waitSignal(run.runFinished, timeout=30_000):
        assert run.start()
    with qtbot.waitSignal(window.modelLoadFinished, timeout=20_000):
        window.open_model_file(tiny_qwen2moe)
    run.set_checked_profiles(["compact"])
    run.output_dir.edit.setText(str(tmp_path / "second"))
    with qtbot.waitSignal(run.runFinished, timeout=30_000):
        assert run.start()

    titles = headings(run)
    assert len(titles) == 2
    assert titles[0].startswith(demo) and titles[1].startswith(tiny_qwen2moe.name)
    first, second = run.run_headings
    # The headings span the table, sit above their own steps and are not steps themselves.
    assert run.table.columnSpan(first, 0) == run.table.columnCount()
    assert first == 0 and second > first + 1
    run.table.selectRow(second)
    assert run._selected_job() is None and not run.cancel_button.isEnabled()
    steps = [run.table.item(r, 0).text() for r in range(run.table.rowCount())
             if r not in run.run_headings]
    assert steps and all(":" in key or key in ("imatrix", "reference") for key in steps)
