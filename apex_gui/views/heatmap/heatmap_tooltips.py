"""Tooltips of the precision map's cells and headers."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QPoint
from PySide6.QtWidgets import QToolTip

from apex_gui.core.gguf.roles import classify_kind, kind_label
from apex_gui.core.gguf.types import ggml_type
from apex_gui.core.plan.precision import Cell
from apex_gui.core.units import format_size
from apex_gui.views.heatmap.heatmap_geometry import (
    GROUP_TITLES, NON_QUANTIZED_REASON, band_name, layer_label,
)


class HeatmapTooltips:
    """Tooltips of the precision map's cells and headers: a part of PrecisionHeatmap, which derives from it."""

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
            f"layer {layer_label(model, cell[0])}, {kind_label(cell[1])}")
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
            lines.append(f"{profile.label} band: {band_name(profile, band[0], band[1])}")
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
