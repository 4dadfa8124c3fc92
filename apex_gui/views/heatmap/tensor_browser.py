"""The flat tensor table and the metadata browser (what the Hugging Face GGUF viewer shows).

Tensors: name, layer, shape, stored type, the plan's type, elements, bytes; a search box
(every word must match) and sorting on every column (numbers sort as numbers). Metadata:
every key with its group (general, architecture, RoPE, tokenizer, chat template), value
type and a preview; the selected key's whole value (a chat template, a token list) below.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QLineEdit, QPlainTextEdit,
                               QSplitter, QTableView, QVBoxLayout, QWidget)

from apex_gui.core.gguf.browse import MetadataRow, TensorRow, matches, metadata_rows, tensor_rows
from apex_gui.core.units import format_size

SORT_ROLE = Qt.ItemDataRole.UserRole + 2
Index = QModelIndex | QPersistentModelIndex


class _RowsModel(QAbstractTableModel):
    """A read-only table over a list of row dataclasses: ``columns`` maps header -> getter
    of (shown text, sort key)."""

    def __init__(self, columns: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.columns = columns
        self.rows: list[Any] = []

    def set_rows(self, rows: list[Any]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        shown, key = self.columns[index.column()][1](self.rows[index.row()])
        if role == Qt.ItemDataRole.DisplayRole:
            return shown
        if role == SORT_ROLE:
            return key
        if role == Qt.ItemDataRole.ToolTipRole:
            return shown
        if role == Qt.ItemDataRole.TextAlignmentRole and isinstance(key, int) and index.column() > 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section][0]
        return None


class _SearchProxy(QSortFilterProxyModel):
    """Filters with :func:`matches` over the row's searchable text; sorts on SORT_ROLE."""

    def __init__(self, searchable: Any) -> None:
        super().__init__()
        self.query = ""
        self._searchable = searchable
        self.setSortRole(SORT_ROLE)

    def set_query(self, text: str) -> None:
        # Qt 6.9+: invalidateFilter() is deprecated for the begin/end pair.
        self.beginFilterChange()
        self.query = text
        self.endFilterChange()

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        model = self.sourceModel()
        assert isinstance(model, _RowsModel)
        return not self.query or matches(self.query, *self._searchable(model.rows[source_row]))

    def lessThan(self, left: Index, right: Index) -> bool:
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if a is None or b is None or type(a) is not type(b):
            return str(a) < str(b)
        return a < b


def _table(proxy: QSortFilterProxyModel) -> QTableView:
    view = QTableView()
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # file order until a header click
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setAlternatingRowColors(True)
    view.verticalHeader().hide()
    view.verticalHeader().setDefaultSectionSize(20)
    view.horizontalHeader().setStretchLastSection(True)
    view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    return view


