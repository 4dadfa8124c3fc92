"""Results: every measured quant from the run history, as a table and as plots against size.

The plots are the ones the APEX cards publish -- perplexity against size, KL divergence
against size, generation speed against size -- drawn from the runs of this machine, with the
full-precision reference and the uniform baselines for scale. Baselines that were only sized
(``llama-quantize --dry-run``) have no measured value: they appear as dashed vertical lines
labelled "size only", never as invented points.

The rows come from :func:`apex_gui.core.report.results.collect_results`; the panel adds nothing to
them. Export: CSV, Markdown and the model card (through :class:`PublishDialog`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import (QAbstractTableModel, QEvent, QModelIndex, QPersistentModelIndex, Qt,
                            Signal)
from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QHBoxLayout, QHeaderView,
                               QLabel, QPushButton, QSplitter, QTableView, QTabWidget,
                               QVBoxLayout, QWidget)

from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.report.results import (
    QuantResult, collect_results, results_to_csv, results_to_markdown,
)
from apex_gui.core.units import format_size_figure, size_unit
from apex_gui.views.results.publish_dialog import PublishDialog
from apex_gui.views.results.quality_curve import draw_quality_curve

__all__ = ["ResultsPanel", "ResultsTableModel", "ResultsPlot"]

ModelIndex = QModelIndex | QPersistentModelIndex

# Colours that read on light and dark backgrounds alike.
KIND_COLOURS = {"apex": QColor("#2f9e6e"), "reference": QColor("#8c8c8c"),
                "other": QColor("#e08a1e"), "baseline": QColor("#c04a8c")}


def _measure_text(value: Any, digits: int) -> str:
    """``value ± error`` (see :meth:`Measure.format`); "" where nothing was measured."""
    return "" if value is None else value.format(digits)


NO_RESULT = "no result"


class ResultsTableModel(QAbstractTableModel):
    """The comparison table: fixed columns, then one per accuracy benchmark and speed test."""

    FIXED = ("Quantization", "Size (GB)", "PPL", "KL mean", "KL max", "KL 99.9%", "Same top %")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[QuantResult] = []
        self._accuracy: list[str] = []
        self._speed: list[str] = []
        self.size_unit, self.size_scale = size_unit(None)

    def set_rows(self, rows: Sequence[QuantResult]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.size_unit, self.size_scale = size_unit(
            max((r.size_bytes for r in self.rows if r.size_bytes is not None), default=None))
        self._accuracy = sorted({n for r in self.rows for n in r.accuracy})
        self._speed = sorted({t for r in self.rows for t in r.speed if "+" not in t},
                             key=lambda t: (not t.startswith("pp"), t))
        self.endResetModel()

    def columns(self) -> list[str]:
        fixed = list(self.FIXED)
        fixed[1] = f"Size ({self.size_unit})"
        return [*fixed, *self._accuracy, *(f"{t} (t/s)" for t in self._speed)]

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns())

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.columns()[section]
        return None

    def cell_text(self, row: QuantResult, column: int) -> str:
        n_fixed, n_acc = len(self.FIXED), len(self._accuracy)
        if column == 0:
            return row.label if row.measured else f"{row.label} (size only)"
        if column == 1:
            return format_size_figure(row.size_bytes, self.size_scale)
        if column in (2, 3) and self.evaluation_missing(row):
            return NO_RESULT  # a blank cell read as "not shown yet"; this says what happened
        if column == 2:
            return _measure_text(row.ppl, 4)
        if column == 3:
            return _measure_text(row.kld_mean, 5)
        if column == 4:
            return "" if row.kld_max is None else f"{row.kld_max:.4g}"
        if column == 5:
            return "" if row.kld_p999 is None else f"{row.kld_p999:.4g}"
        if column == 6:
            return _measure_text(row.same_top_p, 2)
        if column < n_fixed + n_acc:
            m = row.accuracy.get(self._accuracy[column - n_fixed])
            return m.format(2, "%") if m else ""
        m = row.speed.get(self._speed[column - n_fixed - n_acc])
        return _measure_text(m, 1)

    @staticmethod
    def evaluation_missing(row: QuantResult) -> bool:
        """A quant that was made (a file) but has neither perplexity nor KL divergence."""
        return (row.measured and row.kind != "reference" and bool(row.path)
                and row.ppl is None and row.kld_mean is None)

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        if (role == Qt.ItemDataRole.ToolTipRole and index.column() in (2, 3)
                and self.evaluation_missing(row)):
            return ("No perplexity or KL divergence is recorded for this file: its evaluation "
                    "failed or was not run. The Run tab's log of the step says why.")
        if role == Qt.ItemDataRole.DisplayRole:
            return self.cell_text(row, index.column())
        if role == Qt.ItemDataRole.ToolTipRole:
            if not row.measured:
                return "Size from llama-quantize --dry-run; this quant was not made or measured"
            return row.path
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() > 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and not row.measured:
            return QColor("#8c8c8c")
        if role == Qt.ItemDataRole.FontRole and row.kind == "reference":
            font = QFont()
            font.setItalic(True)
            return font
        if role == Qt.ItemDataRole.DecorationRole and index.column() == 0:
            return KIND_COLOURS.get(row.kind)
        return None


class ResultsPlot(pg.PlotWidget):
    """One metric against size: measured points with error bars, baselines as size lines."""

    def __init__(self, title: str, y_label: str, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self.setObjectName(f"plot-{y_label}")
        self.title = title
        self.y_label = y_label
        self.setTitle(title)
        # GB or MB by the largest file (use_size_unit), never an SI prefix ("mGB").
        self.size_scale = 1
        self.use_size_unit(None)
        for axis in ("bottom", "left"):
            self.getAxis(axis).enableAutoSIPrefix(False)
        self.setLabel("left", y_label)
        self.showGrid(x=True, y=True, alpha=0.25)
        self.setMenuEnabled(False)
        self.points: list[tuple[str, float, float]] = []  # (label, size in unit, value)
        self.size_only: list[tuple[str, float]] = []
        self.text_colour = self.palette().color(QPalette.ColorRole.Text)

    def apply_palette(self, palette: QPalette) -> None:
        background = palette.color(QPalette.ColorRole.Base)
        text = palette.color(QPalette.ColorRole.Text)
        self.setBackground(background)
        # Kept for the point labels: on a theme switch the panel passes the new palette
        # before this widget's own palette has been updated.
        self.text_colour = text
        for axis in ("bottom", "left"):
            item = self.getAxis(axis)
            item.setPen(pg.mkPen(text))
            item.setTextPen(pg.mkPen(text))
        self.getPlotItem().titleLabel.setText(self.title, color=text.name())

    def use_size_unit(self, largest_bytes: float | None) -> None:
        """Sizes in GB, or in MB when every file is under a gigabyte (the demo's quants)."""
        unit, self.size_scale = size_unit(largest_bytes)
        self.setLabel("bottom", f"size ({unit})")

    def show_rows(self, rows: Sequence[QuantResult], value: Any) -> None:
        """``value(row)`` gives (y, error or None) or None for rows without the metric."""
        self.clear()
        self.points, self.size_only = [], []
        self.use_size_unit(max((r.size_bytes for r in rows if r.size_bytes is not None),
                               default=None))
        extents: list[tuple[float, float, float]] = []  # x, lowest y, highest y
        text_colour = self.text_colour
        reference_y = None
        for row in rows:
            if row.size_bytes is None:
                continue
            x = row.size_bytes / self.size_scale
            if not row.measured:
                line = pg.InfiniteLine(pos=x, angle=90, pen=pg.mkPen(
                    KIND_COLOURS["baseline"], width=1, style=Qt.PenStyle.DashLine),
                    label=f"{row.label} (size only)",
                    labelOpts={"position": 0.7, "color": KIND_COLOURS["baseline"],
                               "rotateAxis": (1, 0)})
                self.addItem(line)
                self.size_only.append((row.label, x))
                continue
            found = value(row)
            if found is None:
                continue
            y, error = found
            colour = KIND_COLOURS.get(row.kind, KIND_COLOURS["other"])
            if error:
                # numpy arrays, not lists: pyqtgraph 0.14's ErrorBarItem crashes (segfault
                # in paint) when given plain lists.
                bars = pg.ErrorBarItem(x=np.array([x]), y=np.array([y]),
                                       top=np.array([error]), bottom=np.array([error]),
                                       beam=0, pen=pg.mkPen(colour, width=1.5))
                self.addItem(bars)
            symbol = "d" if row.kind == "reference" else "o"
            self.plot([x], [y], pen=None, symbol=symbol, symbolSize=10,
                      symbolBrush=pg.mkBrush(colour), symbolPen=pg.mkPen(colour.darker(150)))
            # Quants of one size (Quality and I-Quality) share an x: alternate the label's
            # side so the names do not print over each other.
            same_x = sum(1 for _, px, _ in self.points if abs(px - x) <= 1e-9 + 0.005 * x)
            anchor = ((0, 1), (1, 1), (0, 0), (1, 0))[same_x % 4]
            label = pg.TextItem(row.label.removeprefix("APEX "), color=text_colour,
                                anchor=anchor)
            label.setPos(x, y)
            self.addItem(label)
            self.points.append((row.label, x, y))
            extents.append((x, y - (error or 0.0), y + (error or 0.0)))
            if row.kind == "reference":
                reference_y = y
        if reference_y is not None:
            self.addItem(pg.InfiniteLine(pos=reference_y, angle=0, pen=pg.mkPen(
                KIND_COLOURS["reference"], width=1, style=Qt.PenStyle.DotLine)))
        self._fit_range(extents)

    def _fit_range(self, extents: list[tuple[float, float, float]]) -> None:
        """Frame the points, their error bars and the size lines. Set by hand: auto-range
        would also try to frame the labels, which are sized in pixels, not data."""
        xs = [x for x, _, _ in extents] + [x for _, x in self.size_only]
        if not xs:
            self.enableAutoRange()
            return
        x_low, x_high = min(xs), max(xs)
        x_pad = (x_high - x_low) * 0.12 or abs(x_high) * 0.2 or 1.0
        self.setXRange(x_low - x_pad, x_high + x_pad, padding=0)
        if extents:
            y_low = min(low for _, low, _ in extents)
            y_high = max(high for _, _, high in extents)
            y_pad = (y_high - y_low) * 0.15 or abs(y_high) * 0.05 or 1.0
            self.setYRange(y_low - y_pad, y_high + y_pad, padding=0)


def _ppl(row: QuantResult) -> tuple[float, float | None] | None:
    return (row.ppl.value, row.ppl.error) if row.ppl else None


def _kld(row: QuantResult) -> tuple[float, float | None] | None:
    return (row.kld_mean.value, row.kld_mean.error) if row.kld_mean else None


def _tg(row: QuantResult) -> tuple[float, float | None] | None:
    found = row.speed_of("tg")
    return (found[1].value, found[1].error) if found else None


class ResultsPanel(QWidget):
    """The Results tab: comparison table, plots, CSV / Markdown / model-card export."""

    rowsChanged = Signal(int)  # number of rows after a refresh
    exported = Signal(str)  # path of a file just written
    exportFailed = Signal(str)  # a message naming the file and what to do

    def __init__(self, store: RunStore | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("resultsPanel")
        self._store = store
        self._reference: str | None = None
        self._baselines: list[Any] = []
        self._model: Any = None
        self._recommendation: Any = None
        self._hardware_label = ""
        self.rows: list[QuantResult] = []

        self.table_model = ResultsTableModel(self)
        self.table = QTableView(self)
        self.table.setModel(self.table_model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)

        self.ppl_plot = ResultsPlot("Perplexity vs size", "PPL")
        self.kld_plot = ResultsPlot("KL divergence vs size", "KL mean")
        self.speed_plot = ResultsPlot("Generation speed vs size", "t/s")
        self.plots = QTabWidget(self)
        self.plots.setDocumentMode(True)
        self.plots.addTab(self.ppl_plot, "PPL vs size")
        self.plots.addTab(self.kld_plot, "KL vs size")
        self.plots.addTab(self.speed_plot, "Speed vs size")

        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.refresh_button = QPushButton("Refresh")
        self.csv_button = QPushButton("Export CSV…")
        self.markdown_button = QPushButton("Export Markdown…")
        self.refresh_button.setToolTip("Read the run history again")
        self.csv_button.setToolTip("Every column with its error, one row per file")
        self.markdown_button.setToolTip("The table as on the model cards (Core Metrics)")
        self.card_button = QPushButton("Model card && publish…")
        self.card_button.setToolTip("Write a README in the style of the APEX model cards from "
                                    "these results, and upload the quants to Hugging Face")
        # The summary above the buttons: beside them, at 2x scaling it wrapped to five lines.
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.refresh_button, self.csv_button, self.markdown_button,
                       self.card_button):
            buttons.addWidget(button)

        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(self.table)
        splitter.addWidget(self.plots)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([280, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.summary)
        layout.addLayout(buttons)
        layout.addWidget(splitter, 1)
        # A plot needs some height to be read (its axis labels ran into each other).
        self.plots.setMinimumHeight(180)

        self.refresh_button.clicked.connect(self.refresh)
        self.csv_button.clicked.connect(self._choose_csv)
        self.markdown_button.clicked.connect(self._choose_markdown)
        self.card_button.clicked.connect(self.open_publish_dialog)
        self._apply_palette()
        self._update_buttons()

    # --- inputs -------------------------------------------------------------------------
    def set_model(self, model: Any) -> None:
        """The source model (ModelInfo): its file is the reference row, its facts go on the card."""
        self._model = model
        path = getattr(model, "path", None)
        self._reference = str(path) if path is not None and model.is_full_precision else None
        self.refresh()

    def set_reference(self, path: str | os.PathLike[str] | None) -> None:
        self._reference = str(path) if path is not None else None
        self.refresh()

    def set_baselines(self, baselines: Sequence[Any]) -> None:
        """Uniform quants sized by :func:`apex_gui.core.jobs.baselines.baselines` (size-only rows)."""
        self._baselines = list(baselines)
        self.refresh()

    def set_recommendation(self, recommendation: Any, hardware_label: str = "") -> None:
        """The hardware panel's latest recommendation: its flags go into the card's commands."""
        self._recommendation = recommendation
        self._hardware_label = hardware_label

    # --- content ------------------------------------------------------------------------
    def set_quality_curve(self, curve: Sequence[Any], tiers: Sequence[Any]) -> None:
        """The optimizer's plans and the tiers' predicted KL (apex_gui.core.quality.curve),
        drawn on the KL plot beside the measured points."""
        self._quality_curve = (list(curve), list(tiers))
        self.refresh()

    def _draw_quality_curve(self) -> None:
        curve, tiers = getattr(self, "_quality_curve", ([], []))
        draw_quality_curve(self.kld_plot, curve, tiers)

    def refresh(self) -> None:
        """Re-read the run history (one short SQLite query)."""
        if self._store is None:
            self.rows = []
        else:
            # With a full-precision model open, only its own quants and measurements.
            self.rows = collect_results(self._store, reference=self._reference,
                                        baselines=self._baselines,
                                        family_only=self._reference is not None)
        self.table_model.set_rows(self.rows)
        self.ppl_plot.show_rows(self.rows, _ppl)
        self.kld_plot.show_rows([r for r in self.rows if r.kind != "reference"], _kld)
        self._draw_quality_curve()
        self.speed_plot.show_rows(self.rows, _tg)
        quants = [r for r in self.rows if r.kind in ("apex", "other")]
        measured = sum(1 for r in quants if r.measured and r.has_measurements)
        sized = sum(1 for r in self.rows if not r.measured)
        parts = [f"{len(quants)} quant{'s' if len(quants) != 1 else ''} ({measured} measured)"]
        if sized:
            parts.append(f"{sized} uniform quant{'s' if sized != 1 else ''} sized for comparison")
        self.summary.setText(", ".join(parts) if self.rows else
                             "No results yet: quantize and evaluate in the Run tab.")
        self._update_buttons()
        self.rowsChanged.emit(len(self.rows))

    def _update_buttons(self) -> None:
        has_rows = bool(self.rows)
        self.csv_button.setEnabled(has_rows)
        self.markdown_button.setEnabled(has_rows)
        self.card_button.setEnabled(any(r.kind == "apex" for r in self.rows))

    # --- export -------------------------------------------------------------------------
    def export_csv(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_text(results_to_csv(self.rows), encoding="utf-8")
        self.exported.emit(str(target))
        return target

    def export_markdown(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_text(results_to_markdown(self.rows), encoding="utf-8")
        self.exported.emit(str(target))
        return target

    def _choose_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export results as CSV", "apex-results.csv",
                                              "CSV (*.csv)")
        if path:
            self._export(self.export_csv, path)

    def _choose_markdown(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export results as Markdown",
                                              "apex-results.md", "Markdown (*.md)")
        if path:
            self._export(self.export_markdown, path)

    def _export(self, write: Callable[[str], Path], path: str) -> None:
        """Write from a button: a failure is told to the user, never raised into Qt."""
        try:
            write(path)
        except OSError as error:
            message = (f"{path}: cannot be written ({error.strerror or error}). "
                       "Choose a folder you can write to.")
            self.summary.setText(message)
            self.exportFailed.emit(message)

    def open_publish_dialog(self) -> Any:
        """The model card and upload dialog for the APEX quants in the table."""
        fits = {}
        if self._recommendation is not None:
            fits = {r.candidate.key: r for r in self._recommendation.results}
        dialog = PublishDialog(self.rows, store=self._store, model=self._model,
                               fits_by_profile=fits, hardware=self._hardware_label,
                               context=(self._recommendation.context.n_ctx
                                        if self._recommendation is not None else 8192),
                               parent=self)
        dialog.open()
        return dialog

    # --- look ---------------------------------------------------------------------------
    def _apply_palette(self) -> None:
        for plot in (self.ppl_plot, self.kld_plot, self.speed_plot):
            plot.apply_palette(self.palette())

    def changeEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self._apply_palette()
            if self.rows:
                self.refresh()
        super().changeEvent(event)
