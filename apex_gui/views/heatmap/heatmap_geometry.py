"""The precision map's layout: rows, columns, cell rectangles and what each cell shows."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QFontMetrics

from apex_gui.core.gguf.model import LayerInfo, MixerKind, ModelInfo
from apex_gui.core.gguf.roles import TensorRole, classify_kind
from apex_gui.core.plan.precision import Cell
from apex_gui.core.plan.profiles import Profile
from apex_gui.views import style


ROW_HEADER_WIDTH = 124
COLUMN_HEADER_HEIGHT = 50
BASE_CELL_WIDTH = 58
BASE_CELL_HEIGHT = 18
GROUP_GAP = 6  # between role groups, so the groups read as blocks
STRIP_GAP = 16  # between the last layer and the non-layer strip
#: 0.2 gives 4 px rows: a 60-layer model fits a 700 px window ("Fit all layers" means all)
MIN_ZOOM, MAX_ZOOM = 0.2, 3.0

GROUP_TITLES: dict[TensorRole, str] = {
    TensorRole.ROUTED_EXPERT: "Routed experts",
    TensorRole.SHARED_EXPERT: "Shared expert",
    TensorRole.ATTENTION: "Attention",
    TensorRole.LINEAR_ATTENTION: "Linear attn / SSM",
    TensorRole.SHORT_CONV: "Short conv",
    TensorRole.DENSE_FFN: "Dense FFN",
    TensorRole.MTP: "MTP / nextn",
    TensorRole.ROUTER: "Router",
    TensorRole.OTHER: "Other",
}

MIXER_TAGS: dict[MixerKind, tuple[str, str]] = {
    MixerKind.FULL_ATTENTION: ("attn", "#4c78a8"),
    MixerKind.SLIDING_WINDOW: ("SWA", "#54a24b"),
    MixerKind.MLA: ("MLA", "#b279a2"),
    MixerKind.LINEAR_ATTENTION: ("linear", "#72b7b2"),  # not red: nothing is wrong with it
    MixerKind.SHORT_CONV: ("conv", "#f58518"),
    MixerKind.NONE: ("", "#888888"),
}

KEPT_LIGHT = style.KEPT_GREY.lighter(135)  # kept-as-is cells, computed once, not per cell
KEPT_DARK = style.KEPT_GREY.darker(160)
KEPT_HATCH = style.KEPT_GREY.darker(130)

GROUP_SHORT_TITLES: dict[TensorRole, str] = {
    TensorRole.ROUTED_EXPERT: "Routed", TensorRole.SHARED_EXPERT: "Shared",
    TensorRole.ATTENTION: "Attn", TensorRole.LINEAR_ATTENTION: "SSM",
    TensorRole.SHORT_CONV: "Conv", TensorRole.DENSE_FFN: "Dense", TensorRole.MTP: "MTP",
    TensorRole.ROUTER: "Rtr", TensorRole.OTHER: "Other",
}

NON_QUANTIZED_REASON = {
    TensorRole.ROUTER: "routers",
    TensorRole.NORM: "norms",
    TensorRole.LINEAR_ATTENTION: "SSM conv kernels and decay tensors",
    TensorRole.SHORT_CONV: "short-convolution kernels",
}


@dataclass(frozen=True)
class CellState:
    """What one cell shows, computed once per plan change so painting stays cheap."""

    planned: str
    effective: str
    editable: bool
    bits_per_weight: float
    reference: str | None  # the diff reference's effective type, when diff mode is on

    @property
    def falls_back(self) -> bool:
        return self.editable and self.planned != self.effective

    @property
    def differs(self) -> bool:
        return self.reference is not None and self.reference != self.effective


class HeatmapGeometry:
    """Where every row, column and cell sits, in content coordinates (before scrolling)."""

    def __init__(self, rows: list[LayerInfo], kinds: list[str], strip: list[Cell],
                 zoom: float) -> None:
        self.rows = rows
        self.kinds = kinds
        self.strip = strip
        self.zoom = zoom
        # Narrower than ~50 px a type name no longer fits: zooming out shrinks rows faster.
        self.cell_width = max(50, round(BASE_CELL_WIDTH * min(zoom, 1.0) + BASE_CELL_WIDTH * max(zoom - 1.0, 0) * 0.6))
        self.cell_height = max(4, round(BASE_CELL_HEIGHT * zoom))
        self.column_x: list[int] = []
        self.groups: list[tuple[TensorRole, int, int]] = []  # role, first column, last column
        x = 0
        previous: TensorRole | None = None
        for index, kind in enumerate(kinds):
            role = classify_kind(kind, True)
            if previous is not None and role is not previous:
                x += GROUP_GAP
                self.groups.append((role, index, index))
            elif previous is None:
                self.groups.append((role, index, index))
            else:
                first = self.groups[-1][1]
                self.groups[-1] = (role, first, index)
            self.column_x.append(x)
            x += self.cell_width
            previous = role
        self.grid_width = x
        self.row_index = {layer.index: position for position, layer in enumerate(rows)}
        self.column_index = {kind: position for position, kind in enumerate(kinds)}
        self.grid_height = len(rows) * self.cell_height
        self.strip_y = self.grid_height + STRIP_GAP
        self.strip_height = max(self.cell_height, 20)
        self.strip_cell_width = max(2 * self.cell_width, 150)
        strip_width = len(strip) * (self.strip_cell_width + GROUP_GAP)
        self.content_width = max(self.grid_width, strip_width)
        self.content_height = self.strip_y + (self.strip_height if strip else 0) + 4

    def cell_rect(self, cell: Cell) -> QRect | None:
        layer, kind = cell
        if layer is None:
            if cell not in self.strip:
                return None
            position = self.strip.index(cell)
            return QRect(position * (self.strip_cell_width + GROUP_GAP), self.strip_y,
                         self.strip_cell_width, self.strip_height)
        row = self.row_index.get(layer)
        column = self.column_index.get(kind)
        if row is None or column is None:
            return None
        return QRect(self.column_x[column], row * self.cell_height, self.cell_width,
                     self.cell_height)

    def column_at(self, x: int) -> str | None:
        for index, left in enumerate(self.column_x):
            if left <= x < left + self.cell_width:
                return self.kinds[index]
        return None

    def row_at(self, y: int) -> LayerInfo | None:
        if 0 <= y < self.grid_height:
            return self.rows[y // self.cell_height]
        return None

    def cell_at(self, x: int, y: int) -> Cell | None:
        if self.strip and self.strip_y <= y < self.strip_y + self.strip_height:
            slot = x // (self.strip_cell_width + GROUP_GAP)
            if 0 <= slot < len(self.strip) and x % (self.strip_cell_width + GROUP_GAP) < self.strip_cell_width:
                return self.strip[slot]
            return None
        layer = self.row_at(y)
        kind = self.column_at(x)
        if layer is None or kind is None:
            return None
        return (layer.index, kind)


def wrapped_label(label: str, metrics: QFontMetrics, width: int) -> str:
    """A column label on up to two lines, broken after "_" or "." (``ffn_gate_inp``)."""
    if metrics.horizontalAdvance(label) <= width:
        return label
    for index in range(len(label) - 1, 0, -1):
        if label[index - 1] in "_. " and metrics.horizontalAdvance(label[:index]) <= width:
            first, rest = label[:index].rstrip(" "), label[index:]
            return f"{first}\n{metrics.elidedText(rest, Qt.TextElideMode.ElideRight, width)}"
    return metrics.elidedText(label, Qt.TextElideMode.ElideRight, width)


def cells_text(count: int) -> str:
    """``1 cell``, ``3 cells``: how edits and selections are counted in messages."""
    return f"{count} cell" if count == 1 else f"{count} cells"


def cell_order(cell: Cell) -> tuple[int, str]:
    return (-1 if cell[0] is None else cell[0], cell[1])


def layer_label(model: ModelInfo, index: int) -> str:
    for layer in model.layers:
        if layer.index == index:
            return layer.label
    return str(index)


def band_name(profile: Profile, group: str, index: int) -> str:
    banded = profile.group(group)
    if index >= len(banded.bands):
        return f"middle ({banded.middle})"
    band = banded.bands[index]
    names = ["edge", "near-edge"]
    name = names[index] if index < len(names) else f"band {index + 1}"
    return f"{name}: first {band.first} / last {band.last} layers ({band.type_name})"
