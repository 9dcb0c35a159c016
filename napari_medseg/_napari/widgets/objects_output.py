"""The Objects widget's outputs and inputs: counts in drawn regions (and their file), the table and GeoJSON
files, objects read from a QuPath GeoJSON onto the chosen image, and the objects sent into the image's label
store. ``ObjectsOutputMixin`` is mixed into ``ObjectsWidget``; it expects the widget's
``state`` (``objects_jobs.ObjectsState``), ``viewer``, ``session``, ``messages``, ``shapes_combo``,
``regions_model`` / ``regions_view`` and its undo list ``_undo``. Tests call the methods with paths (the
buttons open file dialogs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFileDialog, QGridLayout, QGroupBox, QPushButton

from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg._napari.widgets.objects_slide import NOT_HERE
from napari_medseg._napari.widgets.objects_table import fit_rows
from napari_medseg._napari.widgets.qt_helpers import combo_layer
from napari_medseg.core.errors import MedsegError


class ObjectsOutputMixin:
    """Regions, exports and "Send to training labels" of the Objects widget (see module)."""

    state: Any
    viewer: Any
    session: Any
    messages: Any
    shapes_combo: Any
    regions_model: Any
    regions_view: Any
    _undo: list[Any]
    _counts: Any = None  # the last counts in regions (a DataFrame), for export_counts

    def _build_files(self) -> Any:
        """The "Files" group: the table, GeoJSON and volume files out, GeoJSON in, Send to training labels."""
        out = QGroupBox("Files")
        g2 = QGridLayout(out)
        self.save_table_btn = QPushButton("Table...")
        self.save_table_btn.setToolTip("Save the measurements as CSV, TSV or Parquet")
        self.save_geojson_btn = QPushButton("GeoJSON...")
        self.save_geojson_btn.setToolTip("Save the objects for QuPath (detections with class and measurements)")
        self.send_btn = QPushButton("Send to training labels")
        self.send_btn.setToolTip("Write the objects (class + boundary rims) into the image's labels, so the next "
                                 "training round learns from them; your own strokes stay")
        self.save_volume_btn = QPushButton("Volume...")
        self.save_volume_btn.setToolTip("Save a volume's objects as NIfTI (3D Slicer, ITK-SNAP) or their classes as "
                                        "DICOM-SEG, in the geometry of the image's file")
        self.import_btn = QPushButton("Import GeoJSON...")
        self.import_btn.setToolTip("Objects drawn or detected in QuPath (GeoJSON) onto the chosen Image: measure, "
                                   "proofread, export or send them to the training labels")
        # two narrow buttons a row, the wide one alone: the dock stays narrow (tests/gui/test_dock_layout.py)
        g2.addWidget(self.save_table_btn, 0, 0)
        g2.addWidget(self.save_geojson_btn, 0, 1)
        g2.addWidget(self.save_volume_btn, 1, 0)
        g2.addWidget(self.import_btn, 1, 1)
        g2.addWidget(self.send_btn, 2, 0, 1, 2)
        self.import_btn.clicked.connect(lambda: self.import_geojson())
        self.save_volume_btn.clicked.connect(lambda: self.export_volume())
        self.save_table_btn.clicked.connect(lambda: self.export_table())
        self.save_geojson_btn.clicked.connect(lambda: self.export_geojson())
        self.send_btn.clicked.connect(lambda: self.send_to_labels())
        return out

    def count_in_regions(self, shapes: Any = None) -> Any:
        """Count and density per class in each polygon of the Shapes layer; shown under the buttons."""
        from napari_medseg.objects.measure import summarize

        st = self.state
        try:
            if st is None:
                raise MedsegError("Find objects first.")
            shapes = shapes if shapes is not None else combo_layer(self.shapes_combo, self.viewer.layers)
            regions = st.polygons(shapes)
            summary = summarize(st.table, regions=regions, class_names=list(st.schema.objects))
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        first = ["region", "class", "count", *[c for c in summary.columns if str(c).startswith("density")]]
        self.regions_model.set_frame(summary[[*first, *[c for c in summary.columns if c not in first]]])
        fit_rows(self.regions_view)
        self.regions_view.setVisible(True)
        self._counts = summary
        self._update_enabled()
        return summary

    def export_counts(self, path: str | Path | None = None) -> Path | None:
        """The last counts in regions as CSV, TSV or Parquet."""
        from napari_medseg.objects.measure import write_table

        if self._counts is None:
            self.messages.error("Count in regions first.")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save the counts per region", "counts.csv",
                                                  "Tables (*.csv *.tsv *.parquet)")
            if not path:
                return None
        try:
            out = write_table(self._counts, path)
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        self.messages.info(f"counts of {self._counts['region'].nunique()} region(s) saved to {out}")
        return Path(out)

    def import_geojson(self, path: str | Path | None = None) -> bool:
        """Objects from a QuPath GeoJSON (detections or annotations, level-0 pixel coordinates) onto the chosen
        image: a class layer ``<file> classes`` and its objects layer with their table, to measure, proofread,
        export or send to the training labels like objects found here. A slide too large to hold is read at
        its first level that fits (``MAX_FIND_PIXELS``); its coordinates are scaled to it. The file is read,
        drawn and measured in a worker (``_geojson_job``); True if that started (else a message says why)."""
        from napari_medseg._napari.jobs.workers import start_generator_worker
        from napari_medseg._napari.widgets.objects_jobs import MAX_FIND_PIXELS

        image = self._image()
        try:
            if image is None:
                raise MedsegError("Choose the image the objects belong to (Image) first.")
            if getattr(self, "_worker", None) is not None:
                raise MedsegError("wait for the running objects job to finish first")
            if path is None:
                path, _ = QFileDialog.getOpenFileName(self, "Objects from QuPath", "", "GeoJSON (*.geojson *.json)")
                if not path:
                    return False
            path = Path(path)
            levels = list(image.data) if getattr(image, "multiscale", False) else [image.data]
            shapes = [tuple(int(s) for s in (lv.shape[:-1] if image.rgb else lv.shape)) for lv in levels]
            if len(shapes[0]) != 2:
                raise MedsegError(f"GeoJSON objects are 2D; {image.name!r} has {len(shapes[0])} spatial axes.")
            k = next((i for i, sh in enumerate(shapes) if sh[0] * sh[1] <= MAX_FIND_PIXELS), None)
            if k is None:
                raise MedsegError(f"{image.name!r} is too large to hold its objects here; import them with "
                                  "'napari-medseg objects import FILE.geojson --like IMAGE --out objects.zarr'")
        except MedsegError as e:
            self.messages.error(str(e))
            return False
        f = shapes[0][-1] / shapes[k][-1]
        store = self.session.store_for(image)
        start = list(store.classes.names) if store is not None else ["background"]
        colors = list(store.classes.colors) if store is not None else []
        unit = medseg_meta(image).get("unit") or "px"
        px = tuple(float(v) * f for v in image.scale[-2:])
        self.messages.say("info", f"reading {path.name}...", toast=False)
        self._worker = start_generator_worker(
            _geojson_job, path, image.name, shapes[k], levels[k], start, colors, f, px, unit,
            on_event=lambda ev: self._geojson_read(image, path, f, unit, *ev), on_finished=self._on_finished,
            notify=self.messages.error, owner=self, progress={"total": 0, "desc": "napari-medseg: reading GeoJSON"})
        self._update_enabled()
        return True

    def _geojson_read(self, image: Any, path: Path, f: float, unit: str, schema: Any, found: Any) -> None:
        """Main thread: the imported objects' class layer and objects layer (``show_objects``)."""
        s0 = np.asarray(image.scale[-2:], float)
        values = np.asarray(found.objects.classes, np.uint16)[found.objects.labels]
        pred = self.viewer.add_labels(
            values.astype(np.uint8) if len(schema.names) < 256 else values, name=f"{path.stem} classes",
            scale=tuple(s0 * f), translate=tuple(np.asarray(image.translate[-2:], float) + (f - 1) / 2 * s0),
            opacity=0.5, visible=False,
            metadata={"napari_medseg": {"classes": schema.to_dict(), "unit": unit, "source": str(path)}})
        found.pred = pred.data
        self.show_objects(found, pred, image, schema)

    def export_table(self, path: str | Path | None = None) -> Path | None:
        from napari_medseg.objects.measure import write_table

        if self.state is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save the object table", f"{self.state.layer.name}.csv",
                                                  "Tables (*.csv *.tsv *.parquet)")
            if not path:
                return None
        try:
            out = write_table(self.state.table, path)
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        self.messages.info(f"{len(self.state.table)} objects saved to {out}")
        return Path(out)

    def export_geojson(self, path: str | Path | None = None) -> Path | None:
        from napari_medseg.objects.geojson import write_geojson

        st = self.state
        if st is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save the objects for QuPath", f"{st.layer.name}.geojson",
                                                  "GeoJSON (*.geojson *.json)")
            if not path:
                return None
        try:
            if st.editor is None:
                raise MedsegError("the objects of a whole slide are not held in memory: write their GeoJSON with "
                                  "'napari-medseg objects export PREDICTION.zarr --geojson OUT.geojson'")
            offset, scale = st.level0_placement()
            out = write_geojson(path, st.editor.objects, table=st.table, class_names=list(st.schema.names),
                                colors=list(st.schema.colors), offset=offset, scale=scale)
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        self.messages.info(f"objects saved for QuPath to {out}")
        return Path(out)

    def export_volume(self, path: str | Path | None = None) -> Path | None:
        """A volume's objects as NIfTI (``.nii.gz``) or their classes as DICOM-SEG (``.dcm``), in the geometry of
        the file or DICOM folder the image was opened from (``objects.files`` / ``objects.dicom_seg``)."""
        from napari_medseg._napari.layerdata import medseg_meta

        st = self.state
        if st is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save the objects in the volume's geometry",
                                                  f"{st.layer.name}.nii.gz", "NIfTI (*.nii.gz *.nii);;DICOM-SEG (*.dcm)")
            if not path:
                return None
        path = Path(path)
        try:
            image = st.image if st.image is not None else self._image()
            source = medseg_meta(image).get("path") if image is not None else None
            if st.editor is None or st.layer.ndim != 3 or not source:
                raise MedsegError("Volume export needs the objects of a 3D image opened from a NIfTI file or a DICOM "
                                  "folder (choose that image as Image); 2D objects go out as GeoJSON.")
            names, colors = list(st.schema.names), list(st.schema.colors)
            if path.name.lower().endswith(".dcm"):
                from napari_medseg.objects.dicom_seg import write_dicom_seg

                out = write_dicom_seg(st.editor.objects, path, like=source, class_names=names, colors=colors)
            else:
                from napari_medseg.objects.files import write_objects

                out = write_objects(path, st.editor.objects, class_names=names, like=source)
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        self.messages.info(f"objects saved to {out}")
        return Path(out)

    def send_to_labels(self) -> int | None:
        """Write the objects into the labels of the image (Annotate widget), as one undoable step."""
        from napari_medseg._napari.widgets.objects_store import send_objects

        st = self.state
        try:
            if st is None:
                raise MedsegError("Find objects first.")
            if st.editor is None:
                raise MedsegError(NOT_HERE.format(what="sent to the training labels", what2="send"))
            image = st.image if st.image is not None and st.image in self.viewer.layers else self._image()
            store = self.session.store_for(image)
            if image is None or store is None:
                raise MedsegError("Open the image's labels in the Annotate widget first (choose the image there), "
                                  "and choose the same image here.")
            painter = self.session.painter_for(image)
            if painter is not None:
                painter.flush(wait=True, full=True)  # the brush's last strokes first: they are kept
            box = st.region()
            if box is None:
                raise MedsegError("There are no objects to send.")
            sent = send_objects(store, st.editor.objects.labels, st.editor.objects.classes, box,
                                pred=st.pred_values(), pred_schema=st.schema, obj_scale=st.layer.scale,
                                obj_translate=st.layer.translate, store_translate=tuple(image.translate)[-store.ndim:])
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        self._undo.append((store, sent))
        self.messages.info(f"{sent.changed:,} label pixels written from {len(st.table)} objects; train again to "
                           "learn from them (Undo takes them back)")
        self._update_enabled()
        return sent.changed


