"""Draw the optimizer's curve and the fixed tiers' predicted KL on the Results KL plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyqtgraph as pg
from PySide6.QtGui import QColor

from apex_gui.core.quality.curve import CurvePoint

OPTIMIZER_COLOUR = QColor("#d6336c")
TIER_COLOUR = QColor("#1c7ed6")


#: Points closer than these shares of the plot's spans would print their labels over each
#: other (Micro, Nano and Mini of a small model lie within a few hundred kB).
LABEL_CLOSE_X, LABEL_CLOSE_Y = 0.06, 0.08


def label_groups(points: Sequence[tuple[float, float, str]], x_span: float,
                 y_span: float) -> list[tuple[float, float, str]]:
    """One label per group of points whose labels would overlap, named in order of size and
    placed at the group's highest point: (x, y, text)."""
    groups: list[list[tuple[float, float, str]]] = []
    for point in sorted(points):
        x, y, _text = point
        for group in groups:
            if any(abs(x - gx) <= LABEL_CLOSE_X * x_span and abs(y - gy) <= LABEL_CLOSE_Y * y_span
                   for gx, gy, _t in group):
                group.append(point)
                break
        else:
            groups.append([point])
    placed = []
    for group in groups:
        x, y, _text = max(group, key=lambda p: p[1])
        placed.append((x, y, ", ".join(text for _x, _y, text in group)))
    return placed


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
    for nbytes, predicted in same:
        plot.plot([nbytes / scale], [predicted], pen=None, symbol="s", symbolSize=9,
                  symbolBrush=None, symbolPen=pg.mkPen(TIER_COLOUR, width=2))
    every = [*curve, *tiers]
    x_span = (max(p.nbytes for p in every) - min(p.nbytes for p in every)) / scale
    y_span = max(p.predicted_kld for p in every) - min(p.predicted_kld for p in every)
    largest = largest_bytes / scale
    named = [(nbytes / scale, predicted, " = ".join(labels))
             for (nbytes, predicted), labels in same.items()]
    for x, y, text in label_groups(named, x_span, y_span):
        # The largest tier's label goes to its left: to the right it would leave the plot.
        anchor = (1, 1) if x >= largest * 0.999 else (0, 1)
        label = pg.TextItem(f"{text} (predicted)", color=TIER_COLOUR, anchor=anchor)
        label.setPos(x, y)
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
