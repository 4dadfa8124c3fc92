"""Issue 6 acceptance: what a user saw go wrong when driving the real window.

Each test drives the real main window (or panel) the way a person does and checks the
outcome on screen: the profile picker after a tier is applied from Hardware & tiers, the
diff picker naming the GGUF compared with, settings the panels keep for the next session,
errors from exports and refused runs shown as messages, the busy indicator saying what runs,
plot labels after a theme switch, and a plan dock that cannot be squeezed until it clips.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pyqtgraph as pg
import pytest
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QFileDialog
from pytestqt.qtbot import QtBot

from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from apex_gui.core.settings import load_settings
from apex_gui.core.units import format_size
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views import style
from apex_gui.views.window.main_window import MainWindow
from apex_gui.views.window.panels import InstalledPanels, install_panels
from apex_gui.views.plan.plan_panel import PlanPanel
from apex_gui.views.results.results_panel import ResultsPanel
from apex_gui.views.window.settings_dialog import format_tool_report

pytestmark = pytest.mark.gui

OPEN_TIMEOUT_MS = 10_000


@pytest.fixture
def empty_store(tmp_path: Path) -> Iterator[RunStore]:
    run_store = RunStore(tmp_path / "store" / "runs.sqlite")
    yield run_store
    run_store.close()


@pytest.fixture
def studio(qtbot: QtBot, empty_store: RunStore, llama_tools: LlamaTools
           ) -> Iterator[tuple[MainWindow, InstalledPanels]]:
    """The window with its three panels, as ``apex-studio`` builds it."""
    window = MainWindow(load_settings(), probe_hardware=False)
    qtbot.addWidget(window)
    panels = install_panels(window, store=empty_store, queue=JobQueue(llama_tools, empty_store),
                            probe_hardware=False)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)
    yield window, panels
    window.close()


def open_file(qtbot: QtBot, window: MainWindow, path: Path) -> None:
    with qtbot.waitSignal(window.modelLoadFinished, timeout=OPEN_TIMEOUT_MS):
        window.open_model_file(path)


def test_applying_a_tier_shows_it_in_the_profile_picker(qtbot: QtBot, studio, tiny_qwen2moe: Path
                                                        ) -> None:
    window, panels = studio
    hardware = panels.hardware
    hardware.set_manual_devices("RTX 4090 24GB")
    with qtbot.waitSignal(hardware.recommendationChanged, timeout=20_000,
                          check_params_cb=lambda rec: rec is not None):
        open_file(qtbot, window, tiny_qwen2moe)
    assert window.plan_panel.profile_combo.currentData() == "quality"
    row = [hardware.table.item(r, 0).text().removeprefix("★ ")
           for r in range(hardware.table.rowCount())].index("I-Mini")
    hardware.table.selectRow(row)
    with qtbot.waitSignal(window.planChanged, timeout=5000):
        hardware.apply_button.click()
    plan = window.current_plan
    assert plan is not None and plan.profile is not None and plan.profile.key == "i-mini"
    # The picker beside the heatmap says which plan is shown (it used to stay on Quality).
    assert window.plan_panel.profile_combo.currentData() == "i-mini"
    assert window.plan_panel.profile_combo.currentText() == "I-Mini"

    hardware.copy_button.click()
    assert QApplication.clipboard().text() == hardware.command_edit.text() != ""
    assert window.statusBar().currentMessage() == "llama-server command copied"


def test_hardware_choices_are_kept_for_the_next_session(qtbot: QtBot, studio,
                                                        tiny_qwen2moe: Path) -> None:
    window, panels = studio
    hardware = panels.hardware
    open_file(qtbot, window, tiny_qwen2moe)
    hardware.choose_card("RTX 3090 24GB")
    hardware.context_spin.setValue(16384)
    hardware.kv_combo.setCurrentText("q8_0")
    saved = load_settings()
    assert (saved.manual_devices, saved.context_length, saved.kv_cache_type) == \
        ("RTX 3090 24GB", 16384, "q8_0")
    # One device list: the plan panel's weight-fit bars use the same devices.
    assert window.plan_panel.device_edit.text() == "RTX 3090 24GB"
    assert window.plan_panel.fit_bars()[0].text().startswith("GPU 0 RTX 3090 24GB")

    # A typo gets a one-line message in the panel; the accepted forms are in its tooltip.
    hardware.manual_edit.setText("2 x RTX 3090 xx")
    status = hardware.manual_status
    assert status.text().startswith('Unknown card "RTX 3090 xx"')
    assert "Common cards" in status.text() and len(status.text()) < 200
    assert "accepted forms" in status.toolTip()


def test_settings_dialog_changes_reach_the_panels(qtbot: QtBot, studio, tmp_path: Path) -> None:
    window, panels = studio
    dialog = window.show_settings()
    dialog.output_edit.setText(str(tmp_path / "quants"))
    dialog.context_spin.setValue(4096)
    dialog.kv_combo.setCurrentText("q4_0")
    missing = tmp_path / "no-such-llama"
    dialog.tools_edit.setText(str(missing))
    with qtbot.waitSignal(window.settingsChanged, timeout=5000):
        dialog.accept()
    assert panels.run.output_dir.edit.text() == str(tmp_path / "quants")
    assert panels.hardware.context_spin.value() == 4096
    assert panels.hardware.kv_combo.currentText() == "q4_0"
    # The next job looks its tools up in the folder just chosen.
    assert panels.queue.tools.configured_dir == missing
    assert load_settings().output_dir == str(tmp_path / "quants")


def test_tool_check_warns_when_the_chosen_folder_has_no_tools(tmp_path: Path,
                                                              llama_tools: LlamaTools) -> None:
    missing = tmp_path / "no-such-llama"
    report = format_tool_report(LlamaTools(str(missing)).report(), str(missing))
    first = report.splitlines()[0]
    assert first.startswith(f"WARNING: {missing} does not exist")
    assert "llama-quantize" in report  # and where the tools were found instead
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no llama.cpp tools" in format_tool_report(LlamaTools(str(empty)).report(),
                                                            str(empty))
    # A folder that has them, or none typed: no warning.
    assert "WARNING" not in format_tool_report(llama_tools.report(), None)


def test_diff_picker_names_the_gguf_compared_with(qtbot: QtBot, tmp_path: Path) -> None:
    window = MainWindow(load_settings(), probe_hardware=False)
    qtbot.addWidget(window)
    source = write_shape_twin(tmp_path / "qwen3-bf16.gguf", "qwen3-30b-a3b")[0]
    mini = plan_from_profile(open_model(source), get_profile("mini"))
    other = write_shape_twin(tmp_path / "qwen3-mini.gguf", "qwen3-30b-a3b",
                             tensor_types={n: mini.effective_type(n) for n in mini.types})[0]
    open_file(qtbot, window, source)
    window.compare_with_file(other)
    qtbot.waitUntil(lambda: window.reference_plan is not None, timeout=OPEN_TIMEOUT_MS)
    combo, summary = window.plan_panel.diff_combo, window.plan_panel.diff_label
    assert combo.currentText() == "file qwen3-mini.gguf"
    assert "differ from qwen3-mini.gguf" in summary.text()

    window.switch_profile("mini")  # now the plan is what the file holds
    assert combo.currentText() == "file qwen3-mini.gguf"  # the picker still names the file
    assert summary.text() == "identical to qwen3-mini.gguf"
    assert [combo.itemText(i) for i in range(combo.count())].count("file qwen3-mini.gguf") == 1
    window.close()


def test_small_models_read_in_megabytes_on_the_panel_and_status_bar(qtbot: QtBot,
                                                                    tiny_qwen2moe: Path) -> None:
    window = MainWindow(load_settings(), probe_hardware=False)
    qtbot.addWidget(window)
    open_file(qtbot, window, tiny_qwen2moe)
    plan = window.current_plan
    assert plan is not None
    total = plan.total_bytes()
    assert total < 10**9
    assert window.plan_panel.size_label.text() == format_size(total) and " MB" in format_size(total)
    before = total
    window.heatmap.select_row(1)
    assert window.heatmap.apply_to_selection("Q2_K")  # what Enter does with a selection
    after = plan.total_bytes()
    assert after < before
    message = window.statusBar().currentMessage()
    assert message.startswith("set ") and message.endswith(
        f"cells to Q2_K: now {format_size(after)} (Ctrl+Z undoes it)")
    change = window.plan_panel.change_label.text()
    assert change.startswith(f"{format_size(after - before, like=after)} ({after - before:,} bytes")
    assert format_size(235_220_257_824) == "235 GB"
    window.close()


def test_busy_indicator_says_what_runs(qtbot: QtBot) -> None:
    window = MainWindow(load_settings(), probe_hardware=False)
    qtbot.addWidget(window)
    window.show()
    release = threading.Event()
    task = window.workers.submit("size baselines", lambda _token: release.wait(10))
    qtbot.waitUntil(lambda: window.busy_label.isVisible(), timeout=2000)
    assert window.busy_label.text() == "size baselines"
    assert window.busy_bar.toolTip() == "Working: size baselines"
    with qtbot.waitSignal(task.done, timeout=5000):
        release.set()
    assert not window.busy_label.isVisible() and not window.busy_bar.isVisible()
    window.close()


def test_failed_export_is_a_message_and_a_refused_run_a_dialog(
        qtbot: QtBot, studio, tiny_qwen2moe: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    window, panels = studio
    open_file(qtbot, window, tiny_qwen2moe)
    results = panels.results
    qtbot.waitUntil(lambda: results.csv_button.isEnabled(), timeout=5000)
    unwritable = tmp_path / "missing-folder" / "results.csv"
    # The save dialog is the platform's; it answers with a path in a folder that is gone.
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kw: (str(unwritable), ""))
    with qtbot.waitSignal(window.errorShown, timeout=3000) as blocker:
        results.csv_button.click()
    title, message = blocker.args
    assert title == "Cannot export" and str(unwritable) in message and "Traceback" not in message
    assert "Choose a folder" in message and not unwritable.exists()

    written = tmp_path / "results.md"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kw: (str(written), ""))
    results.markdown_button.click()
    assert written.read_text(encoding="utf-8").startswith("| Quantization |")
    assert window.statusBar().currentMessage() == f"Wrote {written}"

    # A quantized file cannot be the source of a run: said before anything starts.
    source = write_shape_twin(tmp_path / "olmoe-bf16.gguf", "olmoe-1b-7b")[0]
    mini = plan_from_profile(open_model(source), get_profile("mini"))
    quant = write_shape_twin(tmp_path / "olmoe-Q4.gguf", "olmoe-1b-7b",
                             tensor_types={n: mini.effective_type(n) for n in mini.types})[0]
    open_file(qtbot, window, quant)
    assert window.current_model is not None
    assert window.current_model.file_type not in ("F16", "BF16", "F32", "unknown")
    with qtbot.waitSignal(window.errorShown, timeout=3000) as blocker:
        panels.run.start_button.click()
    assert "olmoe-Q4.gguf is already quantized" in blocker.args[1]
    assert not panels.run.has_running_jobs()


def test_a_run_that_cannot_fit_on_the_disk_is_refused(qtbot: QtBot, studio, tmp_path: Path
                                                      ) -> None:
    window, panels = studio
    twin = write_shape_twin(tmp_path / "Trinity-Large-BF16.gguf", "trinity-large-399b")[0]
    open_file(qtbot, window, twin)
    panels.run.set_checked_profiles(["quality"])
    panels.run.output_dir.edit.setText(str(tmp_path / "out"))
    with qtbot.waitSignal(window.errorShown, timeout=3000) as blocker:
        panels.run.start_button.click()
    message = blocker.args[1]
    assert "the quants need 235 GB" in message and str(tmp_path / "out") in message
    assert not panels.run.has_running_jobs() and not (tmp_path / "out").exists()


def test_plot_labels_follow_a_theme_switch(qtbot: QtBot, store: RunStore,
                                           tmp_path: Path) -> None:
    panel = ResultsPanel(store)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.rowsChanged, timeout=2000):
        panel.set_reference(tmp_path / "qwen-f16.gguf")
    panel.show()
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    original = str(app.property("apexTheme") or "system")
    dark_text = style.dark_palette().color(QPalette.ColorRole.Text)
    try:
        # The panel redraws its plots from inside the palette-change event.
        with qtbot.waitSignal(panel.rowsChanged, timeout=2000):
            style.apply_theme(app, "dark")
        labels = [item for item in panel.ppl_plot.items() if isinstance(item, pg.TextItem)]
        assert len(labels) == len(panel.ppl_plot.points) >= 4
        # Light text on the dark plot (the labels were drawn in the old, dark text colour).
        assert {label.color.name() for label in labels} == {dark_text.name()}
    finally:
        style.apply_theme(app, original)


def test_plan_panel_cannot_be_squeezed_until_it_clips(qtbot: QtBot) -> None:
    panel = PlanPanel()
    qtbot.addWidget(panel)
    panel.show()
    assert panel.minimumWidth() >= panel.palette_widget.minimumSizeHint().width()
    assert not panel.reset_button.isEnabled() and not panel.save_button.isEnabled()
    panel.resize(50, 600)
    assert panel.width() >= panel.minimumWidth()


def test_remote_file_list_groups_split_shards_with_summed_sizes() -> None:
    from apex_gui.core.hub.download import RemoteFile, group_gguf_files

    listing = [("README.md", 5_000), ("Model-Q4_K_M.gguf", 20_000_000_000),
               ("big/Model-F16-00002-of-00002.gguf", 40_000_000_000),
               ("big/Model-F16-00001-of-00002.gguf", 50_000_000_000),
               ("mmproj-F16.gguf", None)]
    assert group_gguf_files(listing) == [
        RemoteFile("big/Model-F16-00001-of-00002.gguf", 90_000_000_000,
                   ("big/Model-F16-00001-of-00002.gguf", "big/Model-F16-00002-of-00002.gguf")),
        RemoteFile("mmproj-F16.gguf", None),
        RemoteFile("Model-Q4_K_M.gguf", 20_000_000_000),
    ]


def test_run_panel_shows_progress_and_eta_while_quantizing(qtbot: QtBot, deep_model: Path,
                                                           llama_tools: LlamaTools,
                                                           empty_store: RunStore,
                                                           tmp_path: Path) -> None:
    from apex_gui.views.run.run_panel import RunPanel

    queue = JobQueue(llama_tools, empty_store)
    panel = RunPanel(queue, open_model(deep_model))
    qtbot.addWidget(panel)
    panel.set_checked_profiles(["quality"])
    panel.kl_box.setChecked(False)
    panel.output_dir.edit.setText(str(tmp_path / "out"))
    seen: list[tuple[int, str]] = []  # (progress bar value, ETA cell) after each update

    def look(_job_id: int, _progress: object, _eta: object) -> None:
        # The run's heading, then one step: Quality needs no imatrix, KL is off.
        assert panel.table.rowCount() == 2 and panel.run_headings == [0]
        bar = panel.table.cellWidget(1, 2)
        seen.append((bar.value(), panel.table.item(1, 3).text()))

    queue.jobProgress.connect(look)  # connected after the panel's own slot: sees its result
    try:
        with qtbot.waitSignal(panel.runFinished, timeout=120_000) as blocker:
            assert panel.start() is not None
        assert blocker.args == [0]
    finally:
        queue.shutdown(5000)
    values = [value for value, _ in seen]
    assert values and 0 < max(values) <= 1000 and values == sorted(values)
    etas = [eta for _, eta in seen if eta]
    assert etas, "an ETA is shown while the quantize runs"
    assert all(eta.endswith(" s") or " min " in eta for eta in etas)
    row = panel.table.item(1, 4)
    assert row.text().startswith("quantized to ") and row.toolTip() == row.text()


def test_card_run_command_note_names_the_machine_once(store: RunStore, tmp_path: Path,
                                                      tiny_qwen2moe: Path) -> None:
    from dataclasses import replace

    from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry
    from apex_gui.core.report.model_card import render_model_card
    from apex_gui.core.plan.profiles import builtin_profiles
    from apex_gui.core.fit.recommend import evaluate, profile_candidates
    from apex_gui.core.fit.placement import MachineMemory
    from fakes import inputs_from

    model = open_model(tiny_qwen2moe)
    candidate = profile_candidates(model, [builtin_profiles()["quality"]])[0]
    cpu = MachineMemory((), 24 * 10**9)  # no GPU: what this machine's probe finds
    fit = evaluate(ModelGeometry.from_model(model), candidate, cpu, ContextSettings(n_ctx=8192))
    inputs = replace(inputs_from(store, tmp_path),
                     fits={"Qwen3.5-35B-A3B-APEX-Quality.gguf": fit},
                     hardware="CPU only, 24 GB RAM available")
    card = render_model_card(inputs)
    line = next(x for x in card.splitlines() if "flags from APEX Studio's memory check" in x)
    assert line.endswith("memory check for CPU only, 24 GB RAM available)")
    assert line.count("CPU only") == 1


def test_status_bar_follows_a_run_from_start_to_notification(qtbot: QtBot, studio,
                                                             tiny_qwen2moe: Path,
                                                             tmp_path: Path) -> None:
    window, panels = studio
    open_file(qtbot, window, tiny_qwen2moe)
    run = panels.run
    run.set_checked_profiles(["quality"])
    run.kl_box.setChecked(False)
    run.output_dir.edit.setText(str(tmp_path / "out"))
    with qtbot.waitSignal(panels.queue.jobStarted, timeout=10_000):
        run.start_button.click()
    started = window.statusBar().currentMessage()
    assert started.startswith("Running ") and started.endswith(": see the Run tab")
    with qtbot.waitSignal(run.runFinished, timeout=60_000) as blocker:
        pass
    assert blocker.args == [0]
    assert window.statusBar().currentMessage() == "APEX Studio: all 1 step(s) finished"
    assert (tmp_path / "out" / "tiny-qwen2moe-APEX-Quality.gguf").is_file()
    # The Results tab got the new quant.
    qtbot.waitUntil(lambda: any(r.label == "APEX Quality" for r in panels.results.rows),
                    timeout=5000)


def test_disabled_toolbar_icons_are_dimmed_in_the_dark_theme(qtbot: QtBot) -> None:
    from PySide6.QtGui import QIcon

    app = QApplication.instance()
    assert isinstance(app, QApplication)
    original = str(app.property("apexTheme") or "system")
    try:
        style.apply_theme(app, "dark")
        icon = style.icon("undo")

        def ink(mode: QIcon.Mode) -> set[str]:
            """The colours of the icon's fully opaque pixels."""
            image = icon.pixmap(32, 32, mode).toImage()
            return {image.pixelColor(x, y).name() for x in range(image.width())
                    for y in range(image.height()) if image.pixelColor(x, y).alpha() == 255}

        palette = style.dark_palette()
        assert ink(QIcon.Mode.Normal) == {palette.color(QPalette.ColorRole.WindowText).name()}
        assert ink(QIcon.Mode.Disabled) == {palette.color(
            QPalette.ColorGroup.Disabled, QPalette.ColorRole.WindowText).name()}
    finally:
        style.apply_theme(app, original)
