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
    largest_bytes = max(p.nbytes for p in (*curve, *tiers))
    if not plot.points and not plot.size_only:  # no measured rows chose the unit yet
        plot.use_size_unit(largest_bytes)
    scale = plot.size_scale
    if curve:
        plot.plot([p.nbytes / scale for p in curve], [p.predicted_kld for p in curve],
                  pen=pg.mkPen(OPTIMIZER_COLOUR, width=2), symbol="t", symbolSize=8,
                  symbolBrush=pg.mkBrush(OPTIMIZER_COLOUR), name="optimizer (predicted)")
    # Tiers that are one plan on this model (Quality and Balanced where the bands meet) get
    # one label, not two printed over each other.
    same: dict[tuple[int, float], list[str]] = {}
    for point in tiers:
        same.setdefault((point.nbytes, round(point.predicted_kld, 12)), []).append(point.label)
    largest = largest_bytes / scale
    for (nbytes, predicted), labels in same.items():
        x = nbytes / scale
        plot.plot([x], [predicted], pen=None, symbol="s", symbolSize=9,
                  symbolBrush=None, symbolPen=pg.mkPen(TIER_COLOUR, width=2))
        # The largest tier's label goes to its left: to the right it would leave the plot.
        anchor = (1, 1) if x >= largest * 0.999 else (0, 1)
        label = pg.TextItem(f"{' = '.join(labels)} (predicted)", color=TIER_COLOUR,
                            anchor=anchor)
        label.setPos(x, predicted)
        plot.addItem(label)
    if curve:
        # Above the curve a third of the way along: its right end sits among the largest tiers.
        anchor_point = curve[len(curve) // 3]
        label = pg.TextItem("optimizer (predicted)", color=OPTIMIZER_COLOUR, anchor=(0, 1))
        label.setPos(anchor_point.nbytes / scale, anchor_point.predicted_kld)
        plot.addItem(label)
    xs = [p.nbytes / scale for p in (*curve, *tiers)] + [x for _, x, _ in plot.points]
    ys = [p.predicted_kld for p in (*curve, *tiers)] + [y for _, _, y in plot.points]
    x_pad = (max(xs) - min(xs)) * 0.12 or max(xs) * 0.2 or 1.0
    y_pad = (max(ys) - min(ys)) * 0.1 or max(ys) * 0.1 or 1.0
    plot.setXRange(min(xs) - x_pad, max(xs) + x_pad, padding=0)
    plot.setYRange(min(0.0, min(ys)), max(ys) + y_pad, padding=0)
