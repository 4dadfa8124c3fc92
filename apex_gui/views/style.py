"""Look and feel: light/dark palettes, the bits-per-weight colour scale, icons by name.

The heatmap colours encode bits per weight on viridis, a perceptually uniform sequential
scale that stays ordered for the common colour-vision deficiencies and in greyscale; the
scale is logarithmic because the types people choose between cluster at 2-8 bpw while F16
sits at 16.
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources

from PySide6.QtCore import QByteArray, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication

THEMES = ("system", "light", "dark")

# matplotlib's viridis sampled at nine evenly spaced points (linear interpolation between
# them stays within a just-noticeable difference of the full 256-entry table).
_VIRIDIS = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
            "#6ece58", "#fde725")

BPW_MIN = 1.5  # IQ1_S is 1.56
BPW_MAX = 16.0  # F16/BF16; F32 (32 bpw) clamps to the top colour

# Colours that must read on every viridis cell: markers are drawn in these with a dark
# outline, so they stand out on yellow and on purple alike.
MARKER_FALLBACK = QColor("#ff4f7b")
MARKER_DIFF = QColor("#ff2bd6")
KEPT_GREY = QColor("#8c8c8c")


def _lerp(a: QColor, b: QColor, t: float) -> QColor:
    return QColor.fromRgbF(a.redF() + (b.redF() - a.redF()) * t,
                           a.greenF() + (b.greenF() - a.greenF()) * t,
                           a.blueF() + (b.blueF() - a.blueF()) * t)


@lru_cache(maxsize=512)
def _scale_colour(position_milli: int) -> QColor:
    position = position_milli / 1000
    stops = [QColor(c) for c in _VIRIDIS]
    scaled = position * (len(stops) - 1)
    index = min(int(scaled), len(stops) - 2)
    return _lerp(stops[index], stops[index + 1], scaled - index)


#: (bits per weight, position on the colour scale): the 4-7 bpw range, where most choices
#: are made, gets more of the scale. On a plain log scale Q4_K, Q5_K and Q6_K were three
#: near-identical teals; now they are blue, teal and green.
_BPW_STOPS = ((BPW_MIN, 0.0), (2.5, 0.12), (3.5, 0.25), (4.5, 0.39), (5.5, 0.57), (6.5625, 0.72),
              (8.5, 0.85), (BPW_MAX, 1.0))


def bpw_position(bits_per_weight: float) -> float:
    """Where a bits-per-weight value sits on the colour scale (0 = lowest, 1 = highest)."""
    clamped = min(max(bits_per_weight, BPW_MIN), BPW_MAX)
    for (b0, p0), (b1, p1) in zip(_BPW_STOPS, _BPW_STOPS[1:]):
        if clamped <= b1:
            t = math.log2(clamped / b0) / math.log2(b1 / b0)
            return p0 + (p1 - p0) * t
    return 1.0


def position_colour(position: float) -> QColor:
    """The colour at ``position`` (0..1) of the scale (the legend bar)."""
    return QColor(_scale_colour(round(min(max(position, 0.0), 1.0) * 1000)))


def bpw_colour(bits_per_weight: float) -> QColor:
    """The heatmap colour of a tensor stored at ``bits_per_weight``."""
    return QColor(_bpw_colour(bits_per_weight))  # a copy: callers may change it


@lru_cache(maxsize=128)
def _bpw_colour(bits_per_weight: float) -> QColor:
    # A few dozen distinct values per model, asked for thousands of times per repaint.
    return _scale_colour(round(bpw_position(bits_per_weight) * 1000))


def text_colour_on(background: QColor) -> QColor:
    """Black or white, whichever reads better on ``background`` (relative luminance)."""
    def channel(value: float) -> float:
        return value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4
    luminance = (0.2126 * channel(background.redF()) + 0.7152 * channel(background.greenF())
                 + 0.0722 * channel(background.blueF()))
    return QColor("#000000") if luminance > 0.22 else QColor("#ffffff")


def dark_palette() -> QPalette:
    palette = QPalette()
    # Base (fields, lists, check boxes) is lighter than Window: Fusion outlines check boxes
    # and radio buttons in a darker shade of Window, which vanishes on a darker Base.
    window, base, text = QColor("#232629"), QColor("#2b2f33"), QColor("#eff0f1")
    button, highlight, disabled = QColor("#31363b"), QColor("#3daee9"), QColor("#7f8c8d")
    for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive):
        palette.setColor(group, QPalette.ColorRole.Window, window)
        palette.setColor(group, QPalette.ColorRole.WindowText, text)
        palette.setColor(group, QPalette.ColorRole.Base, base)
        palette.setColor(group, QPalette.ColorRole.AlternateBase, QColor("#32373c"))
        palette.setColor(group, QPalette.ColorRole.ToolTipBase, QColor("#31363b"))
        palette.setColor(group, QPalette.ColorRole.ToolTipText, text)
        palette.setColor(group, QPalette.ColorRole.PlaceholderText, disabled)
        palette.setColor(group, QPalette.ColorRole.Text, text)
        palette.setColor(group, QPalette.ColorRole.Button, button)
        palette.setColor(group, QPalette.ColorRole.ButtonText, text)
        palette.setColor(group, QPalette.ColorRole.BrightText, QColor("#ff5555"))
        palette.setColor(group, QPalette.ColorRole.Highlight, highlight)
        palette.setColor(group, QPalette.ColorRole.HighlightedText, QColor("#000000"))
        palette.setColor(group, QPalette.ColorRole.Link, QColor("#6cc4ff"))
        palette.setColor(group, QPalette.ColorRole.Mid, QColor("#4d5358"))
        palette.setColor(group, QPalette.ColorRole.Midlight, QColor("#3b4045"))
        palette.setColor(group, QPalette.ColorRole.Dark, QColor("#15171a"))
        palette.setColor(group, QPalette.ColorRole.Light, QColor("#4a5056"))
        palette.setColor(group, QPalette.ColorRole.Shadow, QColor("#000000"))
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text,
                 QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Base, window)
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Button, window)
    return palette


def light_palette() -> QPalette:
    palette = QPalette()
    window, base, text = QColor("#f3f4f6"), QColor("#ffffff"), QColor("#1d2125")
    for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive):
        palette.setColor(group, QPalette.ColorRole.Window, window)
        palette.setColor(group, QPalette.ColorRole.WindowText, text)
        palette.setColor(group, QPalette.ColorRole.Base, base)
        palette.setColor(group, QPalette.ColorRole.AlternateBase, QColor("#eceef1"))
        palette.setColor(group, QPalette.ColorRole.ToolTipBase, QColor("#ffffe8"))
        palette.setColor(group, QPalette.ColorRole.ToolTipText, text)
        palette.setColor(group, QPalette.ColorRole.PlaceholderText, QColor("#6b7280"))
        palette.setColor(group, QPalette.ColorRole.Text, text)
        palette.setColor(group, QPalette.ColorRole.Button, QColor("#e6e8eb"))
        palette.setColor(group, QPalette.ColorRole.ButtonText, text)
        palette.setColor(group, QPalette.ColorRole.BrightText, QColor("#c00000"))
        palette.setColor(group, QPalette.ColorRole.Highlight, QColor("#2f74d0"))
        palette.setColor(group, QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
        palette.setColor(group, QPalette.ColorRole.Link, QColor("#1f5fbf"))
        palette.setColor(group, QPalette.ColorRole.Mid, QColor("#b8bcc2"))
        palette.setColor(group, QPalette.ColorRole.Midlight, QColor("#d8dbdf"))
        palette.setColor(group, QPalette.ColorRole.Dark, QColor("#8a9099"))
        palette.setColor(group, QPalette.ColorRole.Light, QColor("#ffffff"))
        palette.setColor(group, QPalette.ColorRole.Shadow, QColor("#5c6370"))
    disabled = QColor("#9aa0a6")
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text,
                 QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return palette


_SYSTEM_PALETTE: QPalette | None = None


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def apply_theme(app: QApplication, theme: str) -> None:
    """Switch the whole application to "light", "dark" or the system's palette."""
    global _SYSTEM_PALETTE
    if theme not in THEMES:
        raise ValueError(f"unknown theme {theme!r}; choose one of {', '.join(THEMES)}")
    if _SYSTEM_PALETTE is None:
        _SYSTEM_PALETTE = QPalette(app.palette())
    # Fusion draws every widget from the palette, so both palettes look finished on every
    # platform (native styles ignore parts of a custom palette).
    app.setStyle("Fusion")
    if theme == "dark":
        palette = dark_palette()
    elif theme == "light":
        palette = light_palette()
    else:
        scheme = QGuiApplication.styleHints().colorScheme()
        palette = dark_palette() if scheme == Qt.ColorScheme.Dark else QPalette(_SYSTEM_PALETTE)
    app.setPalette(palette)
    app.setProperty("apexTheme", theme)


