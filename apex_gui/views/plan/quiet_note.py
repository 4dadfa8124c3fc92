"""Secondary text of the plan panel (a profile's description, the optimizer's note)."""

from __future__ import annotations

from PySide6.QtCore import QEvent
from PySide6.QtGui import QGuiApplication, QPalette, QResizeEvent
from PySide6.QtWidgets import QLabel, QWidget


class QuietNote(QLabel):
    """Secondary text in the theme's placeholder colour, kept right across theme switches.

    A style sheet's ``palette(placeholder-text)`` is resolved once: after a switch to the dark
    theme the note stayed light-theme grey on a dark background."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self._recolour()

    def _recolour(self) -> None:
        wanted = QGuiApplication.palette().color(QPalette.ColorRole.PlaceholderText)
        palette = self.palette()
        if palette.color(QPalette.ColorRole.WindowText) != wanted:  # setPalette re-enters
            palette.setColor(QPalette.ColorRole.WindowText, wanted)
            self.setPalette(palette)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt naming
        # A widget with a palette of its own hears of a theme switch as PaletteChange.
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self._recolour()
        super().changeEvent(event)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        super().setText(text)
        self._fit_height()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt naming
        super().resizeEvent(event)
        self._fit_height()

    def _fit_height(self) -> None:
        """The height the wrapped text needs at this width: in the panel's scroll area a
        longer text kept the shorter one's height and was cut at the top and the bottom."""
        if self.wordWrap() and self.width() > 0:
            held = self.minimumHeight()
            self.setMinimumHeight(0)  # heightForWidth never answers below the minimum
            wanted = self.heightForWidth(self.width())
            self.setMinimumHeight(wanted if wanted > 0 else held)
