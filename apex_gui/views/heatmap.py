"""The precision heatmap: one row per layer, one column per tensor kind, one colour per type.

Painted with QPainter on a scroll area's viewport: a 61x19 grid repaints in a few
milliseconds at any zoom and any device pixel ratio, and the layer and column headers stay
put while the grid scrolls. The view renders a :class:`PrecisionPlan` and sends the user's
edits back through ``plan.set_cells`` (one undo step per stroke or per applied selection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QEvent, QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (QBrush, QColor, QContextMenuEvent, QFont, QFontMetrics, QKeyEvent,
                           QMouseEvent, QPainter, QPaintEvent, QPalette, QPen,
                           QPolygonF, QResizeEvent, QWheelEvent)
from PySide6.QtWidgets import QAbstractScrollArea, QMenu, QToolTip, QWidget

from apex_gui.core.model import LayerInfo, MixerKind, ModelInfo
from apex_gui.core.plan import Cell, PrecisionPlan, role_group
from apex_gui.core.profiles import Profile
from apex_gui.core.quant_types import PLAN_TYPES, TYPES, ggml_type
from apex_gui.core.roles import TensorRole, classify_kind, kind_label
from apex_gui.core.units import format_size

from . import style

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

_KEPT_LIGHT = style.KEPT_GREY.lighter(135)  # kept-as-is cells, computed once, not per cell
_KEPT_DARK = style.KEPT_GREY.darker(160)
_KEPT_HATCH = style.KEPT_GREY.darker(130)

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


class PrecisionHeatmap(QAbstractScrollArea):
    """Layers x tensor kinds, coloured by bits per weight; paint, select and set types."""

    selectionChanged = Signal(list)  # list[Cell]
    hoveredCellChanged = Signal(object)  # Cell | None
    zoomChanged = Signal(float)
    editMade = Signal(str)  # a description of the edit, for the status bar

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("precisionHeatmap")
        self.setMouseTracking(True)
        self.viewport().setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self._plan: PrecisionPlan | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._band_profile: Profile | None = None
        self._reference: PrecisionPlan | None = None
        self.reference_label = ""
        self._states: dict[Cell, CellState] = {}
        self._selection: set[Cell] = set()
        self._cursor: Cell | None = None
        self._advances: dict[tuple[int, str], int] = {}
        self._stroke: list[Cell] = []
        self._rect_anchor: Cell | None = None
        self._hovered: Cell | None = None
        self._zoom = 1.0
        self.brush_type = "Q4_K"
        self.tool = "paint"  # "paint": click/drag sets types; "select": click/drag selects
        self._geometry = HeatmapGeometry([], [], [], self._zoom)
        # Sensitivity overlay (apex_gui.views.sensitivity_overlay): colours cells by measured
        # damage instead of bits per weight while set.
        self.overlay: Any = None

    # --- model and plan ---------------------------------------------------------------
    def set_overlay(self, overlay: Any) -> None:
        """Colour cells by measured damage (a SensitivityOverlay), or by type (None)."""
        self.overlay = overlay
        self.viewport().update()

    @property
    def plan(self) -> PrecisionPlan | None:
        return self._plan

    @property
    def geometry_model(self) -> HeatmapGeometry:
        return self._geometry

    def set_plan(self, plan: PrecisionPlan | None, band_profile: Profile | None = None) -> None:
        """Show ``plan``; ``band_profile`` draws band lines when the plan has no profile."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        same_model = plan is not None and self._plan is not None and plan.model is self._plan.model
        self._plan = plan
        self._band_profile = band_profile
        if not same_model:
            self._selection.clear()
            self._reference = None  # a reference belongs to the model it was made for
            self.reference_label = ""
        if plan is not None:
            self._unsubscribe = plan.subscribe(self._on_plan_changed)
        self._relayout()
        self._refresh_states()
        if not same_model:
            self.selectionChanged.emit([])

    def set_reference(self, reference: PrecisionPlan | None, label: str = "") -> None:
        """Diff mode: outline cells whose effective type differs from ``reference``."""
        if reference is None and self._reference is None:
            return
        self._reference = reference
        self.reference_label = label if reference is not None else ""
        self._refresh_states()

    @property
    def reference(self) -> PrecisionPlan | None:
        return self._reference

    def detach(self) -> None:
        """Stop following the plan (the window closes or drops the model)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_plan_changed(self, _change: object) -> None:
        self._refresh_states()

    def _relayout(self) -> None:
        plan = self._plan
        if plan is None:
            self._geometry = HeatmapGeometry([], [], [], self._zoom)
        else:
            model = plan.model
            strip = sorted((c for c in plan.cells() if c[0] is None),
                           key=lambda c: (0 if c[1] == "token_embd" else 2 if c[1] == "output" else 1, c[1]))
            self._geometry = HeatmapGeometry(list(model.layers), list(model.kinds), strip,
                                             self._zoom)
        self._update_scrollbars()
        self.viewport().update()

    def _refresh_states(self) -> None:
        plan = self._plan
        states: dict[Cell, CellState] = {}
        if plan is not None:
            reference = self._reference
            for cell in plan.cells():
                planned = plan.cell_type(*cell) or "?"
                effective = plan.cell_effective_type(*cell) or planned
                bpw = ggml_type(effective).bits_per_weight if effective in TYPES else 16.0
                ref = reference.cell_effective_type(*cell) if reference is not None else None
                states[cell] = CellState(planned, effective, plan.cell_editable(*cell), bpw, ref)
        self._states = states
        self.viewport().update()

    def cell_state(self, cell: Cell) -> CellState | None:
        return self._states.get(cell)

    def differing_cells(self) -> list[Cell]:
        return [cell for cell, state in self._states.items() if state.differs]

    # --- zoom and scrolling -------------------------------------------------------------
    @property
    def zoom(self) -> float:
        return self._zoom

    def set_zoom(self, zoom: float) -> None:
        zoom = min(max(zoom, MIN_ZOOM), MAX_ZOOM)
        if abs(zoom - self._zoom) < 1e-3:
            return
        self._zoom = zoom
        self._relayout()
        self.zoomChanged.emit(zoom)

    def zoom_in(self) -> None:
        self.set_zoom(self._zoom * 1.25)

    def zoom_out(self) -> None:
        self.set_zoom(self._zoom / 1.25)

    def zoom_to_fit(self) -> None:
        """Fit every layer (and the non-layer strip) in the visible height; cells too low
        for their type name show colour only, the tooltip and status bar still name it."""
        rows = max(len(self._geometry.rows), 1)
        strip = max(self._geometry.strip_height, 20) if self._geometry.strip else 0
        available = self.viewport().height() - COLUMN_HEADER_HEIGHT - 4
        if available - STRIP_GAP - strip >= rows * 6:
            available -= STRIP_GAP + strip  # room for the non-layer strip too (else it scrolls)
        # Rows are whole pixels (rounded): aim a little low so the last row is not cut.
        zoom = (available / rows - 0.5) / BASE_CELL_HEIGHT
        width_zoom = (self.viewport().width() - ROW_HEADER_WIDTH - 8) / max(
            len(self._geometry.kinds) * BASE_CELL_WIDTH + GROUP_GAP * len(self._geometry.groups), 1)
        # Narrow windows do not shrink rows below what the height allows (columns scroll).
        self.set_zoom(max(min(zoom, max(width_zoom, 0.8), 2.0), MIN_ZOOM))

    def _update_scrollbars(self) -> None:
        geometry = self._geometry
        visible_w = self.viewport().width() - ROW_HEADER_WIDTH
        visible_h = self.viewport().height() - COLUMN_HEADER_HEIGHT
        self.horizontalScrollBar().setRange(0, max(0, geometry.content_width - visible_w))
        self.horizontalScrollBar().setPageStep(max(visible_w, 1))
        self.horizontalScrollBar().setSingleStep(geometry.cell_width)
        self.verticalScrollBar().setRange(0, max(0, geometry.content_height - visible_h))
        self.verticalScrollBar().setPageStep(max(visible_h, 1))
        self.verticalScrollBar().setSingleStep(geometry.cell_height)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._update_scrollbars()

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        self.viewport().update()

    def sizeHint(self) -> QSize:
        return QSize(ROW_HEADER_WIDTH + self._geometry.content_width + 24,
                     COLUMN_HEADER_HEIGHT + min(self._geometry.content_height, 700) + 8)

    def wheelEvent(self, event: QWheelEvent) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.zoom_in() if event.angleDelta().y() > 0 else self.zoom_out()
            event.accept()
            return
        super().wheelEvent(event)

    # --- coordinates ------------------------------------------------------------------
    def _origin(self) -> QPoint:
        return QPoint(ROW_HEADER_WIDTH - self.horizontalScrollBar().value(),
                      COLUMN_HEADER_HEIGHT - self.verticalScrollBar().value())

    def cell_rect(self, cell: Cell) -> QRect | None:
        """The cell's rectangle in viewport coordinates (None when the model lacks it)."""
        rect = self._geometry.cell_rect(cell)
        return rect.translated(self._origin()) if rect is not None else None

    def cell_at(self, pos: QPoint) -> Cell | None:
        if pos.x() < ROW_HEADER_WIDTH or pos.y() < COLUMN_HEADER_HEIGHT:
            return None
        origin = self._origin()
        cell = self._geometry.cell_at(pos.x() - origin.x(), pos.y() - origin.y())
        return cell if cell in self._states else None

    def ensure_visible(self, cell: Cell) -> None:
        rect = self._geometry.cell_rect(cell)
        if rect is None:
            return
        vbar = self.verticalScrollBar()
        visible_h = self.viewport().height() - COLUMN_HEADER_HEIGHT
        if rect.top() < vbar.value():
            vbar.setValue(rect.top())
        elif rect.bottom() > vbar.value() + visible_h:
            vbar.setValue(rect.bottom() - visible_h + 1)

    def _row_header_layer(self, pos: QPoint) -> LayerInfo | None:
        if pos.x() >= ROW_HEADER_WIDTH or pos.y() < COLUMN_HEADER_HEIGHT:
            return None
        return self._geometry.row_at(pos.y() - self._origin().y())

    def _column_header_kind(self, pos: QPoint) -> tuple[str | None, TensorRole | None]:
        """(kind, None) on a kind label; (None, role) on a group title."""
        if pos.y() >= COLUMN_HEADER_HEIGHT or pos.x() < ROW_HEADER_WIDTH:
            return None, None
        x = pos.x() - self._origin().x()
        if pos.y() < 20:
            for role, first, last in self._geometry.groups:
                left = self._geometry.column_x[first]
                right = self._geometry.column_x[last] + self._geometry.cell_width
                if left <= x < right:
                    return None, role
            return None, None
        return self._geometry.column_at(x), None

    # --- selection ----------------------------------------------------------------------
    def selection(self) -> list[Cell]:
        return sorted(self._selection, key=_cell_order)

    def set_selection(self, cells: Iterable[Cell], add: bool = False) -> None:
        chosen = {c for c in cells if c in self._states}
        self._selection = (self._selection | chosen) if add else chosen
        self.viewport().update()
        self.selectionChanged.emit(self.selection())

    def clear_selection(self) -> None:
        self.set_selection([])

    def select_row(self, layer: int | None, add: bool = False) -> None:
        if self._plan is not None:
            self.set_selection(self._plan.row_cells(layer), add)

    def select_column(self, kind: str, add: bool = False) -> None:
        if self._plan is not None:
            self.set_selection(self._plan.column_cells(kind), add)

    def select_group(self, role: TensorRole, add: bool = False) -> None:
        if self._plan is None:
            return
        kinds = [k for k in self._geometry.kinds if classify_kind(k, True) is role]
        self.set_selection([c for k in kinds for c in self._plan.column_cells(k)], add)

    def select_rectangle(self, corner_a: Cell, corner_b: Cell, add: bool = False) -> None:
        """Every cell between two corners (layers by row position, kinds by column)."""
        if self._plan is None or corner_a[0] is None or corner_b[0] is None:
            return
        rows = self._geometry.row_index
        columns = self._geometry.column_index
        r0, r1 = sorted((rows[corner_a[0]], rows[corner_b[0]]))
        c0, c1 = sorted((columns[corner_a[1]], columns[corner_b[1]]))
        layers = [self._geometry.rows[r].index for r in range(r0, r1 + 1)]
        kinds = self._geometry.kinds[c0:c1 + 1]
        self.set_selection(self._plan.rectangle_cells(layers, kinds), add)

    def band_of(self, cell: Cell) -> tuple[str, int] | None:
        """(role group, band index) of a cell under the profile in use, if it has one."""
        plan, profile = self._plan, self._active_profile()
        if plan is None or profile is None or cell[0] is None:
            return None
        group = role_group(classify_kind(cell[1], True))
        if group is None or cell[0] >= plan.model.n_layer:
            return None
        return group, profile.group(group).band_index(cell[0], plan.model.n_layer)

    def select_band(self, cell: Cell, add: bool = False) -> None:
        """Every cell of the same role group in the same band as ``cell``."""
        plan, profile = self._plan, self._active_profile()
        band = self.band_of(cell)
        if plan is None or profile is None or band is None:
            return
        group, index = band
        n_layer = plan.model.n_layer
        banded = profile.group(group)
        cells = [c for c in self._states if c[0] is not None and c[0] < n_layer
                 and role_group(classify_kind(c[1], True)) == group
                 and banded.band_index(c[0], n_layer) == index]
        self.set_selection(cells, add)

    def apply_to_selection(self, type_name: str | None = None) -> bool:
        """Set every selected cell to ``type_name`` (default: the brush) as one undo step."""
        if self._plan is None or not self._selection:
            return False
        chosen = type_name or self.brush_type
        editable = [c for c in self.selection() if self._states[c].editable]
        change = self._plan.set_cells(editable, chosen,
                                      f"set {len(editable)} selected cells to {chosen}")
        if change is not None:
            self.editMade.emit(change.description)
        return change is not None

    def _active_profile(self) -> Profile | None:
        if self._plan is not None and self._plan.profile is not None:
            return self._plan.profile
        return self._band_profile

    # --- mouse and keys -----------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        self.setFocus()
        if self._plan is None:
            return
        pos = event.position().toPoint()
        add = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        if event.button() != Qt.MouseButton.LeftButton:
            return
        layer = self._row_header_layer(pos)
        if layer is not None:
            self.select_row(layer.index, add)
            return
        if self._geometry.strip and pos.x() < ROW_HEADER_WIDTH:
            origin_y = self._origin().y()
            if self._geometry.strip_y <= pos.y() - origin_y < self._geometry.strip_y + self._geometry.strip_height:
                self.select_row(None, add)
                return
        kind, role = self._column_header_kind(pos)
        if kind is not None:
            self.select_column(kind, add)
            return
        if role is not None:
            self.select_group(role, add)
            return
        cell = self.cell_at(pos)
        if cell is None:
            if not add:
                self.clear_selection()
            return
        modifiers = event.modifiers()
        if modifiers & Qt.KeyboardModifier.AltModifier:
            self.select_band(cell, add)
        elif modifiers & Qt.KeyboardModifier.ShiftModifier or self.tool == "select":
            self._rect_anchor = cell
            self.select_rectangle(cell, cell, add) if cell[0] is not None else \
                self.set_selection([cell], add)
        else:
            self._stroke = [cell] if self._states[cell].editable else []
            self.viewport().update()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position().toPoint()
        cell = self.cell_at(pos)
        if cell != self._hovered:
            self._hovered = cell
            self.hoveredCellChanged.emit(cell)
        if not event.buttons() & Qt.MouseButton.LeftButton or cell is None:
            return
        if self._rect_anchor is not None:
            add = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
            if cell[0] is not None and self._rect_anchor[0] is not None:
                self.select_rectangle(self._rect_anchor, cell, add)
        elif self._stroke is not None and (self._stroke or event.buttons()):
            if cell not in self._stroke and self._states[cell].editable:
                self._stroke.append(cell)
                self.viewport().update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        self._rect_anchor = None
        if self._stroke and self._plan is not None:
            cells, self._stroke = self._stroke, []
            change = self._plan.set_cells(cells, self.brush_type,
                                          f"paint {len(cells)} cells {self.brush_type}")
            if change is not None:
                self.editMade.emit(change.description)
            self.viewport().update()
        self._stroke = []

    def leaveEvent(self, event: QEvent) -> None:
        if self._hovered is not None:
            self._hovered = None
            self.hoveredCellChanged.emit(None)
        super().leaveEvent(event)

    ARROWS = {Qt.Key.Key_Up: (-1, 0), Qt.Key.Key_Down: (1, 0), Qt.Key.Key_Left: (0, -1),
              Qt.Key.Key_Right: (0, 1)}

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key == Qt.Key.Key_Escape and self._selection:
            self.clear_selection()
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._selection:
            self.apply_to_selection()
        elif key in self.ARROWS and self._geometry.rows and self._geometry.kinds:
            add = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
            self.move_cursor(*self.ARROWS[key], add)  # type: ignore[index]
        else:
            super().keyPressEvent(event)

    def cursor_cell(self) -> Cell | None:
        """The keyboard cursor: where arrow keys move from (the last cell they reached)."""
        return self._cursor

    def move_cursor(self, rows: int, columns: int, add: bool = False) -> None:
        """Move the keyboard cursor one cell; it selects that cell (Shift: adds it)."""
        geometry = self._geometry
        start = self._cursor if self._cursor in self._states and self._cursor[0] is not None else None
        if start is None:
            grid = [c for c in self.selection() if c[0] is not None]
            start = grid[0] if grid else (geometry.rows[0].index, geometry.kinds[0])
            rows, columns = (0, 0) if not grid else (rows, columns)
        row = min(max(geometry.row_index[start[0]] + rows, 0), len(geometry.rows) - 1)
        column = min(max(geometry.column_index[start[1]] + columns, 0), len(geometry.kinds) - 1)
        cell = (geometry.rows[row].index, geometry.kinds[column])
        self._cursor = cell
        self.set_selection([cell], add)
        self.ensure_visible(cell)

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        cell = self.cell_at(event.pos())
        if cell is None or self._plan is None:
            return
        if cell not in self._selection:
            self.set_selection([cell])
        menu = QMenu(self)
        set_menu = menu.addMenu(f"Set {len(self._selection)} cell(s) to")
        for type_name in PLAN_TYPES:
            action = set_menu.addAction(f"{type_name}  ({ggml_type(type_name).bits_per_weight:.2f} bpw)")
            action.triggered.connect(lambda _=False, t=type_name: self.apply_to_selection(t))
        menu.addSeparator()
        if cell[0] is not None:
            menu.addAction(f"Select layer {cell[0]}", lambda: self.select_row(cell[0]))
            menu.addAction(f"Select column {kind_label(cell[1])}", lambda: self.select_column(cell[1]))
            band = self.band_of(cell)
            if band is not None:
                menu.addAction(f"Select this band ({band[0].replace('_', ' ')})",
                               lambda: self.select_band(cell))
        menu.addAction("Clear selection", self.clear_selection)
        menu.exec(event.globalPos())

    def viewportEvent(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip:
            pos = event.pos()  # type: ignore[attr-defined]
            cell = self.cell_at(pos)
            text = self.tooltip_text(cell) if cell is not None else self._header_tooltip(pos)
            if text:
                QToolTip.showText(event.globalPos(), text, self.viewport())  # type: ignore[attr-defined]
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)

    # --- tooltips -----------------------------------------------------------------------
    def tooltip_text(self, cell: Cell) -> str:
        """Tensor names, shape, planned and effective type, bytes and bpw of one cell (HTML)."""
        plan = self._plan
        state = self._states.get(cell)
        if plan is None or state is None:
            return ""
        names = plan.cell_tensors(*cell)
        model = plan.model
        first = model.tensor(names[0])
        where = "non-layer tensor" if cell[0] is None else (
            f"layer {_layer_label(model, cell[0])}, {kind_label(cell[1])}")
        lines = [f"<b>{where}</b> <span>({first.role.value})</span>"]
        for name in names:
            tensor = model.tensor(name)
            shape = " x ".join(str(d) for d in tensor.shape)
            lines.append(f"<tt>{name}</tt> &nbsp;[{shape}]")
        nbytes = plan.cell_bytes(*cell)
        params = sum(model.tensor(n).n_elements for n in names)
        if state.editable:
            lines.append(f"planned: <b>{state.planned}</b>")
            if state.falls_back:
                lines.append(f"effective: <b>{state.effective}</b> &mdash; rows of "
                             f"{first.row_length} weights do not divide {state.planned}'s block "
                             f"of {ggml_type(state.planned).block_size}; llama-quantize falls back")
            else:
                lines.append(f"effective: {state.effective}")
        else:
            reason = NON_QUANTIZED_REASON.get(first.role, "this tensor")
            lines.append(f"kept <b>{state.effective}</b>: llama-quantize never quantizes {reason}")
        lines.append(f"size: {format_size(nbytes)} ({nbytes:,} bytes)")
        lines.append(f"bits per weight: {nbytes * 8 / params:.3f}" if params else "")
        band = self.band_of(cell)
        if band is not None:
            profile = self._active_profile()
            assert profile is not None
            lines.append(f"{profile.label} band: {_band_name(profile, band[0], band[1])}")
        if state.reference is not None:
            verdict = "differs" if state.differs else "same"
            lines.append(f"{self.reference_label or 'reference'}: <b>{state.reference}</b> ({verdict})")
        if self.overlay is not None and self.overlay.plan is plan and state.editable:
            lines.extend(self.overlay.tooltip_lines(cell))
        return "<br>".join(line for line in lines if line)

    def _header_tooltip(self, pos: QPoint) -> str:
        layer = self._row_header_layer(pos)
        if layer is not None:
            kind = "MTP / nextn block" if layer.is_mtp else f"layer {layer.index}"
            extra = []
            if layer.has_dense_ffn:
                extra.append("dense FFN")
            if layer.has_routed_experts:
                extra.append("routed experts")
            if layer.has_shared_experts:
                extra.append("shared expert")
            rule = ""
            profile = self._plan.profile if self._plan is not None else None
            if layer.is_mtp and profile is not None:
                # Band positions count ordinary blocks; say what the profile does with MTP.
                rule = ("<br>Profile rule: treated as one more edge layer" if profile.mtp == "edge"
                        else f"<br>Profile rule: every tensor at {profile.mtp}")
            return (f"<b>{kind}</b>: {layer.mixer.value}; {', '.join(extra) or 'no FFN'}{rule}"
                    "<br>Click to select the row, Ctrl+click to add it")
        kind, role = self._column_header_kind(pos)
        if kind is not None:
            return f"<tt>{kind}</tt> ({classify_kind(kind, True).value})<br>Click to select the column"
        if role is not None:
            return f"{GROUP_TITLES.get(role, role.value)}<br>Click to select every column of the group"
        return ""

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
            base = _KEPT_DARK if dark else _KEPT_LIGHT
            painter.fillRect(inner, base)
            painter.fillRect(inner, QBrush(style.KEPT_GREY if dark else _KEPT_HATCH,
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
            group = role_group(classify_kind(kind, True))
            if group is None:
                continue
            banded = profile.group(group)
            left = geometry.column_x[column]
            right = left + geometry.cell_width - 1
            for row in range(max(first_row, 1), last_row):
                layer = geometry.rows[row]
                previous = geometry.rows[row - 1]
                if layer.is_mtp or previous.is_mtp or layer.index >= n_layer:
                    continue
                if (layer.index, kind) not in self._states and (previous.index, kind) not in self._states:
                    continue
                if banded.band_index(layer.index, n_layer) != banded.band_index(previous.index, n_layer):
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
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, _wrapped_label(kind_label(kind), metrics,
                                                                               rect.width() - 2))
        painter.restore()


def _wrapped_label(label: str, metrics: QFontMetrics, width: int) -> str:
    """A column label on up to two lines, broken after "_" or "." (``ffn_gate_inp``)."""
    if metrics.horizontalAdvance(label) <= width:
        return label
    for index in range(len(label) - 1, 0, -1):
        if label[index - 1] in "_. " and metrics.horizontalAdvance(label[:index]) <= width:
            first, rest = label[:index].rstrip(" "), label[index:]
            return f"{first}\n{metrics.elidedText(rest, Qt.TextElideMode.ElideRight, width)}"
    return metrics.elidedText(label, Qt.TextElideMode.ElideRight, width)


def _cell_order(cell: Cell) -> tuple[int, str]:
    return (-1 if cell[0] is None else cell[0], cell[1])


def _layer_label(model: ModelInfo, index: int) -> str:
    for layer in model.layers:
        if layer.index == index:
            return layer.label
    return str(index)


def _band_name(profile: Profile, group: str, index: int) -> str:
    banded = profile.group(group)
    if index >= len(banded.bands):
        return f"middle ({banded.middle})"
    band = banded.bands[index]
    names = ["edge", "near-edge"]
    name = names[index] if index < len(names) else f"band {index + 1}"
    return f"{name}: first {band.first} / last {band.last} layers ({band.type_name})"


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


__all__ = ["BitsLegend", "CellState", "HeatmapGeometry", "PrecisionHeatmap"]