class TensorTable(QWidget):
    """Every tensor of the open model as one row."""

    COLUMNS: list[tuple[str, Any]] = [
        ("Name", lambda r: (r.name, r.name)),
        ("Layer", lambda r: ("" if r.layer is None else str(r.layer), -1 if r.layer is None else r.layer)),
        ("Shape", lambda r: (r.shape, r.elements)),
        ("Stored", lambda r: (r.type_name, r.type_name)),
        ("Plan", lambda r: (r.planned, r.planned)),
        ("Elements", lambda r: (f"{r.elements:,}", r.elements)),
        ("Bytes", lambda r: (f"{r.nbytes:,}", r.nbytes)),
        ("Role", lambda r: (r.role, r.role)),
    ]

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("tensorTable")
        self.model = _RowsModel(self.COLUMNS)
        self.proxy = _SearchProxy(lambda r: (r.name, r.type_name, r.planned, r.role, r.shape))
        self.proxy.setSourceModel(self.model)
        self.search = QLineEdit()
        self.search.setObjectName("tensorSearch")
        self.search.setPlaceholderText("Search tensors: words of the name, type or role "
                                       "(e.g. \"exps q4_k\", \"blk.3.\")")
        self.search.setClearButtonEnabled(True)
        self.view = _table(self.proxy)
        self.summary = QLabel("No model open.")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.search)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.summary)
        self.search.textChanged.connect(self._search)

    def set_model(self, model: Any, planned: dict[str, str] | None = None,
                  rows: list[TensorRow] | None = None) -> None:
        """Show ``model``'s tensors; ``rows`` when already made off the GUI thread."""
        if rows is None:
            rows = tensor_rows(model, planned) if model is not None else []
        self.model.set_rows(rows)
        # A fixed width: measuring every name (thousands for a 400B model) stalls the window.
        self.view.setColumnWidth(0, 300)
        self._update_summary()

    def set_planned(self, model: Any, planned: dict[str, str]) -> None:
        """The plan changed: refresh the Plan column (the rows keep their order and filter)."""
        if model is None or not self.model.rows:
            return
        self.model.rows = tensor_rows(model, planned)
        column = 4
        self.model.dataChanged.emit(self.model.index(0, column),
                                    self.model.index(len(self.model.rows) - 1, column))

    def shown_rows(self) -> list[TensorRow]:
        return [self.model.rows[self.proxy.mapToSource(self.proxy.index(r, 0)).row()]
                for r in range(self.proxy.rowCount())]

    def _search(self, text: str) -> None:
        self.proxy.set_query(text)
        self._update_summary()

    def _update_summary(self) -> None:
        # The same filter as the proxy, on plain rows: mapping thousands of proxy indexes
        # back to the source stalled the opening of a 400B model by ~20 ms.
        query, searchable = self.proxy.query, self.proxy._searchable
        rows = [r for r in self.model.rows if not query or matches(query, *searchable(r))]
        total = sum(r.nbytes for r in rows)
        self.summary.setText(f"{len(rows):,} of {len(self.model.rows):,} tensors, "
                             f"{format_size(total)} ({total:,} bytes) as stored")


class MetadataBrowser(QWidget):
    """Every metadata key; the selected one's whole value below the table."""

    COLUMNS: list[tuple[str, Any]] = [
        ("Key", lambda r: (r.key, r.key)),
        ("Group", lambda r: (r.group, r.group)),
        ("Type", lambda r: (r.value_type, r.value_type)),
        ("Value", lambda r: (r.preview, r.preview)),
    ]

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("metadataBrowser")
        self.model = _RowsModel(self.COLUMNS)
        self.proxy = _SearchProxy(lambda r: (r.key, r.group, r.preview))
        self.proxy.setSourceModel(self.model)
        self.search = QLineEdit()
        self.search.setObjectName("metadataSearch")
        self.search.setPlaceholderText("Search keys and values (e.g. \"rope\", \"chat template\", "
                                       "\"tokenizer\")")
        self.search.setClearButtonEnabled(True)
        self.view = _table(self.proxy)
        self.value_view = QPlainTextEdit()
        self.value_view.setObjectName("metadataValue")
        self.value_view.setReadOnly(True)
        self.value_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.value_view.setPlaceholderText("Select a key to see its whole value")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.view)
        splitter.addWidget(self.value_view)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.search)
        layout.addWidget(splitter, 1)
        self.search.textChanged.connect(self.proxy.set_query)
        self.view.selectionModel().currentRowChanged.connect(self._show_value)

    def set_model(self, model: Any, rows: list[MetadataRow] | None = None) -> None:
        if rows is None:
            rows = metadata_rows(model) if model is not None else []
        self.model.set_rows(rows)
        self.value_view.clear()
        self.view.setColumnWidth(0, 300)

    def select_key(self, key: str) -> bool:
        for row in range(self.proxy.rowCount()):
            index = self.proxy.index(row, 0)
            if index.data() == key:
                self.view.setCurrentIndex(index)
                return True
        return False

    def shown_keys(self) -> list[str]:
        return [self.proxy.index(r, 0).data() for r in range(self.proxy.rowCount())]

    def _show_value(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if not current.isValid():
            self.value_view.clear()
            return
        row: MetadataRow = self.model.rows[self.proxy.mapToSource(current).row()]
        self.value_view.setPlainText(row.full_text())
