"""Memory breakdown per device at several context sizes: pure numbers and the Memory tab."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_prompts import close_window
from pytestqt.qtbot import QtBot

from apex_gui.core.fit import hardware
from apex_gui.core.fit.breakdown import contexts_for, memory_breakdown
from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry, Placement
from apex_gui.core.fit.hardware import NvmlMemory
from apex_gui.core.fit.memory import estimate_memory, weight_table
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from apex_gui.core.settings import load_settings
from apex_gui.core.units import GB, GiB, format_size_figure
from apex_gui.views.window.main_window import MainWindow
from fakes import FakeGpu, FakeNvml


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("q35")
    return write_shape_twin(folder / "Qwen3.5-35B-A3B-BF16.gguf", "qwen3.5-35b-a3b")[0]


def test_breakdown_matches_the_fit_estimate_at_each_context(qwen35: Path) -> None:
    model = open_model(qwen35)
    plan = plan_from_profile(model, get_profile("compact"))
    geometry = ModelGeometry.from_model(model)
    contexts = contexts_for(model.context_length)
    assert contexts == (4096, 16384, 32768, 131072)
    free = 22 * GiB
    table = memory_breakdown(geometry, plan.tensor_bytes_map(), ContextSettings(), contexts,
                             [("RTX 4090", free)], 60 * GiB)
    weights = weight_table(plan.tensor_bytes_map(), geometry)
    for n_ctx in contexts:
        reference = estimate_memory(geometry, weights, ContextSettings(n_ctx=n_ctx), [free], Placement())
        assert table.value("RTX 4090", "total", n_ctx) == reference.devices[0].total
        assert table.value("RTX 4090", "KV cache", n_ctx) == reference.devices[0].kv
        assert table.value("RAM", "total", n_ctx) == reference.host.total
    kv = [table.value("RTX 4090", "KV cache", n) for n in contexts]
    assert kv == sorted(kv) and kv[-1] > 4 * kv[0]  # KV grows with context, weights do not
    assert len({table.value("RTX 4090", "weights", n) for n in contexts}) == 1
    assert contexts_for(8192) == (4096, 8192)


@pytest.mark.gui
def test_memory_tab_shows_devices_side_by_side_and_flags_overflow(qtbot: QtBot, qwen35: Path) -> None:
    gpu = FakeGpu("NVIDIA GeForce RTX 4060 Ti", "GPU-bbbb",
                  memory=NvmlMemory(16 * GiB, 15 * GiB, 1 * GiB))
    snapshot = hardware.snapshot(backend=FakeNvml([gpu]))
    main = MainWindow(load_settings(), probe_hardware=False)
    main.show()
    try:
        with qtbot.waitSignal(main.modelLoadFinished, timeout=15_000):
            main.open_model_file(qwen35)
        main.switch_profile("compact")  # 17 GB of weights: over a 16 GB card
        view = main.memory_view
        view.set_hardware(snapshot)
        main.right_tabs.setCurrentWidget(view)
        qtbot.waitUntil(lambda: view.breakdown is not None and
                        view.breakdown.capacities.get(gpu.name) is not None, timeout=3000)
        breakdown = view.breakdown
        assert breakdown is not None
        headers = [view.table.horizontalHeaderItem(c).text() for c in range(view.table.columnCount())]
        assert headers == ["GB", "4k", "16k", "32k", "128k"]
        total = breakdown.value(gpu.name, "total", 4096)
        assert view.cell_text(gpu.name, "total", 4096) == format_size_figure(total, GB)
        assert breakdown.over(gpu.name, 4096)
        # Experts of 20 layers in RAM: the card's share shrinks, RAM's grows.
        view.cpu_moe.setValue(20)
        qtbot.waitUntil(lambda: view.breakdown is not breakdown, timeout=3000)
        assert view.breakdown.value(gpu.name, "weights", 4096) < breakdown.value(gpu.name, "weights", 4096)
        assert view.breakdown.value("RAM", "weights", 4096) > breakdown.value("RAM", "weights", 4096)
    finally:
        close_window(main)
