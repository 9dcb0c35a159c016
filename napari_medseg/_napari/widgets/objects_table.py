"""The Objects widget's table: the measurement table of the objects as a sortable Qt table, with the counts
per class above it.

``FrameModel`` shows a ``pandas.DataFrame`` (read-only; numbers sort as numbers: the proxy sorts by
``SORT_ROLE``, the raw value). ``ObjectsTable`` is the counts line and the table view: clicking a row emits
``object_clicked(id)``; ``select_ids`` selects the rows of ids (an object clicked in the viewer) without
emitting it; ``selected_ids`` gives the ids of the selected rows (for merge, delete, set class).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import (
    QAbstractTableModel,
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from qtpy.QtCore import Signal as QtSignal
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableView, QVBoxLayout, QWidget

from napari_medseg.core.errors import MedsegError

SORT_ROLE = Qt.UserRole + 1


def _shown(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return ""
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    return str(v)


def shown_order(columns: list[str]) -> list[str]:
    """Columns in the order a narrow table shows them: id, class, size, intensities, then the others."""
    def rank(c: str) -> int:
        for k, prefix in enumerate(("id", "class", "area_", "volume_", "n_pixels", "n_voxels", "mean_")):
            if c == prefix or (prefix.endswith("_") and c.startswith(prefix)):
                return k
        return 99

    return sorted(columns, key=rank)  # stable: the others keep their order


class FrameModel(QAbstractTableModel):
    """A read-only Qt model of a DataFrame (columns in ``shown_order`` with ``reorder``, else as they are)."""

    def __init__(self, frame: Any = None, *, reorder: bool = True) -> None:
        super().__init__()
        self.reorder = reorder
        self._cols: list[str] = []
        self._values: list[np.ndarray] = []
        self._n = 0
        if frame is not None:
            self.set_frame(frame)

    def set_frame(self, frame: Any) -> None:
        self.beginResetModel()
        cols = [str(c) for c in frame.columns]
        self._cols = shown_order(cols) if self.reorder else cols
        self._values = [frame[c].to_numpy() for c in self._cols]
        self._n = len(frame)
        self.endResetModel()

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def value(self, row: int, col: str) -> Any:
        return self._values[self._cols.index(col)][row]

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008 (Qt)
        return 0 if parent.isValid() else self._n

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008 (Qt)
        return 0 if parent.isValid() else len(self._cols)

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole) -> Any:
        if not index.isValid():
            return None
        v = self._values[index.column()][index.row()]
        if role == Qt.DisplayRole:
            return _shown(v)
        if role == SORT_ROLE:
            if isinstance(v, (np.integer, np.floating, int, float)):
                f = float(v)
                return -math.inf if math.isnan(f) else f
            return str(v)
        if role == Qt.TextAlignmentRole and isinstance(v, (np.integer, np.floating, int, float)):
            return int(Qt.AlignRight | Qt.AlignVCenter)
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.DisplayRole and orientation == Qt.Horizontal and section < len(self._cols):
            return self._cols[section]
        return None


def compact_view(model: Any, *, sortable: bool = True) -> QTableView:
    """A table view for a narrow dock: no row numbers, whole rows selected, columns sized to their contents."""
    view = QTableView()
    if sortable:
        proxy = QSortFilterProxyModel(view)
        proxy.setSourceModel(model)
        proxy.setSortRole(SORT_ROLE)
        view.setModel(proxy)
        view.setSortingEnabled(True)
        view.sortByColumn(0, Qt.AscendingOrder)
    else:
        view.setModel(model)
    view.verticalHeader().setVisible(False)
    view.verticalHeader().setDefaultSectionSize(view.fontMetrics().lineSpacing() + 6)
    view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
    view.setSelectionBehavior(QAbstractItemView.SelectRows)
    view.setEditTriggers(QAbstractItemView.NoEditTriggers)
    view.setHorizontalScrollMode(QAbstractItemView.ScrollPerPixel)
    return view


def fit_rows(view: QTableView, most: int = 8) -> None:
    """Make ``view`` as tall as its rows (at most ``most``), header and scroll bar included."""
    n = min(view.model().rowCount(), most)
    h = view.horizontalHeader().height() + n * view.verticalHeader().defaultSectionSize()
    view.setFixedHeight(h + view.horizontalScrollBar().sizeHint().height() + 2 * view.frameWidth() + 2)


class ObjectsTable(QWidget):
    """Counts per class and the sortable measurement table (see module)."""

    object_clicked = QtSignal(int)

    def __init__(self) -> None:
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.counts_label = QLabel("No objects yet: choose a prediction and press 'Find objects'.")
        self.counts_label.setWordWrap(True)
        lay.addWidget(self.counts_label)
        self.model = FrameModel()
        self.view = compact_view(self.model)
        self.view.setMinimumHeight(160)
        self.view.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.view.clicked.connect(self._on_clicked)
        lay.addWidget(self.view)
        self._quiet = False

    def set_table(self, table: Any, class_names: list[str] | None = None) -> None:
        """Show ``table`` (a ``measure_objects`` DataFrame) and its counts per class."""
        keep = self.selected_ids()
        self.model.set_frame(table)
        counts = table["class"].astype(str).value_counts() if len(table) and "class" in table else {}
        names = list(dict.fromkeys([*(class_names or []), *sorted(counts.keys() if len(counts) else [])]))
        parts = [f"{n}: {int(counts.get(n, 0)):,}" for n in names]
        self.counts_label.setText(f"{len(table):,} objects" + (" (" + ", ".join(parts) + ")" if parts else ""))
        self.select_ids([i for i in keep if i in set(self.ids())])

    def ids(self) -> list[int]:
        if "id" not in self.model.columns:
            return []
        return [int(self.model.value(r, "id")) for r in range(self.model.rowCount())]

    def _row_id(self, view_row: int) -> int | None:
        proxy = self.view.model()
        src = proxy.mapToSource(proxy.index(view_row, 0))
        if not src.isValid() or "id" not in self.model.columns:
            return None
        return int(self.model.value(src.row(), "id"))

    def _on_clicked(self, index: QModelIndex) -> None:
        obj_id = self._row_id(index.row())
        if obj_id is not None and not self._quiet:
            self.object_clicked.emit(obj_id)

    def selected_ids(self) -> list[int]:
        """Ids of the selected rows, in the order shown."""
        rows = sorted({i.row() for i in self.view.selectionModel().selectedRows()})
        return [i for i in (self._row_id(r) for r in rows) if i is not None]

    def select_ids(self, ids: list[int], *, scroll: bool = True) -> None:
        """Select the rows of ``ids`` (the first scrolled into view) without emitting ``object_clicked``."""
        proxy, sel = self.view.model(), self.view.selectionModel()
        wanted = {int(i) for i in ids}
        if "id" not in self.model.columns:
            return
        selection = QItemSelection()
        first = None
        for r in range(self.model.rowCount()):
            if int(self.model.value(r, "id")) in wanted:
                idx = proxy.mapFromSource(self.model.index(r, 0))
                selection.select(idx, idx)
                first = idx if first is None or idx.row() < first.row() else first
        self._quiet = True
        try:
            flags = QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows
            sel.select(selection, flags)
            if first is not None and scroll:
                self.view.scrollTo(first)
        finally:
            self._quiet = False


def parse_ids(text: str) -> list[int]:
    """Object ids typed by the user: whole numbers separated by spaces or commas."""
    out = []
    for tok in text.replace(",", " ").split():
        if not tok.isdigit():
            raise MedsegError(f"{tok!r} is not an object id: type ids as whole numbers, e.g. '3 7'")
        out.append(int(tok))
    return out


def wrapped_label(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def empty_table() -> Any:
    """A table with no object (the widget before any find)."""
    import pandas as pd

    return pd.DataFrame({"id": np.zeros(0, np.int64), "class": np.zeros(0, str)})
