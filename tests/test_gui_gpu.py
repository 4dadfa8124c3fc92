"""The window's device controls: the Run tab's Devices column, Settings > CPU only and
Settings > Build GPU backends, driven through the real widgets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from apex_gui.core.fit.job_placement import JobPlacer
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs import gpu_build
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.settings import load_settings
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.run.run_panel import RunPanel
from apex_gui.views.run.run_queue_rows import DEVICES_COLUMN

pytestmark = pytest.mark.gui


def test_the_run_tab_shows_where_each_step_runs(qtbot, tmp_path: Path, tiny_qwen2moe: Path,
                                                llama_tools) -> None:  # type: ignore[no-untyped-def]
    store = RunStore(tmp_path / "runs.sqlite")
    tools = LlamaTools(llama_tools.configured_dir)
    tools.placer = JobPlacer(tools)  # the tools' own device list, as the window sets it
    queue = JobQueue(tools, store)
    panel = RunPanel(queue, open_model(tiny_qwen2moe))
    qtbot.addWidget(panel)
    panel.output_dir.edit.setText(str(tmp_path / "out"))
    panel.set_checked_profiles(["compact"])
    panel.kl_box.setChecked(True)
    try:
        with qtbot.waitSignal(panel.runFinished, timeout=120_000):
            panel.start()
        plans = {panel.table.item(r, 0).text(): panel.table.item(r, DEVICES_COLUMN).text()
                 for r in range(panel.table.rowCount())}
        assert plans["compact:quantize"] == "CPU"  # llama-quantize never uses a GPU
        # No GPU device on a test machine (lavapipe is skipped unless asked for): the
        # evaluation says it runs on the CPU, and why.
        assert plans["compact:kld"].startswith("CPU only: "), plans
        stored = store.runs(kind="kl-divergence")[0]
        assert stored.spec["placement"]["summary"] == plans["compact:kld"]
        assert "--device" in stored.argv and "none" in stored.argv
    finally:
        queue.shutdown(5000)
        store.close()


STAND_IN_BUILD = """import sys
print("GPU backends: vulkan: can be built (glslc shaderc 2023.2-1)", flush=True)
print("GPU backends: cuda: not built, missing cuBLAS: install the CUDA toolkit", flush=True)
print("llama.cpp tools: " + sys.argv[1] + "/llama.cpp/bin (CPU variants + vulkan)", flush=True)
"""


def test_settings_cpu_only_and_the_gpu_build_button(demo_window, qtbot, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The button runs the build script off the GUI thread and shows what it said (a
    stand-in script here: the real build takes minutes and is `make gpu`'s)."""
    script = tmp_path / "build_gpu_backends.py"
    script.write_text(STAND_IN_BUILD)
    monkeypatch.setattr(gpu_build, "SCRIPT", script)
    dialog = demo_window.show_settings()
    assert dialog.gpu_build_button.isEnabled() == (gpu_build.gpu_build_unavailable() is None)
    if not dialog.gpu_build_button.isEnabled():
        pytest.skip(f"no portable build here: {dialog.gpu_build_button.toolTip()}")
    with qtbot.waitSignal(dialog.toolsChecked, timeout=60_000) as blocker:
        dialog.gpu_build_button.click()
    assert "vulkan: can be built" in blocker.args[0] and "cuda: not built" in blocker.args[0]
    assert sys.prefix in blocker.args[0]
    qtbot.waitUntil(dialog.gpu_build_button.isEnabled, timeout=10_000)
    dialog.cpu_only_check.setChecked(True)
    dialog.accept()
    assert load_settings().cpu_only
