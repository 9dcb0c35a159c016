"""The Objects dock widget: count, measure and proofread the objects of a prediction (nuclei, cells, lesions).

Find objects (in a worker) -> the Labels layer ``<name> objects`` with the table as its ``features``; a whole
slide goes block by block and is proofread a view at a time (``objects_slide``). Table (``objects_table``):
row click <-> object click. Regions: counts per drawn polygon. Proofread (``objects.edit``): merge, split by a
line, delete, set class, undo. Files (``objects_output``); Send to training labels (``objects_store``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medseg._napari.dock_layout import TabsOnFirstShow, VerticalScroll
from napari_medseg._napari.jobs.workers import start_generator_worker
from napari_medseg._napari.layerdata import medseg_meta, units_of
from napari_medseg._napari.layers import camera_of, on_layer_renamed
from napari_medseg._napari.napari_compat_layers import is_image_layer, is_labels_layer, is_shapes_layer
from napari_medseg._napari.session import session_for
from napari_medseg._napari.widget_lifetime import when_destroyed
from napari_medseg._napari.widgets.guidance_parts import is_heatmap_layer
from napari_medseg._napari.widgets.messages import MessageLog
from napari_medseg._napari.widgets.objects_jobs import (
    OBJECTS_KEY,
    SUFFIX,
    Found,
    ObjectsState,
    find_job,
    layer_pixel_grid,
    schema_of,
)
from napari_medseg._napari.widgets.objects_output import ObjectsOutputMixin
from napari_medseg._napari.widgets.objects_slide import (
    NOT_HERE,
    left_window,
    prediction_zarr_of,
    slide_edit_buttons,
    start_slide_find,
    too_large,
    update_slide_buttons,
)
from napari_medseg._napari.widgets.objects_table import (
    FrameModel,
    ObjectsTable,
    compact_view,
    empty_table,
    parse_ids,
    wrapped_label,
)
from napari_medseg._napari.widgets.qt_helpers import combo_layer, fill_layer_combo
from napari_medseg.core.classes import BOUNDARY
from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.edit import Edit

log = logging.getLogger(__name__)
NO_IMAGE = "(no image)"


class ObjectsWidget(TabsOnFirstShow, ObjectsOutputMixin, QWidget):
    """Dock widget: find, measure, count and proofread objects (see module)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.state: ObjectsState | None = None
        self._worker: Any = None
        self.last_save: dict[str, int] | None = None  # the counts of the last whole-slide save (objects_slide)
        self._undo: list[Any] = []  # "edit" (the editor's history) or a ``Sent`` (a write into the labels)
        self._quiet = False
        self._pending: tuple[Any, Any, Any] | None = None  # the layers and schema of the find under way
        self._build()
        self._refresh_layers()
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        on_layer_renamed(napari_viewer, self._refresh_layers)
        napari_viewer.mouse_drag_callbacks.append(self._on_viewer_click)
        when_destroyed(self, self._forget_viewer_click)  # widget_lifetime: never a lambda on destroyed


    # -- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        content = QWidget()
        root = QVBoxLayout(content)
        outer.addWidget(VerticalScroll(content))
        box = QGroupBox("Find objects")
        f = QFormLayout(box)
        f.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.pred_combo = QComboBox()
        self.pred_combo.setToolTip("The prediction (a Labels layer of class values) to find objects in")
        self.pred_combo.currentIndexChanged.connect(self._fill_classes)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image under the prediction: its mean intensities are measured, and its "
                                    "labels receive 'Send to training labels'")
        f.addRow("Prediction", self.pred_combo)
        f.addRow("Image", self.image_combo)
        self.class_list = QListWidget()
        self.class_list.setToolTip("The object classes: each connected region of them is an object")
        self.class_list.setFixedHeight(self.fontMetrics().lineSpacing() * 4 + 12)
        f.addRow(wrapped_label("Object classes (each region of them is an object)"))
        f.addRow(self.class_list)
        row = QHBoxLayout()
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10**7)
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip("Objects smaller than this are dropped")
        row.addWidget(QLabel("min size"))
        row.addWidget(self.min_size, 1)
        f.addRow(row)
        self.find_btn = QPushButton("Find objects")
        self.find_btn.clicked.connect(lambda: self.find())
        f.addRow(self.find_btn)
        root.addWidget(box)

        self.table = ObjectsTable()
        self.table.view.setMinimumHeight(220)
        self.table.object_clicked.connect(self.go_to)
        self.only_selected = QCheckBox("show only the selected object")
        self.only_selected.toggled.connect(self._on_only_selected)
        root.addWidget(self.table, 1)
        root.addWidget(self.only_selected)

        edit = QGroupBox("Proofread")
        g = QGridLayout(edit)
        self.ids_edit = QLineEdit()
        self.ids_edit.setPlaceholderText("ids, e.g. 3 7 (or select rows)")
        g.addWidget(self.ids_edit, 0, 0, 1, 2)
        self.merge_btn = QPushButton("Merge")
        self.split_btn = QPushButton("Split")
        self.split_btn.setToolTip("Cut the object under the last line or path drawn in the Shapes layer (or "
                                  "the typed id) along it")
        self.delete_btn = QPushButton("Delete")
        self.class_combo = QComboBox()
        self.set_class_btn = QPushButton("Set class")
        self.undo_btn = QPushButton("Undo")
        self.undo_btn.setToolTip("Undo the last edit (merge, split, delete, set class) or the last send to the "
                                 "training labels")
        for i, b in enumerate((self.merge_btn, self.split_btn, self.delete_btn)):
            g.addWidget(b, 1, i)
        g.addWidget(self.class_combo, 2, 0, 1, 2)
        g.addWidget(self.set_class_btn, 2, 2)
        self.shapes_combo = QComboBox()
        self.shapes_combo.setToolTip("A Shapes layer: its last line or path splits, its polygons are regions")
        g.addWidget(QLabel("Shapes"), 3, 0)
        g.addWidget(self.shapes_combo, 3, 1, 1, 2)
        self.regions_btn = QPushButton("Count in regions")
        self.regions_btn.setToolTip("Count and density per class in each polygon, rectangle or ellipse of the "
                                    "Shapes layer")
        self.save_counts_btn = QPushButton("Counts...")  # the counts per region as CSV, TSV or Parquet
        g.addWidget(self.regions_btn, 4, 0, 1, 2)  # the wide buttons span two columns: the dock stays narrow
        g.addWidget(self.save_counts_btn, 4, 2)
        self.edit_view_btn, self.save_view_btn = slide_edit_buttons(self)
        g.addWidget(self.edit_view_btn, 5, 0)
        g.addWidget(self.save_view_btn, 5, 1, 1, 2)
        g.addWidget(self.undo_btn, 0, 2)  # beside the ids: undoes the last edit or send to the training labels
        self.merge_btn.clicked.connect(lambda: self.merge())
        self.split_btn.clicked.connect(lambda: self.split())
        self.delete_btn.clicked.connect(lambda: self.delete())
        self.set_class_btn.clicked.connect(lambda: self.set_class())
        self.undo_btn.clicked.connect(lambda: self.undo())
        self.regions_btn.clicked.connect(lambda: self.count_in_regions())
        self.save_counts_btn.clicked.connect(lambda: self.export_counts())
        root.addWidget(edit)
        self.regions_model = FrameModel(reorder=False)
        self.regions_view = compact_view(self.regions_model, sortable=False)
        self.regions_view.setVisible(False)
        root.addWidget(self.regions_view)

        root.addWidget(self._build_files())
        self.messages = MessageLog(lines=4)
        root.addWidget(self.messages)
        self._update_enabled()

    def _update_enabled(self) -> None:
        has = self.state is not None and self.state.layer in self.viewer.layers
        editable = has and self.state.editor is not None  # whole-slide objects are not held in memory
        for w in (self.regions_btn, self.save_table_btn, self.only_selected):
            w.setEnabled(has)
        for w in (self.merge_btn, self.split_btn, self.delete_btn, self.set_class_btn, self.save_geojson_btn,
                  self.save_volume_btn, self.send_btn):
            w.setEnabled(editable)
        self.undo_btn.setEnabled(has and bool(self._undo))
        self.save_counts_btn.setEnabled(has and self._counts is not None)
        update_slide_buttons(self, has)
        self.find_btn.setEnabled(self._worker is None)

    # -- layer choices ------------------------------------------------------------------------------
    def _is_objects(self, layer: Any) -> bool:
        return OBJECTS_KEY in medseg_meta(layer)

    def _refresh_layers(self, *_: Any) -> None:
        labels = [ly for ly in self.viewer.layers if is_labels_layer(ly) and not self._is_objects(ly)
                  and not medseg_meta(ly).get("reference")]
        fill_layer_combo(self.pred_combo, labels)
        fill_layer_combo(self.image_combo, [ly for ly in self.viewer.layers if is_image_layer(ly)
                                             and not is_heatmap_layer(ly)], head=[NO_IMAGE])
        fill_layer_combo(self.shapes_combo, [ly for ly in self.viewer.layers if is_shapes_layer(ly)])
        if self.state is not None and self.state.layer not in self.viewer.layers and not left_window(self):
            self.state, self._undo = None, []
            self.table.set_table(empty_table())
        self._update_enabled()

    def _fill_classes(self, *_: Any) -> None:
        pred = combo_layer(self.pred_combo, self.viewer.layers)
        self.class_list.clear()
        if pred is None:
            return
        schema = schema_of(pred, self.session.store_for(self._image()))
        for name in schema.names[1:]:
            if name == BOUNDARY:
                continue
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if name in schema.objects else Qt.Unchecked)
            self.class_list.addItem(item)

    def object_classes(self) -> list[str]:
        return [self.class_list.item(i).text() for i in range(self.class_list.count())
                if self.class_list.item(i).checkState() == Qt.Checked]

    def set_object_classes(self, names: list[str]) -> None:
        for i in range(self.class_list.count()):
            it = self.class_list.item(i)
            it.setCheckState(Qt.Checked if it.text() in names else Qt.Unchecked)

    def _image(self) -> Any:
        return combo_layer(self.image_combo, self.viewer.layers)

    # -- finding ------------------------------------------------------------------------------------
    def find(self) -> None:
        """Find and measure the objects of the chosen prediction in a worker; the layer follows."""
        if self._worker is not None:
            return
        pred = combo_layer(self.pred_combo, self.viewer.layers)
        try:
            if pred is None:
                raise MedsegError("Choose a prediction (a Labels layer of classes) to find objects in.")
            names = self.object_classes()
            if not names:
                raise MedsegError("Tick the object classes to count (e.g. nucleus) first.")
            schema = schema_of(pred, self.session.store_for(self._image())).with_objects(names, boundary=False)
            zarr_path = prediction_zarr_of(pred)
            if zarr_path is not None and too_large(pred):  # a whole slide: block by block, on disk
                start_slide_find(self, pred, zarr_path, schema)
                return
            grid = layer_pixel_grid(pred, self._image())
        except MedsegError as e:
            self.messages.error(str(e))
            return
        self.messages.say("info", f"finding {', '.join(names)} objects in {pred.name!r}...", toast=False)
        self._pending = (pred, self._image(), schema)
        self._worker = start_generator_worker(
            find_job, grid, schema, self.min_size.value(), on_event=self._on_found,
            on_finished=self._on_finished, notify=self.messages.error,
            progress={"total": 3, "desc": "napari-medseg: finding objects"})
        self._update_enabled()

    def _on_finished(self) -> None:
        self._worker = None
        self._update_enabled()

    def _on_found(self, ev: Any) -> None:
        if isinstance(ev, Found) and self._pending is not None:
            pred, image, schema = self._pending
            self.show_objects(ev, pred, image, schema)

    def show_objects(self, found: Found, pred: Any, image: Any, schema: Any) -> None:
        """Put the objects on the canvas as ``<prediction> objects`` with their table (main thread)."""
        name = pred.name + SUFFIX
        meta = {"napari_medseg": {OBJECTS_KEY: {"prediction": pred.name, "classes": schema.to_dict()}}}
        kw = {"scale": tuple(pred.scale), "translate": tuple(pred.translate), "opacity": 0.6, "metadata": meta,
              **units_of(pred, found.objects.labels.ndim)}
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(found.objects.labels, name=name, **kw)
        self.state = ObjectsState(layer=layer, pred=pred, image=image, schema=schema, found=found)
        self._undo, self._counts = [], None
        self.viewer.layers.selection.active = layer
        layer.events.selected_label.connect(self._on_selected_label)
        self._show_table()
        self.messages.info(f"{found.objects.n} objects in {pred.name!r}: click a row to go to one")
        self._update_enabled()

    def _show_table(self) -> None:
        st = self.state
        self.state.layer.features = st.features()
        self.table.set_table(st.table, class_names=list(st.schema.objects))
        self.class_combo.clear()
        for n in st.schema.objects:
            self.class_combo.addItem(n, st.schema.names.index(n))

    # -- going to an object -------------------------------------------------------------------------
    def go_to(self, obj_id: int) -> None:
        """Select object ``obj_id`` and centre the camera on its centroid (its slice in 3D)."""
        st = self.state
        if st is None or st.layer not in self.viewer.layers:
            return
        c = st.centroid(obj_id)
        if c is None:
            return
        self._quiet = True
        try:
            st.layer.selected_label = int(obj_id)
        finally:
            self._quiet = False
        world = np.asarray(st.layer.data_to_world(c), float)
        nd = len(world)
        lead = self.viewer.dims.ndim - nd
        if self.viewer.dims.ndisplay == 3:
            camera_of(self.viewer).center = tuple(world[-3:])
        else:
            for ax in self.viewer.dims.not_displayed:
                if ax >= lead:
                    self.viewer.dims.set_point(ax, float(world[ax - lead]))
            camera_of(self.viewer).center = tuple(world[-2:])

    def _on_selected_label(self, event: Any = None) -> None:
        if self._quiet or self.state is None:
            return
        value = int(self.state.layer.selected_label)
        ed = self.state.editor
        if value in ed.boxes if ed is not None else bool((self.state.table["id"] == value).any()):
            self.table.select_ids([value])

    def _on_only_selected(self, on: bool) -> None:
        if self.state is not None:
            self.state.layer.show_selected_label = bool(on)

    def _forget_viewer_click(self) -> None:
        """The widget goes: the viewer stops calling ``_on_viewer_click``."""
        callbacks = self.viewer.mouse_drag_callbacks
        if self._on_viewer_click in callbacks:
            callbacks.remove(self._on_viewer_click)

    def _on_viewer_click(self, viewer: Any, event: Any) -> Any:
        """A click (press and release without dragging) on an object selects its row."""
        moved = False
        yield
        while event.type == "mouse_move":
            moved = True
            yield
        st = self.state
        if moved or st is None or st.layer not in viewer.layers or not st.layer.visible:
            return
        try:
            value = st.layer.get_value(event.position, view_direction=event.view_direction,
                                       dims_displayed=event.dims_displayed, world=True)
        except Exception:  # napari could not tell what is under the cursor
            return
        if value is not None and int(value) > 0:
            self.table.select_ids([int(value)])
            self._quiet = True
            try:
                st.layer.selected_label = int(value)
            finally:
                self._quiet = False

    # -- proofreading -------------------------------------------------------------------------------
    def _ids(self, ids: list[int] | None) -> list[int]:
        if ids is not None:
            return [int(i) for i in ids]
        typed = parse_ids(self.ids_edit.text())
        return typed or self.table.selected_ids()

    def _run_edit(self, action: Any) -> Edit | None:
        if self.state is None or self.state.editor is None:
            self.messages.error("Find objects first." if self.state is None else
                                NOT_HERE.format(what="edited", what2="proofread"))
            return None
        try:
            edit = action(self.state.editor)
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        self._undo.append("edit")
        self._after_edit(edit)
        return edit

    def _after_edit(self, edit: Edit, undone: bool = False) -> None:
        st = self.state
        st.layer.refresh()
        st.update_rows(edit.ids)
        self._show_table()
        self.ids_edit.clear()
        show = [] if undone else [i for i in (edit.target, *edit.added) if i in st.editor.boxes]
        self.table.select_ids(show)
        verb = {"merge": "merged", "split": "split", "delete": "deleted", "relabel": "class set"}[edit.kind]
        what = f"undone: {edit.kind}" if undone else f"{verb}: {', '.join(str(i) for i in edit.ids)}"
        self.messages.say("info", f"{what} ({st.editor.objects.n and len(st.table)} objects)", toast=False)
        self._update_enabled()

    def _edit_ids(self, ids: list[int] | None, action: Any) -> Edit | None:
        """``action(editor, chosen ids)`` on ``ids`` (default: typed, else the selected rows)."""
        try:
            chosen = self._ids(ids)
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        return self._run_edit(lambda ed: action(ed, chosen))

    def merge(self, ids: list[int] | None = None) -> Edit | None:
        return self._edit_ids(ids, lambda ed, chosen: ed.merge(chosen))

    def delete(self, ids: list[int] | None = None) -> Edit | None:
        return self._edit_ids(ids, lambda ed, chosen: ed.delete(chosen))

    def set_class(self, ids: list[int] | None = None, class_name: str | None = None) -> Edit | None:
        name = class_name or self.class_combo.currentText()
        if self.state is None or name not in self.state.schema.names:
            self.messages.error("Choose the class to give the objects.")
            return None
        value = self.state.schema.names.index(name)
        return self._edit_ids(ids, lambda ed, chosen: ed.relabel(chosen, value))

    def split(self, obj_id: int | None = None, shapes: Any = None, width: int = 1) -> Edit | None:
        """Split an object along the last line or path of the Shapes layer (default: the chosen one); the
        object is the typed one, else the one the line crosses most."""
        st = self.state
        try:
            if st is None:
                raise MedsegError("Find objects first.")
            shapes = shapes if shapes is not None else combo_layer(self.shapes_combo, self.viewer.layers)
            points = st.last_line(shapes)
            if obj_id is None:
                typed = parse_ids(self.ids_edit.text())
                if len(typed) > 1:
                    raise MedsegError("Split cuts one object: type one id, or none to cut the object the line "
                                      "crosses.")
                obj_id = typed[0] if typed else st.object_under(points)
            axis = self._slice_axis(st.layer)
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        return self._run_edit(lambda ed: ed.split_by_line(obj_id, points, width, slice_axis=axis))

    def _slice_axis(self, layer: Any) -> int | None:
        if layer.ndim != 3 or self.viewer.dims.ndisplay == 3:
            return None
        lead = self.viewer.dims.ndim - layer.ndim
        hidden = [a - lead for a in self.viewer.dims.not_displayed if a >= lead]
        return hidden[-1] if hidden else None

    def undo(self) -> bool:
        """Undo the last edit or the last send to the training labels."""
        if self.state is None or not self._undo:
            return False
        last = self._undo.pop()
        if last == "edit":
            edit = self.state.editor.undo()
            if edit is not None:
                self._after_edit(edit, undone=True)
        else:
            from napari_medseg._napari.widgets.objects_store import restore

            store, sent = last
            try:
                restore(store, sent)
            except MedsegError as e:
                self.messages.error(str(e))
                return False
            self.messages.info("the objects sent to the training labels are taken back")
        self._update_enabled()
        return True
