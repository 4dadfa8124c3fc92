"""Painting the precision map: cells, band lines, strips and headers."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, QRectF, Qt
from PySide6.QtGui import (
    QBrush, QColor, QFont, QFontMetrics, QPainter, QPaintEvent, QPalette, QPen, QPolygonF,
)

from apex_gui.core.gguf.roles import kind_label
from apex_gui.core.gguf.types import TYPES, ggml_type
from apex_gui.core.plan.bands import cell_band
from apex_gui.core.plan.precision import Cell
from apex_gui.views import style
from apex_gui.views.heatmap.heatmap_geometry import (
    COLUMN_HEADER_HEIGHT, GROUP_SHORT_TITLES, GROUP_TITLES, MIXER_TAGS, ROW_HEADER_WIDTH,
    KEPT_DARK, KEPT_HATCH, KEPT_LIGHT, wrapped_label,
)


class HeatmapPainting:
    """Painting the precision map: cells, band lines, strips and headers: a part of PrecisionHeatmap, which derives from it."""

    # --- painting -----------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self.viewport())
        palette = self.palette()
        painter.fillRect(self.viewport().rect(), palette.color(QPalette.ColorRole.Base))
        if self._plan is None:
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter,
                             "Open a GGUF model (Ctrl+O) or drop one here")
            painter.end()
            return
        geometry = self._geometry
        origin = self._origin()
        width, height = self.viewport().width(), self.viewport().height()
        grid_clip = QRect(ROW_HEADER_WIDTH, COLUMN_HEADER_HEIGHT, width - ROW_HEADER_WIDTH,
                          height - COLUMN_HEADER_HEIGHT)
        cell_font = QFont(self.font())
        cell_font.setPixelSize(max(8, min(13, round(geometry.cell_height * 0.62))))
        metrics = QFontMetrics(cell_font)

        painter.save()
        painter.setClipRect(grid_clip)
        painter.translate(origin)
        first_row = max(0, (COLUMN_HEADER_HEIGHT - origin.y()) // geometry.cell_height)
        last_row = min(len(geometry.rows), (height - origin.y()) // geometry.cell_height + 1)
        self._paint_mtp_backdrop(painter, palette)
        for row in range(first_row, last_row):
            layer = geometry.rows[row]
            for kind in geometry.kinds:
                cell = (layer.index, kind)
                rect = geometry.cell_rect(cell)
                assert rect is not None
                self._paint_cell(painter, cell, rect, cell_font, metrics, palette)
        self._paint_band_lines(painter, first_row, last_row)
        self._paint_strip(painter, cell_font, metrics, palette)
        painter.restore()

        self._paint_row_header(painter, palette, first_row, last_row)
        self._paint_column_header(painter, palette)
        painter.fillRect(QRect(0, 0, ROW_HEADER_WIDTH, COLUMN_HEADER_HEIGHT),
                         palette.color(QPalette.ColorRole.Window))
        painter.setPen(palette.color(QPalette.ColorRole.WindowText))
        corner = QRect(6, 0, ROW_HEADER_WIDTH - 10, COLUMN_HEADER_HEIGHT)
        painter.drawText(corner, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom,
                         "layer  mixer")
        painter.end()

    def _paint_mtp_backdrop(self, painter: QPainter, palette: QPalette) -> None:
        geometry = self._geometry
        mtp_rows = [i for i, layer in enumerate(geometry.rows) if layer.is_mtp]
        if not mtp_rows:
            return
        top = mtp_rows[0] * geometry.cell_height
        pen = QPen(palette.color(QPalette.ColorRole.WindowText), 1, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawLine(0, top - 1, geometry.grid_width, top - 1)

    def _advance(self, metrics: QFontMetrics, text: str) -> int:
        # Type names repeat thousands of times per repaint: measure each once per font size.
        key = (metrics.height(), text)
        width = self._advances.get(key)
        if width is None:
            width = self._advances[key] = metrics.horizontalAdvance(text)
        return width

    def _paint_cell(self, painter: QPainter, cell: Cell, rect: QRect, font: QFont,
                    metrics: QFontMetrics, palette: QPalette) -> None:
        state = self._states.get(cell)
        inner = rect.adjusted(0, 0, -1, -1)
        if state is None:  # the layer has no such tensor (dense layers, MTP blocks...)
            painter.fillRect(inner, palette.color(QPalette.ColorRole.AlternateBase))
            return
        pending = cell in self._stroke
        shown_type = self.brush_type if pending else state.effective
        if not state.editable:
            dark = style.is_dark(palette)
            base = KEPT_DARK if dark else KEPT_LIGHT
            painter.fillRect(inner, base)
            painter.fillRect(inner, QBrush(style.KEPT_GREY if dark else KEPT_HATCH,
                                           Qt.BrushStyle.BDiagPattern))
            fill = base
        else:
            bpw = ggml_type(shown_type).bits_per_weight if shown_type in TYPES else 16.0
            fill = style.bpw_colour(bpw)
            if self.overlay is not None and self.overlay.plan is self._plan:
                fill = self.overlay.colour(cell, shown_type if pending else None)
            painter.fillRect(inner, fill)
        if self._reference is not None and not state.differs:
            # Diff mode: cells that match the reference step back so the differences pop.
            veil = QColor(palette.color(QPalette.ColorRole.Base))
            veil.setAlpha(165)
            painter.fillRect(inner, veil)
            fill = veil
        label = shown_type if (pending or not state.falls_back) else f"{state.planned}>{state.effective}"
        if metrics.height() <= rect.height() + 2:
            if self._advance(metrics, label) > rect.width() - 4:
                label = shown_type
            if self._advance(metrics, label) <= rect.width() - 4:
                painter.setFont(font)
                text_colour = style.text_colour_on(fill) if state.editable else QColor("#202020")
                if not state.editable and style.is_dark(palette):
                    text_colour = QColor("#e0e0e0")
                if self._reference is not None and not state.differs:
                    text_colour = palette.color(QPalette.ColorRole.PlaceholderText)
                painter.setPen(text_colour)
                painter.drawText(inner, Qt.AlignmentFlag.AlignCenter, label)
        if state.falls_back and not pending:
            size = max(5, min(rect.height() // 2, 9))
            triangle = QPolygonF([QPoint(inner.right() - size, inner.top()),
                                  QPoint(inner.right() + 1, inner.top()),
                                  QPoint(inner.right() + 1, inner.top() + size)])
            painter.setPen(QPen(QColor("#000000"), 1))
            painter.setBrush(style.MARKER_FALLBACK)
            painter.drawPolygon(triangle)
            painter.setBrush(Qt.BrushStyle.NoBrush)
        if cell in self._selection:
            highlight = palette.color(QPalette.ColorRole.Highlight)
            overlay = QColor(highlight)
            overlay.setAlpha(70)
            painter.fillRect(inner, overlay)
            painter.setPen(QPen(highlight, 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            # Inside the diff outline, which is drawn last: a selection never hides a difference.
            inset = 4 if state.differs else 1
            painter.drawRect(inner.adjusted(inset, inset, -inset, -inset))
        if state.differs:
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(QPen(QColor("#000000"), 3))
            painter.drawRect(inner.adjusted(1, 1, -1, -1))
            painter.setPen(QPen(style.MARKER_DIFF, 2))
            painter.drawRect(inner.adjusted(1, 1, -1, -1))

    def _paint_band_lines(self, painter: QPainter, first_row: int, last_row: int) -> None:
        """A black-and-white double line where the profile's band changes, per column."""
        profile, plan = self._active_profile(), self._plan
        if profile is None or plan is None:
            return
        geometry = self._geometry
        n_layer = plan.model.n_layer
        for column, kind in enumerate(geometry.kinds):
            left = geometry.column_x[column]
            right = left + geometry.cell_width - 1
            for row in range(max(first_row, 1), last_row):
                layer = geometry.rows[row]
                previous = geometry.rows[row - 1]
                if layer.is_mtp or previous.is_mtp or layer.index >= n_layer:
                    continue
                if (layer.index, kind) not in self._states and (previous.index, kind) not in self._states:
                    continue
                if cell_band(profile, n_layer, layer.index, kind) != cell_band(profile, n_layer,
                                                                              previous.index, kind):
                    y = row * geometry.cell_height - 1
                    painter.setPen(QPen(QColor("#000000"), 3))
                    painter.drawLine(left, y, right, y)
                    painter.setPen(QPen(QColor("#ffffff"), 1))
                    painter.drawLine(left, y, right, y)

    def _paint_strip(self, painter: QPainter, font: QFont, metrics: QFontMetrics,
                     palette: QPalette) -> None:
        """Non-layer tensors (embedding, output): wide cells that name their tensor."""
        geometry = self._geometry
        painter.setFont(font)
        for cell in geometry.strip:
            rect = geometry.cell_rect(cell)
            state = self._states.get(cell)
            if rect is None or state is None:
                continue
            inner = rect.adjusted(0, 0, -1, -1)
            pending = cell in self._stroke
            shown = self.brush_type if pending else state.effective
            if state.editable:
                fill = style.bpw_colour(ggml_type(shown).bits_per_weight if shown in TYPES else 16.0)
                painter.fillRect(inner, fill)
            else:
                fill = style.KEPT_GREY.lighter(135)
                painter.fillRect(inner, fill)
                painter.fillRect(inner, QBrush(style.KEPT_GREY.darker(130), Qt.BrushStyle.BDiagPattern))
            text_colour = style.text_colour_on(fill)
            if self._reference is not None and not state.differs:
                veil = QColor(palette.color(QPalette.ColorRole.Base))
                veil.setAlpha(165)
                painter.fillRect(inner, veil)
                text_colour = palette.color(QPalette.ColorRole.PlaceholderText)
            painter.setPen(text_colour)
            text_rect = rect.adjusted(5, 0, -5, -1)
            type_width = metrics.horizontalAdvance(shown) + 8
            painter.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                             metrics.elidedText(cell[1], Qt.TextElideMode.ElideRight,
                                                text_rect.width() - type_width))
            painter.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, shown)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            if cell in self._selection:
                inset = 4 if state.differs else 1
                painter.setPen(QPen(palette.color(QPalette.ColorRole.Highlight), 2))
                painter.drawRect(inner.adjusted(inset, inset, -inset, -inset))
            if state.differs:
                painter.setPen(QPen(QColor("#000000"), 3))
                painter.drawRect(inner.adjusted(1, 1, -1, -1))
                painter.setPen(QPen(style.MARKER_DIFF, 2))
                painter.drawRect(inner.adjusted(1, 1, -1, -1))

    def _paint_row_header(self, painter: QPainter, palette: QPalette, first_row: int,
                          last_row: int) -> None:
        geometry = self._geometry
        origin = self._origin()
        height = self.viewport().height()
        painter.save()
        painter.setClipRect(QRect(0, COLUMN_HEADER_HEIGHT, ROW_HEADER_WIDTH,
                                  height - COLUMN_HEADER_HEIGHT))
        painter.fillRect(QRect(0, COLUMN_HEADER_HEIGHT, ROW_HEADER_WIDTH, height),
                         palette.color(QPalette.ColorRole.Window))
        font = QFont(self.font())
        font.setPixelSize(max(8, min(12, round(geometry.cell_height * 0.62))))
        painter.setFont(font)
        tag_font = QFont(font)
        tag_font.setPixelSize(max(8, min(10, geometry.cell_height - 6)))
        tag_metrics = QFontMetrics(tag_font)
        text = palette.color(QPalette.ColorRole.WindowText)
        # Only layers with a selected cell can be wholly selected (cheap with 60+ rows).
        touched = {c[0] for c in self._selection if c[0] is not None}
        selected_rows = {layer for layer in touched
                         if self._plan is not None and self._selection.issuperset(self._plan.row_cells(layer))}
        for row in range(first_row, last_row):
            layer = geometry.rows[row]
            top = origin.y() + row * geometry.cell_height
            rect = QRect(0, top, ROW_HEADER_WIDTH - 4, geometry.cell_height)
            if layer.is_mtp:
                tint = QColor("#b279a2")
                tint.setAlpha(70)
                painter.fillRect(rect, tint)
            if layer.index in selected_rows:
                highlight = QColor(palette.color(QPalette.ColorRole.Highlight))
                highlight.setAlpha(60)
                painter.fillRect(rect, highlight)
            painter.setPen(text)
            label = f"MTP {layer.index}" if layer.is_mtp else str(layer.index)
            painter.drawText(QRect(4, top, 44, geometry.cell_height),
                             Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, label)
            tag, colour = MIXER_TAGS[layer.mixer]
            if not layer.has_routed_experts and layer.has_dense_ffn and not layer.is_mtp:
                tag = f"{tag} dense" if tag else "dense"
            if tag and geometry.cell_height < 10:
                # Too low for the word: a colour mark keeps the mixer column at every zoom.
                painter.fillRect(QRect(52, top + 1, 10, max(geometry.cell_height - 2, 2)), QColor(colour))
            elif tag:
                painter.setFont(tag_font)
                tag_rect = QRect(52, top + 2, ROW_HEADER_WIDTH - 58, geometry.cell_height - 4)
                tag_colour = QColor(colour)
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(tag_colour)
                painter.drawRoundedRect(QRectF(tag_rect), 3, 3)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.setPen(style.text_colour_on(tag_colour))
                painter.drawText(tag_rect, Qt.AlignmentFlag.AlignCenter,
                                 tag_metrics.elidedText(tag, Qt.TextElideMode.ElideRight,
                                                        tag_rect.width() - 2))
                painter.setFont(font)
        if geometry.strip:
            top = origin.y() + geometry.strip_y
            painter.setPen(text)
            painter.drawText(QRect(4, top, ROW_HEADER_WIDTH - 8, geometry.strip_height),
                             Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                             "non-layer")
        painter.setPen(palette.color(QPalette.ColorRole.Mid))
        painter.drawLine(ROW_HEADER_WIDTH - 2, COLUMN_HEADER_HEIGHT, ROW_HEADER_WIDTH - 2, height)
        painter.restore()

    def _paint_column_header(self, painter: QPainter, palette: QPalette) -> None:
        geometry = self._geometry
        origin = self._origin()
        width = self.viewport().width()
        painter.save()
        painter.setClipRect(QRect(ROW_HEADER_WIDTH, 0, width - ROW_HEADER_WIDTH, COLUMN_HEADER_HEIGHT))
        painter.fillRect(QRect(0, 0, width, COLUMN_HEADER_HEIGHT), palette.color(QPalette.ColorRole.Window))
        font = QFont(self.font())
        font.setPixelSize(10)
        bold = QFont(font)
        bold.setPixelSize(11)
        bold.setBold(True)
        text = palette.color(QPalette.ColorRole.WindowText)
        half = 20  # group titles above, kind labels (up to two lines) below
        selected_kinds = {c[1] for c in self._selection if c[0] is not None}
        for role, first, last in geometry.groups:
            left = origin.x() + geometry.column_x[first]
            right = origin.x() + geometry.column_x[last] + geometry.cell_width
            rect = QRect(left, 2, right - left - 1, half - 4)
            painter.setPen(QPen(palette.color(QPalette.ColorRole.Mid), 1))
            painter.drawLine(left + 1, half - 2, right - 2, half - 2)
            painter.setFont(bold)
            painter.setPen(text)
            title = GROUP_TITLES.get(role, role.value)
            if QFontMetrics(bold).horizontalAdvance(title) > rect.width():
                title = GROUP_SHORT_TITLES.get(role, title)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter,
                             QFontMetrics(bold).elidedText(title, Qt.TextElideMode.ElideRight, rect.width()))
        painter.setFont(font)
        metrics = QFontMetrics(font)
        for column, kind in enumerate(geometry.kinds):
            left = origin.x() + geometry.column_x[column]
            rect = QRect(left, half - 2, geometry.cell_width - 1, COLUMN_HEADER_HEIGHT - half)
            if kind in selected_kinds:
                highlight = QColor(palette.color(QPalette.ColorRole.Highlight))
                highlight.setAlpha(60)
                painter.fillRect(rect, highlight)
            painter.setPen(text)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, wrapped_label(kind_label(kind), metrics,
                                                                               rect.width() - 2))
        painter.restore()
