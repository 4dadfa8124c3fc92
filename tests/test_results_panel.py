"""Results panel: table and plots from the run store, size-only baselines, CSV / Markdown
export round trips, and the model card / publish dialog (offline)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from apex_gui.core.jobs.baselines import Baseline
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.report.results import collect_results, results_from_csv, results_to_csv
from apex_gui.views.results.publish_dialog import PublishDialog
from apex_gui.views.results.results_panel import ResultsPanel

pytestmark = pytest.mark.gui

SCREENSHOTS = Path(os.environ.get("APEX_SCREENSHOT_DIR", "/tmp/apex-screenshots"))
BASELINES = [Baseline("Q8_0", 3400, 8.5, {}), Baseline("Q4_K_M", 1900, 4.9, {})]


@pytest.fixture
def panel(qtbot, store: RunStore, tmp_path: Path) -> ResultsPanel:
    panel = ResultsPanel(store)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.rowsChanged, timeout=2000):
        panel.set_reference(tmp_path / "qwen-f16.gguf")
    panel.set_baselines(BASELINES)
    return panel


def test_table_shows_every_run_and_size_only_baselines(panel: ResultsPanel) -> None:
    model = panel.table_model
    labels = [model.cell_text(row, 0) for row in model.rows]
    assert labels == ["F16", "APEX Quality", "APEX I-Quality", "APEX Compact",
                      "Q8_0 (size only)", "Q4_K_M (size only)"]
    columns = model.columns()
    # Every file here is a few kB: sizes in kB, not "0.0000" GB.
    assert columns[:6] == ["Quantization", "Size (kB)", "PPL", "KL mean", "KL max", "KL 99.9%"]
    assert "HellaSwag" in columns and "pp512 (t/s)" in columns and "tg128 (t/s)" in columns
    quality = model.rows[1]
    assert model.cell_text(quality, 2) == "6.5270 ± 0.0410"
    assert model.cell_text(quality, 3) == "0.01140 ± 0.00020"
    assert model.cell_text(quality, columns.index("HellaSwag")) == "83.00% ± 1.90%"
    assert model.cell_text(quality, columns.index("tg128 (t/s)")) == "81.30 ± 0.50"
    assert model.cell_text(model.rows[4], 2) == ""  # a baseline has no measured PPL


def test_plots_place_measured_points_and_baselines_as_size_lines(panel: ResultsPanel) -> None:
    ppl = {label: (x, y) for label, x, y in panel.ppl_plot.points}
    assert ppl["APEX Quality"] == pytest.approx((2130 / 1e3, 6.527))
    assert ppl["F16"] == pytest.approx((6000 / 1e3, 6.537))
    assert panel.ppl_plot.getAxis("bottom").labelText == "size (kB)"
    assert [label for label, _ in panel.ppl_plot.size_only] == ["Q8_0", "Q4_K_M"]
    assert "F16" not in {label for label, _, _ in panel.kld_plot.points}  # KL of F16 is 0
    assert {label for label, _, _ in panel.kld_plot.points} == {
        "APEX Quality", "APEX I-Quality", "APEX Compact"}
    assert {label for label, _, _ in panel.speed_plot.points} == {
        "APEX Quality", "APEX I-Quality", "APEX Compact"}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    panel.resize(1100, 760)
    panel.grab().save(str(SCREENSHOTS / "results_panel.png"))
    panel.plots.setCurrentIndex(1)
    panel.grab().save(str(SCREENSHOTS / "results_panel_kl.png"))


def test_csv_export_round_trips_and_markdown_matches(panel: ResultsPanel, tmp_path: Path) -> None:
    csv_path = panel.export_csv(tmp_path / "results.csv")
    back = results_from_csv(csv_path.read_text(encoding="utf-8"))
    assert back == [row.__class__(**{**row.__dict__, "run_ids": ()}) for row in panel.rows]
    assert results_to_csv(back) == csv_path.read_text(encoding="utf-8")

    markdown = panel.export_markdown(tmp_path / "results.md").read_text(encoding="utf-8")
    lines = markdown.splitlines()
    assert lines[0].startswith("| Quantization | Size (kB) | PPL | KL mean |")
    assert "| APEX Quality | 2.13 | 6.527 ± 0.041 | 0.01140 ± 0.00020 | 5.85 | 0.412 | 83.0%" \
        in markdown
    assert "| Q4_K_M (size only) |" in markdown
    assert len(lines) == 2 + len(panel.rows)


def test_results_from_csv_rejects_other_csv() -> None:
    with pytest.raises(ValueError, match="not an APEX Studio results CSV"):
        results_from_csv("a,b\n1,2\n")


def test_empty_store_says_what_to_do(qtbot, tmp_path: Path) -> None:
    panel = ResultsPanel(RunStore(tmp_path / "empty.sqlite"))
    qtbot.addWidget(panel)
    panel.refresh()
    assert "No results yet" in panel.summary.text()
    assert not panel.csv_button.isEnabled() and not panel.card_button.isEnabled()


def test_publish_dialog_offline_card_and_upload_list(qtbot, panel: ResultsPanel,
                                                     store: RunStore, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    rows = collect_results(store, reference=tmp_path / "qwen-f16.gguf", baselines=BASELINES)
    dialog = PublishDialog(rows, store=store, parent=None)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.connectivityChecked, timeout=5000) as checked:
        dialog.show()
    assert checked.args[0] is False and "offline" in dialog.status.text()
    assert not dialog.upload_button.isEnabled()
    assert dialog.model_name_edit.text() == "qwen"
    assert dialog.repo_edit.text() == "USER/qwen-APEX-GGUF"
    assert dialog.plan.paths_in_repo() == ["qwen-APEX-Quality.gguf", "qwen-APEX-I-Quality.gguf",
                                           "qwen-APEX-Compact.gguf", "README.md"]
    # Untick Compact: it leaves the upload, the files table and the benchmark table.
    dialog.file_list.item(2).setCheckState(dialog.file_list.item(2).checkState().Unchecked)
    assert "qwen-APEX-Compact.gguf" not in dialog.plan.paths_in_repo()
    assert "APEX Compact" not in dialog.card_text
    assert "| APEX Quality |" in dialog.card_text
    assert "Q4_K_M 1.90 kB" in dialog.card_text  # size-only baseline, for scale
    written = dialog.save_to_folder(tmp_path / "card")
    assert (tmp_path / "card" / "README.md").read_text(encoding="utf-8") == dialog.card_text
    assert written[0].name == "README.md"
    dialog.resize(1100, 720)
    dialog.grab().save(str(SCREENSHOTS / "publish_dialog.png"))
    dialog.reject()


def test_a_quant_whose_evaluation_failed_says_so(qtbot) -> None:
    from PySide6.QtWidgets import QTableView

    from apex_gui.core.report.results import QuantResult
    from apex_gui.views.results.results_panel import NO_RESULT, ResultsTableModel

    made = QuantResult("APEX Mini", "apex", path="/models/x-APEX-Mini.gguf", profile="mini",
                       size_bytes=1000)
    model = ResultsTableModel()
    model.set_rows([made])
    view = QTableView()
    qtbot.addWidget(view)
    view.setModel(model)
    ppl = model.index(0, 2)
    assert view.model().data(ppl) == NO_RESULT  # blank cells before: read as "not yet"
    assert "failed or was not run" in view.model().data(ppl, 3)  # ToolTipRole
    assert model.cell_text(made, 3) == NO_RESULT


def test_sizes_are_in_gb_once_a_file_reaches_a_gigabyte(panel: ResultsPanel) -> None:
    from dataclasses import replace

    big = [replace(row, size_bytes=row.size_bytes * 10_000_000) for row in panel.rows
           if row.size_bytes is not None]
    model = panel.table_model
    model.set_rows(big)
    assert model.columns()[1] == "Size (GB)"
    quality = next(row for row in big if row.label == "APEX Quality")
    assert model.cell_text(quality, 1) == "21.3"  # 21.3 GB, as the cards quote it
    panel.ppl_plot.show_rows(big, lambda row: (row.ppl.value, None) if row.ppl else None)
    assert panel.ppl_plot.getAxis("bottom").labelText == "size (GB)"
    points = {label: x for label, x, _ in panel.ppl_plot.points}
    assert points["APEX Quality"] == pytest.approx(21.3)
