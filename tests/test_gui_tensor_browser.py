"""The flat tensor table (search, sort, the plan's type) and the metadata browser."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.browse import matches, metadata_group, metadata_rows
from apex_gui.core.gguf.model import open_model
from apex_gui.views.window.main_window import MainWindow

pytestmark = pytest.mark.gui


def test_tensor_table_lists_every_tensor_searches_and_sorts(demo_window: MainWindow) -> None:
    model = demo_window.current_model
    assert model is not None
    table = demo_window.tensor_table
    demo_window.center_tabs.setCurrentWidget(table)
    assert len(table.shown_rows()) == len(model.tensors)
    assert f"{len(model.tensors):,} of {len(model.tensors):,} tensors" in table.summary.text()
    QTest.keyClicks(table.search, "blk.3. exps")
    shown = table.shown_rows()
    assert shown and all(r.name.startswith("blk.3.") and "exps" in r.name for r in shown)
    assert len(shown) == sum(1 for t in model.tensors if t.name.startswith("blk.3.") and "exps" in t.name)
    table.search.clear()
    table.view.horizontalHeader().setSortIndicator(6, Qt.SortOrder.DescendingOrder)  # a header click
    rows = table.shown_rows()
    assert [r.nbytes for r in rows] == sorted((t.nbytes for t in model.tensors), reverse=True)


def test_the_plan_column_follows_edits(demo_window: MainWindow, qtbot: QtBot) -> None:
    plan = demo_window.current_plan
    assert plan is not None
    plan.set_cells([(4, "ffn_gate_exps")], "Q2_K", "edit")
    table = demo_window.tensor_table

    def planned() -> str:
        return next(r.planned for r in table.model.rows if r.name == "blk.4.ffn_gate_exps.weight")

    qtbot.waitUntil(lambda: planned() == "Q2_K", timeout=2000)


def test_metadata_browser_shows_every_key_and_the_whole_value(demo_window: MainWindow) -> None:
    model = demo_window.current_model
    assert model is not None
    browser = demo_window.metadata_browser
    demo_window.center_tabs.setCurrentWidget(browser)
    assert browser.shown_keys() == list(model.metadata)
    QTest.keyClicks(browser.search, "rope")
    assert browser.shown_keys() and all("rope" in k for k in browser.shown_keys())
    browser.search.clear()
    assert browser.select_key("tokenizer.ggml.tokens")
    tokens = model.metadata["tokenizer.ggml.tokens"]
    assert browser.value_view.toPlainText().splitlines()[:3] == [str(t) for t in tokens[:3]]
    assert len(browser.value_view.toPlainText().splitlines()) == len(tokens)


def test_browse_rows_group_keys_and_preview_long_values(tmp_path: Path) -> None:
    model = open_model(write_shape_twin(tmp_path / "q.gguf", "qwen3.5-35b-a3b")[0])
    rows = {r.key: r for r in metadata_rows(model)}
    assert rows["general.architecture"].group == "general"
    arch = model.architecture
    rope = [k for k in rows if ".rope." in k]
    assert rope and all(rows[k].group == "RoPE" for k in rope)
    assert rows[f"{arch}.block_count"].group == "architecture"
    assert metadata_group("tokenizer.chat_template", arch) == "chat template"
    assert matches("Q4_K exps", "blk.1.ffn_up_exps.weight", "q4_k")
    assert not matches("q8", "blk.1.ffn_up_exps.weight", "q4_k")