def _geojson_job(path: Path, image_name: str, shape: tuple[int, ...], level: Any, start: list[str],
                 colors: list[Any], f: float, pixel_size: tuple[float, ...], unit: str) -> Any:
    """Worker: the GeoJSON's objects drawn on ``level`` (the image's level of ``shape``, ``f`` times coarser than
    level 0), their schema (the image's classes, the file's added) and their table, as ``(schema, Found)``."""
    from napari_medseg._napari.widgets.objects_jobs import Found, PixelGrid, measure, unit_name
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.objects.edit import object_boxes
    from napari_medseg.objects.geojson import read_geojson_classes
    objects, names = read_geojson_classes(path, shape, start, add_classes=True, scale=f)
    if objects.n == 0:
        raise MedsegError(f"{path.name}: no polygon objects on {image_name!r} (is it the image they were drawn on?)")
    class_names = [names[v] for v in sorted(names)]
    used = sorted({class_names[int(c)] for c in objects.classes[1:]})
    colors = colors[:len(class_names)]
    schema = ClassSchema(names=tuple(class_names), **({"colors": tuple(colors)} if len(colors) == len(
        class_names) else {})).with_objects(used, boundary=False)
    img = np.asarray(level)
    unit = unit_name(unit)
    grid = PixelGrid(pred=None, image=img, pixel_size=pixel_size if unit != "px" else (1.0, 1.0), unit=unit)
    table = measure(objects, img, grid, list(schema.names))
    yield schema, Found(objects, table, object_boxes(objects.labels), np.zeros(0, np.uint8), img, grid,
                        list(schema.names))
