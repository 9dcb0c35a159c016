"""The Annotate widget's classes: a table of value, name, colour, painted pixels and the "objects" tick, and
its edits.

``ClassTableMixin`` is mixed into ``AnnotateWidget``: it builds the "Classes" box and edits the open
store's classes (rename in place, recolour, add, remove with a confirmation, mark as an object class),
telling the user through the widget's message log (``self.messages``). It expects ``self.store``,
``self.controller`` and ``self.refresh_counts()`` from the widget.

The "Obj." tick marks a class as an object class (nuclei, cells, lesions: counted and measured one by one,
``ClassSchema.with_objects``): the first tick appends the ``object boundary`` class, which training derives
from the painting; unticking the last object class keeps that class (harmless: nothing is painted with it).
Every edit keeps the object classes (a renamed object class stays one).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QColorDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_medseg.core.classes import BOUNDARY, DEFAULT_COLORS, ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.labels import ops

HINT = ("Value 0 = not annotated (ignored by training), 1 = background, 2.. = classes. Click a row to paint "
        "with it, a colour to change it. Tick 'Obj.' for classes whose objects you count (nuclei, cells).")
OBJ_COL = 4  # the "objects" tick


class ClassTableMixin:
    """The "Classes" box of the Annotate widget (see module)."""

    store: Any
    controller: Any
    messages: Any
    _own_write: bool

    def _build_class_box(self) -> QGroupBox:
        self._updating_table = False
        box = QGroupBox("Classes")
        lay = QVBoxLayout(box)
        self.class_table = QTableWidget(0, 5)
        self.class_table.setHorizontalHeaderLabels(["Value", "Name", "Color", "Painted px", "Obj."])
        self.class_table.horizontalHeaderItem(OBJ_COL).setToolTip(
            "Object class: its objects are counted and measured one by one (Objects widget); adds the "
            "'object boundary' class that training derives from the painting")
        self.class_table.verticalHeader().setVisible(False)
        header = self.class_table.horizontalHeader()
        for col in (0, 2, 3, OBJ_COL):
            header.setSectionResizeMode(col, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        self.class_table.cellChanged.connect(self._on_cell_changed)
        self.class_table.cellClicked.connect(self._on_cell_clicked)
        lay.addWidget(self.class_table)
        hint = QLabel(HINT)
        hint.setWordWrap(True)
        lay.addWidget(hint)
        row = QHBoxLayout()
        self.add_class_button = QPushButton("Add class")
        self.add_class_button.clicked.connect(lambda: self.add_class())
        self.remove_class_button = QPushButton("Remove class")
        self.remove_class_button.clicked.connect(lambda: self.remove_class())
        row.addWidget(self.add_class_button)
        row.addWidget(self.remove_class_button)
        lay.addLayout(row)
        return box

    def _fill_table(self) -> None:
        if self.store is None:
            return
        self._updating_table = True
        cls = self.store.classes
        fixed = Qt.ItemIsEnabled | Qt.ItemIsSelectable
        self.class_table.setRowCount(len(cls.names))
        for i, (n, c) in enumerate(zip(cls.names, cls.colors)):
            val = QTableWidgetItem(str(i + 1))
            val.setFlags(fixed)
            self.class_table.setItem(i, 0, val)
            name = QTableWidgetItem(n)
            if not self.store.writable:
                name.setFlags(fixed)
            self.class_table.setItem(i, 1, name)
            sw = QTableWidgetItem(c)
            sw.setBackground(QColor(c))
            sw.setFlags(fixed)
            self.class_table.setItem(i, 2, sw)
            cnt = QTableWidgetItem("0")
            cnt.setFlags(fixed)
            cnt.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            self.class_table.setItem(i, 3, cnt)
            tick = QTableWidgetItem("")
            if i == 0 or n == BOUNDARY:
                tick.setFlags(Qt.ItemIsEnabled)  # background and the boundary class are never object classes
            else:
                tick.setFlags((fixed | Qt.ItemIsUserCheckable) if self.store.writable else fixed)
                tick.setCheckState(Qt.Checked if n in cls.objects else Qt.Unchecked)
            self.class_table.setItem(i, OBJ_COL, tick)
        self._updating_table = False

    def _show_counts(self, counts: dict[int, int]) -> None:
        self._updating_table = True
        for i in range(self.class_table.rowCount()):
            item = self.class_table.item(i, 3)
            if item is not None:
                item.setText(f"{counts.get(i + 1, 0):,}")
        self._updating_table = False

    def _apply_classes(self, classes: ClassSchema) -> bool:
        if self.controller is None:
            return False
        try:
            self.controller.set_classes(classes)
        except MedsegError as e:
            self.messages.error(str(e))
            self._fill_table()
            self.refresh_counts()
            return False
        self._fill_table()
        self.refresh_counts()
        return True

    def _on_cell_changed(self, row: int, col: int) -> None:
        if self._updating_table or self.store is None:
            return
        if col == 1:
            self.set_class_name(row, self.class_table.item(row, 1).text())
        elif col == OBJ_COL:
            self.set_object_class(row, self.class_table.item(row, OBJ_COL).checkState() == Qt.Checked)

    def _on_cell_clicked(self, row: int, col: int) -> None:
        if self.controller is None:
            return
        if col == 2 and self.store is not None and self.store.writable:
            c = QColorDialog.getColor(QColor(self.store.classes.colors[row]), self, "Class color")
            if c.isValid():
                self.set_class_color(row, c.name())
        self.controller.layer.selected_label = row + 1  # paint with the clicked class

    def set_class_name(self, row: int, name: str) -> bool:
        cls = self.store.classes
        names = list(cls.names)
        names[row] = name.strip()
        objects = tuple(names[row] if o == cls.names[row] else o for o in cls.objects)  # a renamed one stays
        try:
            new = ClassSchema(names=tuple(names), colors=cls.colors, objects=objects)
        except MedsegError as e:
            self.messages.error(str(e))
            self._fill_table()
            self.refresh_counts()
            return False
        return self._apply_classes(new)

    def set_class_color(self, row: int, color: str) -> bool:
        cls = self.store.classes
        colors = list(cls.colors)
        colors[row] = color
        try:
            new = ClassSchema(names=cls.names, colors=tuple(colors), objects=cls.objects)
        except MedsegError as e:
            self.messages.error(str(e))
            return False
        return self._apply_classes(new)

    def add_class(self, name: str | None = None) -> bool:
        if self.store is None:
            return False
        cls = self.store.classes
        k = len(cls.names)
        name = name or next(f"class {i}" for i in range(k, k + 1000) if f"class {i}" not in cls.names)
        try:
            new = ClassSchema(names=(*cls.names, name), colors=(*cls.colors, DEFAULT_COLORS[k % len(DEFAULT_COLORS)]),
                              objects=cls.objects)
        except MedsegError as e:
            self.messages.error(str(e))
            return False
        return self._apply_classes(new)

    def set_object_class(self, row: int, on: bool) -> bool:
        """Mark (``on``) or unmark the class in ``row`` as an object class; the first one adds the
        ``object boundary`` class (``ClassSchema.with_objects``)."""
        if self.store is None:
            return False
        cls = self.store.classes
        name = cls.names[row]
        objects = [o for o in cls.objects if o != name] + ([name] if on else [])
        try:
            new = cls.with_objects(objects)
        except MedsegError as e:
            self.messages.error(str(e))
            self._fill_table()
            self.refresh_counts()
            return False
        added = len(new.names) > len(cls.names)
        if not self._apply_classes(new):
            return False
        if added:
            self.messages.info(f"'{name}' is an object class: the class '{BOUNDARY}' was added; training derives "
                               "it from your painting (paint a thin background line where two objects touch).")
        return True

    def remove_class(self, row: int | None = None) -> bool:
        """Remove the class in ``row`` (default: the selected row). Its painted pixels become "not
        annotated" after a confirmation; classes after it move up one value."""
        if self.store is None or self.controller is None:
            return False
        row = self.class_table.currentRow() if row is None else row
        if row < 1:
            self.messages.error("Select a class to remove (the background class stays).")
            return False
        value = row + 1
        n = self.store.class_counts().get(value, 0)
        name = self.store.classes.names[row]
        if n and not self._confirm(f"{n} painted pixels of class '{name}' will become not annotated. Remove it?"):
            return False
        self._own_write = True  # not a change "from outside the brush" (see AnnotateWidget)
        try:
            self.controller.flush(wait=True, full=True)
            ops.remove_class(self.store, value)
        except MedsegError as e:
            self.messages.error(str(e))
            return False
        finally:
            self._own_write = False
        self.controller.update_colors()
        self.controller.reload()
        self._fill_table()
        self.refresh_counts()
        return True

    def _confirm(self, text: str) -> bool:
        return QMessageBox.question(self, "Remove class", text) == QMessageBox.Yes
