"""Q4_K, Q5_K and Q6_K cells are told apart at a glance (they were three near-identical teals)."""

from __future__ import annotations

from apex_gui.core.gguf.types import ggml_type
from apex_gui.views import style


def _distance(a: str, b: str) -> int:
    ca = style.bpw_colour(ggml_type(a).bits_per_weight)
    cb = style.bpw_colour(ggml_type(b).bits_per_weight)
    return sum(abs(x - y) for x, y in zip(ca.getRgb()[:3], cb.getRgb()[:3]))


def test_neighbouring_k_types_differ_visibly() -> None:
    for a, b in (("Q4_K", "Q5_K"), ("Q5_K", "Q6_K"), ("Q6_K", "Q8_0"), ("Q3_K", "Q4_K")):
        # On the plain log scale these pairs were 24-55 apart (RGB sum): at least 50 now.
        assert _distance(a, b) >= 50, f"{a} and {b} look alike"


def test_the_scale_is_monotonic_and_spans_the_palette() -> None:
    values = [1.5, 2.0, 2.56, 3.44, 4.5, 5.5, 6.5625, 8.5, 12.0, 16.0, 32.0]
    positions = [style.bpw_position(v) for v in values]
    assert positions == sorted(positions)
    assert positions[0] == 0.0 and positions[-1] == 1.0


def test_the_legend_bar_shows_each_marked_type_in_its_cell_colour(qtbot) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtGui import QColor

    from apex_gui.views.heatmap.bits_legend import BitsLegend

    legend = BitsLegend()
    qtbot.addWidget(legend)
    legend.resize(1200, 60)
    legend.show()
    image = legend.grab().toImage()
    ratio = image.devicePixelRatio()
    width = 1200 - 470 - 20 - 10  # the bar, as BitsLegend lays it out beside its keys
    for type_name in ("Q4_K", "Q6_K"):
        bpw = ggml_type(type_name).bits_per_weight
        x = 10 + round(style.bpw_position(bpw) * (width - 1))
        shown = QColor(image.pixel(int(x * ratio), int(12 * ratio)))
        expected = style.bpw_colour(bpw)
        assert sum(abs(a - b) for a, b in zip(shown.getRgb()[:3], expected.getRgb()[:3])) < 20, type_name
