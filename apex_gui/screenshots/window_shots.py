"""`apex-studio --screenshot DIR`: renders the documentation screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace as dc_replace
from pathlib import Path

from apex_gui.core.fit.device_spec import parse_device_spec
from apex_gui.core.fit.hardware import snapshot as probe
from apex_gui.core.fixtures.bundled_demo import demo_model
from apex_gui.core.gguf.model import open_model
from apex_gui.core.hub.download import RemoteFile
from apex_gui.core.hub.search import RepoHit
from apex_gui.core.jobs.calibration import quick_eval_text
from apex_gui.core.jobs.pipeline import EvaluationOptions, build_pipeline
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import run_pipeline
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from apex_gui.core.quality.known import beside_model
from apex_gui.core.settings import cache_dir
from apex_gui.screenshots.event_loop import settle, wait
from apex_gui.screenshots.quality_shots import QUALITY_VIEWS, take_quality_screenshots


SCREENSHOT_VIEWS = ("main-demo", "main-twin", "inspect-quantized", "diff", "hardware", "run",
                    "results", "settings",
                    "hf-download", "main-dark", "scale200", "tensors", "metadata", "memory",
                    "hub-search", "try-quant", "main-1024")


def record_demo_runs(work_dir: Path) -> None:
    """Quantize the demo model with a few profiles and measure them, for the Results view.

    Real llama.cpp runs (a few seconds on the small demo model) recorded in the run store of
    the current data dir, which screenshot mode points at a temporary folder.
    """
    demo = demo_model(cache_dir()).path
    model = open_model(demo)
    jobs = [QuantizeJob.from_plan(plan_from_profile(model, get_profile(key)),
                                  work_dir / f"apex-demo-APEX-{get_profile(key).label}.gguf")
            for key in ("balanced", "compact", "mini")]
    options = EvaluationOptions(reference=demo, text=quick_eval_text(), context=512,
                                kl_divergence=True)
    store = RunStore()
    try:
        run_pipeline(build_pipeline(jobs, evaluation=options), store=store)
    finally:
        store.close()


def take_screenshots(out_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    """Render the main views to ``out_dir``; the 200% view comes from a child process.

    The run history shown is made for the occasion (real quantize and KL divergence runs on
    the demo model) in a temporary data folder: the user's own history is never touched.
    """
    scratch = Path(tempfile.mkdtemp(prefix="apex-shots-data-"))
    # Settings, window geometry and run history of the screenshot session stay in scratch.
    scratch_dirs = {"APEX_STUDIO_DATA_DIR": scratch / "data",
                    "APEX_STUDIO_CONFIG_DIR": scratch / "config"}
    previous = {key: os.environ.get(key) for key in scratch_dirs}
    os.environ.update({key: str(value) for key, value in scratch_dirs.items()})
    try:
        if {"results", "run"} & set(only or SCREENSHOT_VIEWS):
            record_demo_runs(scratch)
        written = _take_screenshots(out_dir, only)
        # The quality views need a trained model and its measured sensitivity: the bundled
        # demo has both; APEX_SCREENSHOT_QUALITY_MODEL names another (its table beside it).
        if not only or set(only) & set(QUALITY_VIEWS):
            chosen = os.environ.get("APEX_SCREENSHOT_QUALITY_MODEL")
            quality_model = Path(chosen) if chosen else demo_model(cache_dir()).path
            if beside_model(quality_model).is_file():
                written += take_quality_screenshots(quality_model, beside_model(quality_model),
                                                    out_dir)
        return written
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(scratch, ignore_errors=True)


def _take_screenshots(out_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    # start-up: app.py imports this driver before its preflight has checked Qt
    from PySide6.QtWidgets import QApplication

    # start-up: gguf (twins) and Qt (views) load only when screenshots are taken
    from apex_gui.core.fixtures.twins import write_shape_twin
    from apex_gui.views import style
    from apex_gui.views.window.main_window import MainWindow

    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(only or SCREENSHOT_VIEWS)
    written: list[Path] = []
    app = QApplication.instance()
    assert isinstance(app, QApplication)

    def shoot(name: str, widget, prepare: Callable[[], None] | None = None) -> None:  # type: ignore[no-untyped-def]
        if name not in wanted:
            return
        if prepare is not None:
            prepare()
        settle()
        path = out_dir / f"{name}.png"
        widget.grab().save(str(path))
        written.append(path)

    # start-up: the views import Qt
    from apex_gui.views.window.panels import install_panels

    window = MainWindow(probe_hardware=True)
    panels = install_panels(window)
    window.resize(1500, 940)
    window.show()
    window.open_demo()
    wait(window.modelLoadFinished)
    settle(300)
    plan = window.current_plan
    assert plan is not None
    # A few edits so the picture shows what editing looks like: a middle layer pushed down
    # to IQ2_S (a type that needs an imatrix: it appears under Problems) and a selection.
    plan.set_cells(plan.row_cells(6), "IQ2_S", "demo edit")
    window.heatmap.select_column("attn_v")
    shoot("main-demo", window)
    shoot("scale200", window)
    shoot("diff", window, lambda: window.set_diff("profile:compact"))
    window.set_diff("")
    window.allow_dropping_edits()  # staged for the pictures: opening the next model need not ask

    with tempfile.TemporaryDirectory(prefix="apex-shots-") as folder:
        if "main-twin" in wanted:
            twin = write_shape_twin(Path(folder) / "Trinity-Large-BF16.gguf", "trinity-large-399b")[0]
            window.open_model_file(twin)
            wait(window.modelLoadFinished)
            shoot("main-twin", window)
        if "inspect-quantized" in wanted:
            source = write_shape_twin(Path(folder) / "qwen35-bf16.gguf", "qwen3.5-35b-a3b")[0]
            reference = plan_from_profile(open_model(source), get_profile("i-mini"))
            types = {name: reference.effective_type(name) for name in reference.types}
            # A hand-tuned variant: two middle layers' experts kept at Q4_K.
            for layer in (18, 19):
                for kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
                    types[f"blk.{layer}.{kind}.weight"] = "Q4_K"
            quant = write_shape_twin(Path(folder) / "Qwen3.5-35B-A3B-custom-Mini.gguf", "qwen3.5-35b-a3b",
                                     tensor_types=types)[0]
            window.open_model_file(quant)
            wait(window.modelLoadFinished)
            shoot("inspect-quantized", window)
        if "hardware" in wanted:
            # The tiers of a real-size model on a card people own say more than the demo's.
            source = write_shape_twin(Path(folder) / "Qwen3.5-35B-A3B-BF16.gguf",
                                      "qwen3.5-35b-a3b")[0]
            window.open_model_file(source)
            wait(window.modelLoadFinished)
            window.center_tabs.setCurrentWidget(panels.hardware)
            panels.hardware.manual_edit.setText("RTX 4090 24GB")
            wait(panels.hardware.recommendationChanged)
            settle(600)
            shoot("hardware", window)
            window.center_tabs.setCurrentIndex(0)
            # Memory per device at 4k..128k context, for the same model on the same card:
            # the Memory tab follows the set-up of Hardware & tiers.
            if "memory" in wanted:
                window.switch_profile("compact")
                window.right_tabs.setCurrentWidget(window.memory_view)
                settle(600)
                shoot("memory", window)
                window.right_tabs.setCurrentIndex(0)
            panels.hardware.manual_edit.setText("")
            if "tensors" in wanted or "metadata" in wanted:
                window.center_tabs.setCurrentWidget(window.tensor_table)
                window.tensor_table.search.setText("blk.10. exps")
                shoot("tensors", window)
                window.tensor_table.search.setText("")
                window.center_tabs.setCurrentWidget(window.metadata_browser)
                window.metadata_browser.select_key(f"{window.current_model.architecture}.rope.freq_base"
                                                   if window.current_model else "")
                window.metadata_browser.search.setText("rope")
                shoot("metadata", window)
                window.metadata_browser.search.setText("")
                window.center_tabs.setCurrentIndex(0)
        window.open_demo()
        wait(window.modelLoadFinished)

    for name, panel in (("run", panels.run), ("results", panels.results)):
        if name in wanted:
            window.center_tabs.setCurrentWidget(panel)
            settle(600)
            shoot(name, window)
    window.center_tabs.setCurrentIndex(0)

    if "settings" in wanted:
        dialog = window.show_settings()
        dialog.check_tools()
        wait(dialog.toolsChecked, 15_000)
        shoot("settings", dialog)
        dialog.reject()
    if "hf-download" in wanted:
        hub_dialog = window.show_download_dialog()
        wait(hub_dialog.statusChanged, 8_000)
        shoot("hf-download", hub_dialog)
        hub_dialog.reject()
        hub_dialog.reject()
    if "hub-search" in wanted:
        # No network in a screenshot run: an example listing shows what a search looks like.
        hits = [RepoHit("mudler/Qwen3.5-35B-A3B-APEX-GGUF", 48210, 212),
                RepoHit("mudler/Qwen3-30B-A3B-APEX-GGUF", 20877, 95)]
        files = [RemoteFile("Qwen3.5-35B-A3B-APEX-I-Mini.gguf", 13_836_526_176),
                 RemoteFile("Qwen3.5-35B-A3B-APEX-I-Compact.gguf", 17_015_539_296),
                 RemoteFile("Qwen3.5-35B-A3B-APEX-I-Quality.gguf", 23_513_661_024),
                 RemoteFile("Qwen3.5-35B-A3B-BF16-00001-of-00002.gguf", 69_400_000_000, ("a", "b"))]
        machine = dc_replace(probe(), gpus=tuple(parse_device_spec("RTX 4090 24GB")))
        # start-up: the views import Qt
        from apex_gui.views.window.hf_download import HubDownloadDialog

        search_dialog = HubDownloadDialog(window.workers, window, snapshot=machine,
                                          listing=lambda _q, _n: hits,
                                          file_lister=lambda _repo: files)
        search_dialog.resize(760, 520)
        search_dialog.open()
        wait(search_dialog.statusChanged, 8_000)
        settle(300)
        search_dialog.search_edit.setText("qwen3 apex")
        search_dialog.search()
        wait(search_dialog.statusChanged, 8_000)
        search_dialog.results.setCurrentRow(0)
        search_dialog.repo_edit.setText(hits[0].repo_id)
        search_dialog.list_files()
        wait(search_dialog.statusChanged, 8_000)
        shoot("hub-search", search_dialog)
        search_dialog.reject()
    if "try-quant" in wanted:
        try_dialog = window.show_try_dialog()
        if try_dialog is not None:
            # The demo learned Python and man pages, not essays: a prompt from its world.
            try_dialog.prompt_edit.setText("def read_config(path):")
            try_dialog.tokens.setValue(48)
            try_dialog.generate()
            wait(try_dialog.finishedRun, 120_000)
            shoot("try-quant", try_dialog)
            try_dialog.close()
    if "main-1024" in wanted:
        size = window.size()
        window.resize(1024, 700)
        window.heatmap.zoom_to_fit()
        shoot("main-1024", window)
        window.resize(size)
        window.heatmap.zoom_to_fit()  # back to the map the full-size shots show
    if "main-dark" in wanted:
        original = app.property("apexTheme") or "system"
        style.apply_theme(app, "dark")
        window._refresh_icons()
        shoot("main-dark", window)
        style.apply_theme(app, str(original))
    window.close()
    settle(50)

    if "scale200" in wanted and os.environ.get("QT_SCALE_FACTOR") != "2":
        # The device pixel ratio is fixed when QApplication starts: a child process renders it.
        written = [p for p in written if p.name != "scale200.png"]
        env = dict(os.environ, QT_SCALE_FACTOR="2", QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
        result = subprocess.run([sys.executable, "-m", "apex_gui.app", "--screenshot", str(out_dir),
                                 "--only", "scale200"], env=env, capture_output=True, text=True,
                                timeout=120)
        if result.returncode == 0:
            written.append(out_dir / "scale200.png")
        else:
            print(f"200% screenshot failed: {result.stderr.strip()}", file=sys.stderr)
    return written
