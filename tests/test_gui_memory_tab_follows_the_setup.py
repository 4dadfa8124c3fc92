"""The Memory tab plans for the set-up Hardware & tiers fits to, a typed or picked GPU
included, with the same numbers as the fit table, and reads in MB on the demo (issue 22, #5:
"no GPU: everything in RAM" beside a table planning Full GPU on an RTX 4090, and every figure
0.00 GB)."""

from __future__ import annotations

import pytest
from window_fixtures import demo_with_panels  # noqa: F401 - a fixture

pytestmark = pytest.mark.gui


def test_the_memory_tab_follows_the_hardware_set_up(qtbot, demo_with_panels) -> None:  # type: ignore[no-untyped-def]
    window, panels = demo_with_panels
    hardware, view = panels.hardware, window.memory_view
    with qtbot.waitSignal(hardware.recommendationChanged, timeout=30_000,
                          check_params_cb=lambda rec: rec is not None):
        hardware.manual_edit.setText("RTX 4090 24GB")
    window.right_tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: view.breakdown is not None
                    and "RTX 4090 24GB" in view.breakdown.capacities, timeout=5000)
    rec = hardware.recommendation
    note = view.note.text()
    assert "no GPU" not in note and "RTX 4090 24GB" in note
    headers = [view.table.horizontalHeaderItem(c).text() for c in range(view.table.columnCount())]
    assert headers[0] == "MB"
    context = rec.context.n_ctx
    assert context in view.breakdown.contexts
    cell = view.cell_text("RTX 4090 24GB", "total", context)
    assert float(cell) > 0, cell
    # The same estimate as the fit table for the same plan, context and placement.
    quality = next(r for r in rec.results if r.candidate.key == "quality")
    assert quality.verdict.name == "FULL_GPU" and window.current_plan.profile.key == "quality"
    assert view.breakdown.value("RTX 4090 24GB", "total", context) == \
        quality.estimate.devices[0].total
