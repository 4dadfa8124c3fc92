"""The precision heatmap: one row per layer, one column per tensor kind, one colour per type.

Painted with QPainter on a scroll area's viewport: a 61x19 grid repaints in a few
milliseconds at any zoom and any device pixel ratio, and the layer and column headers stay
put while the grid scrolls. The view renders a :class:`PrecisionPlan` and sends the user's
edits back through ``plan.set_cells`` (one undo step per stroke or per applied selection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from PySide6.QtCore import QEvent, QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QContextMenuEvent, QKeyEvent, QMouseEvent, QResizeEvent, QWheelEvent
from PySide6.QtWidgets import QAbstractScrollArea, QMenu, QWidget

from apex_gui.core.gguf.model import LayerInfo
from apex_gui.core.gguf.roles import TensorRole, classify_kind, kind_label
from apex_gui.core.gguf.types import PLAN_TYPES, TYPES, ggml_type
from apex_gui.core.plan.bands import cell_band
from apex_gui.core.plan.precision import Cell, PrecisionPlan
from apex_gui.core.plan.profiles import Profile
from apex_gui.views.heatmap.heatmap_geometry import (
    BASE_CELL_HEIGHT, BASE_CELL_WIDTH, COLUMN_HEADER_HEIGHT, CellState, GROUP_GAP,
    HeatmapGeometry, MAX_ZOOM, MIN_ZOOM, ROW_HEADER_WIDTH, STRIP_GAP, cell_order, cells_text,
)
from apex_gui.views.heatmap.heatmap_paint import HeatmapPainting
from apex_gui.views.heatmap.heatmap_tooltips import HeatmapTooltips


class PrecisionHeatmap(HeatmapTooltips, HeatmapPainting, QAbstractScrollArea):
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
        # Sensitivity overlay (apex_gui.views.heatmap.sensitivity_overlay): colours cells by measured
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
        return sorted(self._selection, key=cell_order)

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
        return cell_band(profile, plan.model.n_layer, cell[0], cell[1])

    def select_band(self, cell: Cell, add: bool = False) -> None:
        """Every cell of the same role group in the same band as ``cell``."""
        plan, profile = self._plan, self._active_profile()
        band = self.band_of(cell)
        if plan is None or profile is None or band is None:
            return
        n_layer = plan.model.n_layer
        cells = [c for c in self._states if cell_band(profile, n_layer, c[0], c[1]) == band]
        self.set_selection(cells, add)

    def apply_to_selection(self, type_name: str | None = None) -> bool:
        """Set every selected cell to ``type_name`` (default: the brush) as one undo step."""
        if self._plan is None or not self._selection:
            return False
        chosen = type_name or self.brush_type
        editable = [c for c in self.selection() if self._states[c].editable]
        change = self._plan.set_cells(editable, chosen,
                                      f"set {len(editable)} selected "
                                      f"{'cell' if len(editable) == 1 else 'cells'} to {chosen}")
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
                                          f"paint {cells_text(len(cells))} {self.brush_type}")
            if change is not None:
                self.editMade.emit(change.description)
            self.viewport().update()
        self._stroke = []

    def hovered_cell(self) -> Cell | None:
        """The cell under the mouse, if any."""
        return self._hovered

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


__all__ = [
    "CellState",
    "HeatmapGeometry",
    "PrecisionHeatmap",
]
