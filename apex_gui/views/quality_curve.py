"""Draw the optimizer's curve and the fixed tiers' predicted KL on the Results KL plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyqtgraph as pg
from PySide6.QtGui import QColor

from apex_gui.core.quality.curve import CurvePoint

OPTIMIZER_COLOUR = QColor("#d6336c")
TIER_COLOUR = QColor("#1c7ed6")


def draw_quality_curve(plot: Any, curve: Sequence[CurvePoint],
                       tiers: Sequence[CurvePoint]) -> None:
    """Add the optimizer's plans (a line) and the tiers' predictions (hollow squares)."""
    plot.curve_points = list(curve)
    plot.tier_points = list(tiers)
    if not curve and not tiers:
        return
    if curve:
        plot.plot([p.nbytes / 1e9 for p in curve], [p.predicted_kld for p in curve],
                  pen=pg.mkPen(OPTIMIZER_COLOUR, width=2), symbol="t", symbolSize=8,
                  symbolBrush=pg.mkBrush(OPTIMIZER_COLOUR), name="optimizer (predicted)")
    for point in tiers:
        x = point.nbytes / 1e9
        plot.plot([x], [point.predicted_kld], pen=None, symbol="s", symbolSize=9,
                  symbolBrush=None, symbolPen=pg.mkPen(TIER_COLOUR, width=2))
        label = pg.TextItem(f"{point.label} (predicted)", color=TIER_COLOUR, anchor=(0, 1))
        label.setPos(x, point.predicted_kld)
        plot.addItem(label)
    if curve:
        label = pg.TextItem("optimizer (predicted)", color=OPTIMIZER_COLOUR, anchor=(1, 0))
        label.setPos(curve[-1].nbytes / 1e9, curve[-1].predicted_kld)
        plot.addItem(label)
    xs = [p.nbytes / 1e9 for p in (*curve, *tiers)] + [x for _, x, _ in plot.points]
    ys = [p.predicted_kld for p in (*curve, *tiers)] + [y for _, _, y in plot.points]
    x_pad = (max(xs) - min(xs)) * 0.12 or max(xs) * 0.2 or 1.0
    y_pad = (max(ys) - min(ys)) * 0.1 or max(ys) * 0.1 or 1.0
    plot.setXRange(min(xs) - x_pad, max(xs) + x_pad, padding=0)
    plot.setYRange(min(0.0, min(ys)), max(ys) + y_pad, padding=0)
