"""The Annotate dock widget: pick or create a label store for an image, edit the classes, jump between
annotated regions, see painted-pixel counts per class, and know how much a crash could lose.

Every error a user can cause (a read-only folder, a store made for another image, a store open in another
viewer, a bad class name) becomes a napari notification; the widget stays usable and nothing painted is
dropped (a store that cannot be saved where it is stays in memory until "Save to another folder...").
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_medseg.io.classes import DEFAULT_COLORS, ClassSchema
from napari_medseg.io.errors import MedsegError
from napari_medseg.io.label_store import LabelStore, is_label_store

from .layer_list_events import quiet_zoom_events
from .layers import source_from_layer
from .painting import AUTOSAVE_NOTE, PaintingController
from .quiet_gc import freeze_long_lived
from .session import session_for

log = logging.getLogger(__name__)


class AnnotateWidget(QWidget):
    """Dock widget: label store, classes, annotated regions (see module docstring)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.store: LabelStore | None = None
        self.controller: PaintingController | None = None
        self._image_layer: Any = None
        self._regions: list[tuple[slice, ...]] = []
        self._region_i = -1
        self._updating_table = False
        self._build()
        self._refresh_images()
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.close_store)
        self.destroyed.connect(lambda *_: self.close_store())
        freeze_long_lived()  # the libraries, the viewer and this widget live for the session (quiet_gc)
        quiet_zoom_events(napari_viewer)  # the layer list ignores zoom steps (layer_list_events)

    # -- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)
        box = QGroupBox("Label store")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        form.addRow("Image", self.image_combo)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a store (.zarr) or a project folder; empty: beside the image")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        form.addRow("Store", row)
        self.read_only_check = QCheckBox("read-only (view another editor's labels)")
        form.addRow("", self.read_only_check)
        self.open_button = QPushButton("Open / create store")
        self.open_button.clicked.connect(lambda: self.open_store())
        form.addRow("", self.open_button)
        self.status_label = QLabel("No store open.")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)
        btns = QHBoxLayout()
        self.paint_here_button = QPushButton("Paint here")
        self.paint_here_button.setToolTip("Move the editable window to the current view")
        self.paint_here_button.clicked.connect(self.paint_here)
        self.save_button = QPushButton("Save now")
        self.save_button.clicked.connect(self.save_now)
        self.save_as_button = QPushButton("Save to another folder...")
        self.save_as_button.clicked.connect(lambda: self.save_as())
        for b in (self.paint_here_button, self.save_button, self.save_as_button):
            btns.addWidget(b)
        form.addRow(btns)
        root.addWidget(box)

        cbox = QGroupBox("Classes")
        cl = QVBoxLayout(cbox)
        self.class_table = QTableWidget(0, 4)
        self.class_table.setHorizontalHeaderLabels(["Value", "Name", "Color", "Painted px"])
        self.class_table.verticalHeader().setVisible(False)
        header = self.class_table.horizontalHeader()
        for col in (0, 2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        self.class_table.cellChanged.connect(self._on_cell_changed)
        self.class_table.cellClicked.connect(self._on_cell_clicked)
        cl.addWidget(self.class_table)
        hint = QLabel("Value 0 = not annotated (ignored by training), 1 = background, 2.. = classes. Click a "
                      "row to paint with it, a colour to change it.")
        hint.setWordWrap(True)
        cl.addWidget(hint)
        crow = QHBoxLayout()
        self.add_class_button = QPushButton("Add class")
        self.add_class_button.clicked.connect(lambda: self.add_class())
        self.remove_class_button = QPushButton("Remove class")
        self.remove_class_button.clicked.connect(lambda: self.remove_class())
        crow.addWidget(self.add_class_button)
        crow.addWidget(self.remove_class_button)
        cl.addLayout(crow)
        root.addWidget(cbox)

        rbox = QGroupBox("Annotated regions")
        rl = QHBoxLayout(rbox)
        self.prev_button = QPushButton("< Previous")
        self.prev_button.clicked.connect(self.previous_region)
        self.next_button = QPushButton("Next >")
        self.next_button.clicked.connect(self.next_region)
        self.region_label = QLabel("none")
        rl.addWidget(self.prev_button)
        rl.addWidget(self.region_label, 1, Qt.AlignCenter)
        rl.addWidget(self.next_button)
        root.addWidget(rbox)

        self.autosave_label = QLabel(AUTOSAVE_NOTE)
        self.autosave_label.setWordWrap(True)
        root.addWidget(self.autosave_label)
        root.addStretch(1)
        self._update_enabled()

    def _update_enabled(self) -> None:
        has = self.store is not None
        editable = has and self.store.writable
        for w in (self.paint_here_button, self.prev_button, self.next_button):
            w.setEnabled(has)
        for w in (self.save_button, self.add_class_button, self.remove_class_button):
            w.setEnabled(bool(editable))
        self.save_as_button.setEnabled(has)
        unsaved = has and not self.store.persistent and self.store.writable
        self.save_as_button.setStyleSheet("font-weight: bold; color: #d55e00;" if unsaved else "")

    # -- image choice -------------------------------------------------------------------------------
    def _image_layers(self) -> list[Any]:
        return [ly for ly in self.viewer.layers if ly._type_string == "image"]

    def _refresh_images(self, *_: Any) -> None:
        current = self.image_combo.currentText()
        names = [ly.name for ly in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_combo.currentText() != current:
            self._on_image_changed(self.image_combo.currentText())

    def _on_image_changed(self, name: str) -> None:
        if not name or name not in self.viewer.layers:
            return
        try:
            src = source_from_layer(self.viewer.layers[name], reopen=False)
            self.path_edit.setText(str(LabelStore.default_path(src)) if src.path else "")
        except MedsegError:
            self.path_edit.setText("")

    def _on_layer_removed(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        ctl = self.controller
        if layer is not None and (layer is self._image_layer or (ctl is not None and layer is ctl.layer)):
            self.close_store()  # saves the window's edits first (the layer object still holds them)
        self._refresh_images()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a label store (.zarr) or a project folder")
        if folder:
            self.path_edit.setText(folder)

    # -- store --------------------------------------------------------------------------------------
    def open_store(self, path: str | Path | None = None, *, read_only: bool | None = None) -> bool:
        """Open the store at ``path`` (or the path field) for the chosen image, or create it. A folder that
        is not a store is a project folder: the store goes inside it. Returns True on success."""
        if path is not None:
            self.path_edit.setText(str(path))
        if read_only is not None:
            self.read_only_check.setChecked(read_only)
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            show_error("Open an image first: the label store takes the image's geometry.")
            return False
        layer = self.viewer.layers[name]
        mode = "r" if self.read_only_check.isChecked() else "r+"
        text = self.path_edit.text().strip()
        try:
            src = source_from_layer(layer, reopen=False)
            classes = _classes_from_layer(layer, self.viewer)
            p = Path(text).expanduser() if text else None
            if p is None:
                store = LabelStore.for_image(src, classes=classes, on_readonly="memory", mode=mode)
            elif is_label_store(p):
                store = LabelStore.open(p, image=src, mode=mode, on_readonly="memory")
            elif p.is_dir() and not p.name.endswith(".zarr"):
                store = LabelStore.for_image(src, folder=p, classes=classes, on_readonly="memory", mode=mode)
            elif mode == "r":
                raise MedsegError(f"{p} is not a label store; uncheck read-only to create one there.")
            else:
                store = LabelStore.create(p, src.shape, classes=classes, pixel_size=src.pixel_size, unit=src.unit,
                                          image_path=src.path, image_shape=src.shape, on_readonly="memory")
        except MedsegError as e:
            show_error(str(e))
            return False
        self.close_store()
        self._attach(store, layer)
        if store.not_saved_reason:
            show_warning(store.not_saved_reason)
        return True

    def _attach(self, store: LabelStore, layer: Any) -> None:
        self.store, self._image_layer = store, layer
        if store.path is not None:
            self.path_edit.setText(str(store.path))
        try:
            self.controller = PaintingController(self.viewer, store, layer, notify=show_warning)
        except Exception:
            store.close()
            self.store = None
            raise
        self.controller.flushed.connect(lambda *_: self.refresh_counts())
        self.controller.flush_failed.connect(self._on_flush_failed)
        self.viewer.layers.selection.active = self.controller.layer
        session = session_for(self.viewer)
        session.label_stores[layer.name] = store
        if not hasattr(session, "painters"):
            session.painters = {}
        session.painters[layer.name] = self.controller
        self._fill_table()
        self.refresh_counts()
        self._update_enabled()

    def close_store(self) -> None:
        """Save and close the open store (its layers are removed). Labels that could not be saved where
        the store is are written to a rescue folder first (see ``rescue_dir``), never dropped."""
        ctl, store = self.controller, self.store
        self.controller = self.store = None
        try:
            if ctl is not None:
                try:
                    ctl.close(remove_layers=True)
                except RuntimeError:  # the viewer is already gone
                    ctl.close(remove_layers=False)
        finally:
            if store is not None:
                if store.writable and store.unsaved_chunks:
                    self._rescue(store)
                store.close()
            session = session_for(self.viewer)
            if self._image_layer is not None:
                session.label_stores.pop(self._image_layer.name, None)
                getattr(session, "painters", {}).pop(self._image_layer.name, None)
            self._image_layer = None
            self._regions, self._region_i = [], -1
            try:
                self._update_enabled()
                self.status_label.setText("No store open.")
                self.class_table.setRowCount(0)
            except RuntimeError:  # widgets already deleted at shutdown
                pass

    def _rescue(self, store: LabelStore) -> None:
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in
                       (self._image_layer.name if self._image_layer is not None else "labels"))
        target = rescue_dir() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.labels.zarr"
        try:
            store.save_as(target)
        except MedsegError as e:
            log.error("could not rescue unsaved labels: %s", e)
            show_error(f"Unsaved labels could not be written anywhere ({e}).")
            return
        show_warning(f"Your labels could not be saved where the store was; they are safe in {target}: open that "
                     "store to continue.")

    def _on_flush_failed(self, message: str) -> None:
        show_warning(message)
        self._update_enabled()
        self._update_status()

    def save_now(self) -> None:
        if self.controller is None or self.store is None:
            return
        try:
            self.controller.flush(wait=True, full=True)
            self.store.flush()
        except MedsegError as e:
            show_warning(str(e))
        self.refresh_counts()

    def save_as(self, path: str | Path | None = None) -> bool:
        """Write the store (saved and in-memory labels) to a new place and keep editing there."""
        if self.store is None or self.controller is None:
            return False
        if path is None:
            folder = QFileDialog.getExistingDirectory(self, "Choose a folder for the label store")
            if not folder:
                return False
            path = Path(folder) / (self.store.path.name if self.store.path else
                                   f"{self._image_layer.name}.labels.zarr")
        try:
            self.controller.flush(wait=True, full=True)
        except MedsegError as e:
            show_warning(str(e))
        try:
            self.store.save_as(path)
        except MedsegError as e:
            show_error(str(e))
            return False
        show_info(f"Labels saved to {path}; editing continues there.")
        self.path_edit.setText(str(path))
        self._update_enabled()
        self._update_status()
        return True

    def paint_here(self) -> None:
        if self.controller is not None:
            self.controller.move_window(self.controller.window_for_view())

    # -- classes ------------------------------------------------------------------------------------
    def _fill_table(self) -> None:
        if self.store is None:
            return
        self._updating_table = True
        cls = self.store.classes
        self.class_table.setRowCount(len(cls.names))
        for i, (n, c) in enumerate(zip(cls.names, cls.colors)):
            val = QTableWidgetItem(str(i + 1))
            val.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            self.class_table.setItem(i, 0, val)
            name = QTableWidgetItem(n)
            if not self.store.writable:
                name.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            self.class_table.setItem(i, 1, name)
            sw = QTableWidgetItem(c)
            sw.setBackground(QColor(c))
            sw.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            self.class_table.setItem(i, 2, sw)
            cnt = QTableWidgetItem("0")
            cnt.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            cnt.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            self.class_table.setItem(i, 3, cnt)
        self._updating_table = False

    def _apply_classes(self, classes: ClassSchema) -> bool:
        if self.controller is None:
            return False
        try:
            self.controller.set_classes(classes)
        except MedsegError as e:
            show_error(str(e))
            self._fill_table()
            self.refresh_counts()
            return False
        self._fill_table()
        self.refresh_counts()
        return True

    def _on_cell_changed(self, row: int, col: int) -> None:
        if self._updating_table or col != 1 or self.store is None:
            return
        self.set_class_name(row, self.class_table.item(row, 1).text())

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
        try:
            new = ClassSchema(names=tuple(names), colors=cls.colors)
        except MedsegError as e:
            show_error(str(e))
            self._fill_table()
            self.refresh_counts()
            return False
        return self._apply_classes(new)

    def set_class_color(self, row: int, color: str) -> bool:
        cls = self.store.classes
        colors = list(cls.colors)
        colors[row] = color
        try:
            new = ClassSchema(names=cls.names, colors=tuple(colors))
        except MedsegError as e:
            show_error(str(e))
            return False
        return self._apply_classes(new)

    def add_class(self, name: str | None = None) -> bool:
        if self.store is None:
            return False
        cls = self.store.classes
        k = len(cls.names)
        name = name or next(f"class {i}" for i in range(k, k + 1000) if f"class {i}" not in cls.names)
        try:
            new = ClassSchema(names=(*cls.names, name), colors=(*cls.colors, DEFAULT_COLORS[k % len(DEFAULT_COLORS)]))
        except MedsegError as e:
            show_error(str(e))
            return False
        return self._apply_classes(new)

    def remove_class(self, row: int | None = None) -> bool:
        """Remove the class in ``row`` (default: the selected row). Its painted pixels become "not
        annotated" after a confirmation; classes after it move up one value."""
        if self.store is None or self.controller is None:
            return False
        row = self.class_table.currentRow() if row is None else row
        if row < 1:
            show_error("Select a class to remove (the background class stays).")
            return False
        value = row + 1
        n = self.store.class_counts().get(value, 0)
        name = self.store.classes.names[row]
        if n and not self._confirm(f"{n} painted pixels of class '{name}' will become not annotated. Remove it?"):
            return False
        try:
            self.controller.flush(wait=True, full=True)
            self.store.remove_class(value)
        except MedsegError as e:
            show_error(str(e))
            return False
        self.controller.update_colors()
        self.controller.reload()
        self._fill_table()
        self.refresh_counts()
        return True

    def _confirm(self, text: str) -> bool:
        return QMessageBox.question(self, "Remove class", text) == QMessageBox.Yes

    # -- counts and regions -------------------------------------------------------------------------
    def refresh_counts(self) -> None:
        """Per-class painted-pixel counts and the annotated regions, from the store's index."""
        if self.store is None:
            return
        counts = self.store.class_counts()
        self._updating_table = True
        for i in range(self.class_table.rowCount()):
            item = self.class_table.item(i, 3)
            if item is not None:
                item.setText(f"{counts.get(i + 1, 0):,}")
        self._updating_table = False
        self._regions = self.store.painted_regions()
        if self._region_i >= len(self._regions):
            self._region_i = len(self._regions) - 1
        self._update_region_label()
        self._update_status()

    def _update_status(self) -> None:
        s = self.store
        if s is None:
            return
        where = str(s.path) if s.path else "memory only"
        state = "read-only" if not s.writable else ("saved as you paint" if s.persistent else
                                                     f"NOT SAVED ({s.unsaved_chunks} chunks in memory)")
        self.status_label.setText(f"{where}\n{s.shape} px, {len(s.painted_chunks())} painted chunks; {state}")

    def _update_region_label(self) -> None:
        n = len(self._regions)
        self.region_label.setText("none" if n == 0 else
                                  f"{self._region_i + 1 if self._region_i >= 0 else '-'} / {n}")

    def next_region(self) -> None:
        self._jump(+1)

    def previous_region(self) -> None:
        self._jump(-1)

    def _jump(self, step: int) -> None:
        if self.controller is None:
            return
        self.controller.flush()
        self._regions = self.store.painted_regions()
        if not self._regions:
            show_info("Nothing painted yet.")
            self._update_region_label()
            return
        self._region_i = (self._region_i + step) % len(self._regions)
        try:
            self.controller.show_region(self._regions[self._region_i])
        except MedsegError as e:
            show_warning(str(e))
        self._update_region_label()


def rescue_dir() -> Path:
    """Where labels that could not be saved go when their store is closed: ``$NAPARI_MEDSEG_CACHE/
    unsaved-labels`` if that variable is set, else the user data folder (``~/.local/share/napari-medseg/
    unsaved-labels`` on Linux)."""
    env = os.environ.get("NAPARI_MEDSEG_CACHE")
    if env:
        base = Path(env).expanduser()
    else:
        import platformdirs

        base = Path(platformdirs.user_data_dir("napari-medseg", appauthor=False))
    return base / "unsaved-labels"


def _classes_from_layer(layer: Any, viewer: Any = None) -> ClassSchema | None:
    """Classes announced by the image's reader or sample (``metadata['napari_medseg']['classes']``), or by
    a labels layer of the same geometry (e.g. a sample's ground truth); None: the default schema."""
    candidates = [layer]
    if viewer is not None:
        shape = tuple(layer.level_shapes[0][:2] if getattr(layer, "rgb", False) else layer.level_shapes[0])
        candidates += [ly for ly in viewer.layers if ly._type_string == "labels"
                       and tuple(ly.level_shapes[0]) == shape]
    for cand in candidates:
        meta = (getattr(cand, "metadata", None) or {}).get("napari_medseg", {})
        if isinstance(meta.get("classes"), dict):
            try:
                return ClassSchema.from_dict(meta["classes"])
            except MedsegError:
                continue
    return None