def icon_svg(name: str) -> bytes:
    """The bytes of a bundled SVG icon; unknown names raise KeyError listing the known ones."""
    folder = resources.files("apex_gui.resources") / "icons"
    entry = folder / f"{name}.svg"
    if not entry.is_file():
        known = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".svg"))
        raise KeyError(f"no icon named {name!r}; bundled icons: {', '.join(known)}")
    return entry.read_bytes()


def icon(name: str, colour: QColor | None = None) -> QIcon:
    """A bundled icon, recoloured so it reads on the current palette.

    The SVGs draw with ``currentColor``; it is replaced by ``colour`` (default: the
    palette's window text) so one file serves the light and the dark theme.
    """
    data = icon_svg(name)
    app = QApplication.instance()
    palette = app.palette() if app is not None else None  # type: ignore[union-attr]
    if colour is None:
        colour = (palette.color(QPalette.ColorRole.WindowText) if palette is not None
                  else QColor("#202020"))
    # Disabled actions get the palette's disabled text colour: Qt's generated disabled
    # pixmap of a light icon (dark theme) looks almost the same as the enabled one.
    disabled = (palette.color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.WindowText)
                if palette is not None else QColor("#9aa0a6"))
    result = QIcon()
    for tint, mode in ((colour, QIcon.Mode.Normal), (disabled, QIcon.Mode.Disabled)):
        renderer = QSvgRenderer(QByteArray(data.replace(b"currentColor", tint.name().encode())))
        for size in (16, 24, 32, 48, 64, 128, 256):
            pixmap = QPixmap(size, size)
            pixmap.fill(Qt.GlobalColor.transparent)
            painter = QPainter(pixmap)
            renderer.render(painter)
            painter.end()
            result.addPixmap(pixmap, mode)
    return result
