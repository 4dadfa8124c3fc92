"""The heatmap's sensitivity overlay: cells coloured by measured damage (or damage per byte)
at the type they have, a legend for the scale, and hover lines with each candidate type's
damage and the cost and saving of one step up or down.

The numbers come from :mod:`apex_gui.core.quality.overlay`; the heatmap asks
:meth:`SensitivityOverlay.colour` and :meth:`SensitivityOverlay.tooltip_lines` per cell.
"""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette, QPaintEvent
from PySide6.QtWidgets import QWidget

from apex_gui.core.plan.precision import Cell, PrecisionPlan
from apex_gui.core.quality.overlay import (DamageScale, cell_damage, cell_options, cell_value,
                                           steps)
from apex_gui.core.quality.sensitivity import SensitivityTable
from apex_gui.core.units import format_size

__all__ = ["DamageLegend", "SensitivityOverlay", "damage_colour"]

#: Low damage pale, high damage dark red (a sequential scale readable beside viridis types).
_STOPS = ((0.0, QColor("#fff5eb")), (0.35, QColor("#fdae6b")), (0.7, QColor("#e6550d")),
          (1.0, QColor("#7f2704")))
UNMEASURED = QColor("#bdbdbd")


def damage_colour(position: float) -> QColor:
    """The overlay colour at a scale position (0 = least damage, 1 = most)."""
    position = min(1.0, max(0.0, position))
    for (p0, c0), (p1, c1) in zip(_STOPS, _STOPS[1:]):
        if position <= p1:
            t = (position - p0) / (p1 - p0)
            return QColor.fromRgbF(c0.redF() + (c1.redF() - c0.redF()) * t,
                                   c0.greenF() + (c1.greenF() - c0.greenF()) * t,
                                   c0.blueF() + (c1.blueF() - c0.blueF()) * t)
    return QColor(_STOPS[-1][1])


class SensitivityOverlay:
    """Colours and hover text for one plan's cells from one sensitivity table."""

    def __init__(self, table: SensitivityTable, plan: PrecisionPlan,
                 mode: str = "damage") -> None:
        self.table = table
        self.plan = plan
        self.mode = mode
        self.scale = DamageScale.for_plan(table, plan, mode)

    def value(self, cell: Cell, type_name: str | None = None) -> float | None:
        return cell_value(self.table, self.plan, cell, self.mode, type_name)

    def colour(self, cell: Cell, type_name: str | None = None) -> QColor:
        """Colour of the cell at its type (or at ``type_name`` while a stroke paints it)."""
        value = self.value(cell, type_name)
        if value is None:
            return QColor(UNMEASURED)
        return damage_colour(self.scale.position(value))

    def tooltip_lines(self, cell: Cell) -> list[str]:
        """HTML lines: the cell's damage, every candidate's, one step up and down."""
        damage = cell_damage(self.table, self.plan, cell)
        if damage is None:
            return ["sensitivity: not measured for this cell"]
        lines = [f"predicted KLD of this cell: <b>{damage:.3g}</b>"]
        current = {self.plan.effective_type(n) for n in self.plan.cell_tensors(*cell)}
        options = cell_options(self.table, self.plan, cell)
        if options:
            parts = [(f"<b>{o.type_name} {o.damage:.2g}</b>" if o.type_name in current
                      else f"{o.type_name} {o.damage:.2g}") for o in options]
            lines.append("by type: " + ", ".join(parts))
        up, down = steps(self.table, self.plan, cell)
        if up is not None:
            lines.append(f"one step up ({up.option.type_name}): +{format_size(up.bytes_delta)}, "
                         f"KLD {up.damage_delta:+.3g}")
        if down is not None:
            lines.append(f"one step down ({down.option.type_name}): saves "
                         f"{format_size(-down.bytes_delta)}, KLD {down.damage_delta:+.3g}")
        return lines


class DamageLegend(QWidget):
    """The overlay's colour scale with its low and high values."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("damageLegend")
        self.setMinimumHeight(40)
        self.scale: DamageScale | None = None
        self.setToolTip("Cell colour: predicted KL divergence the cell adds at its type "
                        "(measured sensitivity, logarithmic scale)")

    def sizeHint(self) -> QSize:
        return QSize(640, 42)

    def set_scale(self, scale: DamageScale | None) -> None:
        self.scale = scale
        self.update()

    def caption(self) -> str:
        if self.scale is None:
            return ""
        what = ("predicted KLD per byte" if self.scale.mode == "damage per byte"
                else "predicted KLD the cell adds")
        return f"Sensitivity overlay: {what} ({self.scale.low:.2g} to {self.scale.high:.2g}, " \
               "log scale); grey: not measured"

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt naming
        if self.scale is None:
            return
        painter = QPainter(self)
        font = QFont(self.font())
        font.setPixelSize(11)
        painter.setFont(font)
        metrics = QFontMetrics(font)
        bar = QRect(10, 4, max(self.width() - 20, 100), 12)
        for x in range(bar.left(), bar.right() + 1):
            painter.setPen(damage_colour((x - bar.left()) / max(bar.width() - 1, 1)))
            painter.drawLine(x, bar.top(), x, bar.bottom())
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        low, high = f"{self.scale.low:.2g}", f"{self.scale.high:.2g}"
        text_top = bar.bottom() + 3
        painter.drawText(QRect(bar.left(), text_top, 120, metrics.height()),
                         Qt.AlignmentFlag.AlignLeft, low)
        painter.drawText(QRect(bar.right() - 120, text_top, 120, metrics.height()),
                         Qt.AlignmentFlag.AlignRight, high)
        painter.drawText(QRect(bar.left() + 80, text_top, bar.width() - 160, metrics.height()),
                         Qt.AlignmentFlag.AlignHCenter, self.caption())
        painter.end()
