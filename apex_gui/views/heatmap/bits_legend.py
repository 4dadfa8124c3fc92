"""The colour scale of bits per weight with the common types marked, and the cell keys."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtGui import (
    QBrush, QColor, QFont, QFontMetrics, QPainter, QPaintEvent, QPalette, QPen, QPolygonF,
)
from PySide6.QtWidgets import QWidget

from apex_gui.core.gguf.types import ggml_type
from apex_gui.views import style


class BitsLegend(QWidget):
    """The colour scale with the common types marked, and keys for the cell markers."""

    MARKED_TYPES = ("IQ1_M", "IQ2_XXS", "IQ2_S", "Q3_K", "IQ4_XS", "Q5_K", "Q6_K", "Q8_0", "F16")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(54)
        self.setToolTip("Cell colour: bits per weight of the type llama-quantize will write "
                        "(viridis scale, logarithmic)")

    def sizeHint(self) -> QSize:
        return QSize(640, 56)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        font = QFont(self.font())
        font.setPixelSize(11)
        painter.setFont(font)
        metrics = QFontMetrics(font)
        text = palette.color(QPalette.ColorRole.WindowText)
        keys_width = 470 if self.width() > 900 else 0
        bar_left, bar_right = 10, max(self.width() - keys_width - 20, 200)
        bar = QRect(bar_left, 6, bar_right - bar_left, 14)
        for x in range(bar.left(), bar.right() + 1):
            position = (x - bar.left()) / max(bar.width() - 1, 1)
            painter.setPen(style.position_colour(position))  # ticks use bpw_position: same scale
            painter.drawLine(x, bar.top(), x, bar.bottom())
        painter.setPen(text)
        last_right = -100
        for type_name in self.MARKED_TYPES:
            bpw = ggml_type(type_name).bits_per_weight
            x = bar.left() + round(style.bpw_position(bpw) * (bar.width() - 1))
            painter.drawLine(x, bar.bottom() + 1, x, bar.bottom() + 4)
            label = f"{type_name} {bpw:.3g}"
            label_w = metrics.horizontalAdvance(label)
            left = max(bar.left(), min(x - label_w // 2, bar.right() - label_w))
            if left > last_right + 4:
                painter.drawText(QRect(left, bar.bottom() + 5, label_w + 2, metrics.height()),
                                 Qt.AlignmentFlag.AlignLeft, label)
                last_right = left + label_w
        painter.drawText(QRect(bar.left(), bar.bottom() + 6 + metrics.height(), bar.width(),
                               metrics.height()), Qt.AlignmentFlag.AlignLeft,
                         "bits per weight (colour of the type really written)")
        if keys_width:
            self._paint_keys(painter, QRect(bar_right + 20, 4, keys_width, self.height() - 8),
                             metrics, palette)
        painter.end()

    def _paint_keys(self, painter: QPainter, area: QRect, metrics: QFontMetrics,
                    palette: QPalette) -> None:
        text = palette.color(QPalette.ColorRole.WindowText)
        swatch = 14
        entries: list[tuple[str, Callable[[QRect], None]]] = [
            ("kept as stored (router, norms)", lambda r: (
                painter.fillRect(r, style.KEPT_GREY.lighter(135)),
                painter.fillRect(r, QBrush(style.KEPT_GREY.darker(130), Qt.BrushStyle.BDiagPattern)))),
            ("row-length fallback", lambda r: (
                painter.fillRect(r, style.bpw_colour(6.5)),
                painter.setPen(QPen(QColor("#000000"), 1)),
                painter.setBrush(style.MARKER_FALLBACK),
                painter.drawPolygon(QPolygonF([QPoint(r.right() - 7, r.top()), QPoint(r.right() + 1, r.top()),
                                               QPoint(r.right() + 1, r.top() + 7)])),
                painter.setBrush(Qt.BrushStyle.NoBrush))),
            ("band boundary", lambda r: (
                painter.fillRect(r, style.bpw_colour(4.5)),
                painter.setPen(QPen(QColor("#000000"), 3)),
                painter.drawLine(r.left(), r.center().y(), r.right(), r.center().y()),
                painter.setPen(QPen(QColor("#ffffff"), 1)),
                painter.drawLine(r.left(), r.center().y(), r.right(), r.center().y()))),
            ("differs (diff mode)", lambda r: (
                painter.fillRect(r, style.bpw_colour(4.5)),
                painter.setPen(QPen(style.MARKER_DIFF, 2)),
                painter.drawRect(r.adjusted(1, 1, -1, -1)))),
        ]
        column_width = area.width() // 2
        for index, (label, draw) in enumerate(entries):
            x = area.left() + (index % 2) * column_width
            y = area.top() + (index // 2) * (swatch + 8)
            draw(QRect(x, y, swatch + 8, swatch))
            painter.setPen(text)
            painter.drawText(QRect(x + swatch + 14, y - 2, column_width - swatch - 16, swatch + 4),
                             Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                             metrics.elidedText(label, Qt.TextElideMode.ElideRight,
                                                column_width - swatch - 16))
