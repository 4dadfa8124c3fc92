"""A bar of how a device's memory is used: model, context, compute, free."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QSizePolicy, QWidget

from apex_gui.core.fit.placement import Verdict
from apex_gui.core.units import format_size


VERDICT_COLOURS = {
    Verdict.FULL_GPU: QColor("#2f9e44"),
    Verdict.EXPERTS_IN_RAM: QColor("#1c7ed6"),
    Verdict.PARTIAL: QColor("#e8590c"),
    Verdict.CPU_ONLY: QColor("#868e96"),
    Verdict.DOES_NOT_FIT: QColor("#e03131"),
}


class MemoryBar(QWidget):
    """One device's memory: used by others (grey), what the selected tier needs, free."""

    def __init__(self, name: str, total: int, used: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.total = max(total, 1)
        self.used = max(used, 0)
        self.need: int | None = None
        self.setMinimumHeight(38)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._update_tooltip()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt naming
        return QSize(260, 38)

    def set_need(self, need: int | None) -> None:
        self.need = need
        self._update_tooltip()
        self.update()

    def text(self) -> str:
        free = self.total - self.used
        # A card sold as "24GB" has 24 GiB = 25.8 GB: say both, so the name and the number agree.
        text = f"{self.name}: {format_size(free)} free of {format_size(self.total)} ({format_size(self.total, binary=True)})"
        if self.need is not None:
            text += f" · tier needs {format_size(self.need)}"
        return text

    def _update_tooltip(self) -> None:
        self.setToolTip(self.text())

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt naming
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        metrics = painter.fontMetrics()
        label_height = metrics.height()
        painter.setPen(palette.color(QPalette.ColorRole.WindowText))
        painter.drawText(QRectF(0, 0, self.width(), label_height),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                         metrics.elidedText(self.text(), Qt.TextElideMode.ElideRight,
                                            self.width()))
        bar = QRectF(0.5, label_height + 3, self.width() - 1, self.height() - label_height - 4)
        painter.setPen(palette.color(QPalette.ColorRole.Mid))
        painter.setBrush(palette.color(QPalette.ColorRole.Base))
        painter.drawRoundedRect(bar, 3, 3)
        scale = bar.width() / self.total
        used = QRectF(bar.left(), bar.top(), min(self.used * scale, bar.width()), bar.height())
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("#9aa0a6"))
        painter.drawRoundedRect(used, 3, 3)
        if self.need:
            room = self.total - self.used
            colour = VERDICT_COLOURS[Verdict.FULL_GPU] if self.need <= room \
                else VERDICT_COLOURS[Verdict.DOES_NOT_FIT]
            width = min(self.need * scale, bar.width() - used.width())
            painter.setBrush(colour)
            painter.drawRect(QRectF(used.right(), bar.top(), max(width, 1.0), bar.height()))
        painter.end()
