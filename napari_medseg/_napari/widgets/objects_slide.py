"""The Objects widget on a whole slide or volume: a prediction too large to find objects in memory.

When the chosen prediction layer is a finished ``NAME.prediction.zarr`` (the Predict widget's or the CLI's
output) of more than ``MAX_FIND_PIXELS`` pixels, the widget runs the whole-slide pass
(``objects.tiled.instances_from_prediction``: block by block, stitched, resumable) in a worker, then shows
``labels/objects`` as a multiscale Labels layer with the per-object table (``objects.csv``). Counting in
regions, the table and going to an object work as on a small prediction; proofreading, GeoJSON export and
sending objects to the training labels need the objects in memory: on a whole slide they say so (the CLI's
``napari-medseg objects export`` writes GeoJSON of any size).
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg._napari.widgets.objects_jobs import MAX_FIND_PIXELS, ObjectsState
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError

NOT_HERE = ("the objects of a whole slide are not held in memory, so they cannot be {what} here; press 'Edit view' "
            "to {what2} the objects in view, or find objects in a region (predict the view or a crop)")


def prediction_zarr_of(layer: Any) -> Path | None:
    """The ``NAME.prediction.zarr`` a prediction layer was opened from, or None."""
    path = medseg_meta(layer).get("path")
    if not path:
        return None
    p = Path(str(path))
    return p if p.name.endswith(".prediction.zarr") and (p / "medseg").is_dir() else None


def too_large(layer: Any) -> bool:
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return math.prod(int(s) for s in data.shape) > MAX_FIND_PIXELS


def slide_job(path: Path, schema: ClassSchema, min_size: int, min_seed: int) -> Generator[Any, None, None]:
    """Worker: the whole-slide objects pass (its events), then ``(InstancesDone, table)``."""
    import pandas as pd

    from napari_medseg.objects.tiled import instances_from_prediction

    done = yield from instances_from_prediction(path, schema=schema, min_size=min_size, min_seed=min_seed)
    csv = path / "objects.csv"
    table = pd.read_csv(csv) if csv.is_file() else pd.DataFrame({"id": np.zeros(0, np.int64)})
    yield done, table


def objects_levels(path: Path) -> list[Any]:
    """The levels of ``labels/objects`` as lazy arrays (napari reads only what it shows)."""
    import dask.array as da
    import zarr

    group = zarr.open_group(str(path), mode="r")["labels/objects"]
    levels = []
    for k in range(64):
        if str(k) not in group:
            break
        arr = group[str(k)]
        levels.append(da.from_zarr(arr, chunks=arr.chunks))
    if not levels:
        raise MedsegError(f"{path}: labels/objects has no levels; find the objects again")
    return levels


class SlideObjectsState(ObjectsState):
    """Objects of a whole slide: a multiscale layer and its table; no editor (nothing held in memory), which the
    widget's edit, GeoJSON and send paths check before anything else."""

    def __init__(self, *, layer: Any, pred: Any, schema: ClassSchema, table: Any) -> None:  # noqa: D107
        self.layer, self.pred, self.image, self.schema, self.found = layer, pred, None, schema, None
        self.editor = None
        self.table = table
        self._attrs = {"offset": [0.0] * layer.ndim}


def start_slide_find(widget: Any, pred: Any, path: Path, schema: ClassSchema) -> None:
    """Start the whole-slide pass for ``widget`` (the Objects widget); its result becomes the objects layer."""
    from napari_medseg._napari.jobs.workers import start_generator_worker
    from napari_medseg.objects import DEFAULT_MIN_SEED
    from napari_medseg.objects.tiled import InstancesProgress

    def on_event(ev: Any) -> None:
        if isinstance(ev, tuple):
            show_slide_objects(widget, pred, schema, path, *ev)
        elif isinstance(ev, InstancesProgress):
            widget.messages.say("info", f"objects: block {ev.done} of {ev.total}, {ev.objects} objects so far",
                                toast=False)

    widget.messages.say("info", f"finding the objects of all of {pred.name!r}, block by block (resumable)...",
                        toast=False)
    widget._worker = start_generator_worker(
        slide_job, path, schema, widget.min_size.value(), DEFAULT_MIN_SEED, on_event=on_event,
        on_finished=widget._on_finished, notify=widget.messages.error, owner=widget,
        progress={"total": 0, "desc": "napari-medseg: objects of the whole slide"})
    widget._update_enabled()


def show_slide_objects(widget: Any, pred: Any, schema: ClassSchema, path: Path, done: Any, table: Any) -> None:
    """The whole-slide objects as the multiscale layer ``<prediction> objects`` with their table."""
    from napari_medseg._napari.layerdata import units_of
    from napari_medseg._napari.widgets.objects_jobs import OBJECTS_KEY, SUFFIX

    viewer = widget.viewer
    name = pred.name + SUFFIX
    meta = {"napari_medseg": {OBJECTS_KEY: {"prediction": pred.name, "classes": schema.to_dict(),
                                            "path": str(path)}}}
    levels = objects_levels(path)
    kw = {"scale": tuple(pred.scale), "translate": tuple(pred.translate), "opacity": 0.6, "metadata": meta,
          **units_of(pred, levels[0].ndim)}
    if name in viewer.layers:
        viewer.layers.remove(name)
    layer = viewer.add_labels(levels, name=name, multiscale=True, **kw)
    widget.state = SlideObjectsState(layer=layer, pred=pred, schema=schema, table=table)
    widget._undo = []
    layer.events.selected_label.connect(widget._on_selected_label)
    widget._show_table()
    widget.messages.info(f"{done.message}; click a row to go to an object")
    if not done.complete:
        widget.messages.error(f"{done.cut} object(s) larger than the halo are missing: find them with "
                              "'napari-medseg predict --instances-only PREDICTION --halo N' and a larger N")
    widget._update_enabled()


class WindowObjectsState(ObjectsState):
    """The objects of a window of a whole slide under proofreading: an in-memory layer over the slide's, its
    ``SlideWindow`` (``objects.slide_edit``) and the slide's state to return to."""

    def __init__(self, *, layer: Any, window: Any, slide: SlideObjectsState, found: Any) -> None:  # noqa: D107
        self.window, self.slide = window, slide
        super().__init__(layer=layer, pred=slide.pred, image=None, schema=slide.schema, found=found)
        self.editor = window.editor  # refuses edits of the objects that continue outside the window


def _view_box(viewer: Any, layer: Any) -> tuple[slice, ...]:
    """The level-0 pixels of ``layer`` on the canvas (from the camera and the canvas size, so it holds before
    napari has drawn the view); the axes not displayed (a volume's slices) whole."""
    from napari_medseg._napari.layers import camera_of
    from napari_medseg._napari.napari_compat import canvas_size

    if viewer.dims.ndisplay != 2:
        raise MedsegError("'Edit view' works in the 2D view; switch napari to 2D")
    camera = camera_of(viewer)
    center = np.asarray(camera.center, float)[-2:]
    half = np.asarray(canvas_size(viewer), float) / float(camera.zoom) / 2
    shape = [int(v) for v in (layer.data[0].shape if getattr(layer, "multiscale", False) else layer.data.shape)]
    nd = len(shape)
    corners = []
    for dy in (-1, 1):
        for dx in (-1, 1):
            world = np.asarray(viewer.dims.point, float).copy()
            world[list(viewer.dims.displayed)[-2:]] = center + half * np.asarray([dy, dx])
            corners.append(np.asarray(layer.world_to_data(world), float)[-nd:])
    lo, hi = np.min(corners, 0), np.max(corners, 0)
    displayed = [d - (viewer.dims.ndim - nd) for d in list(viewer.dims.displayed)[-2:]]
    return tuple(slice(max(0, int(np.floor(lo[ax] + 0.5))), min(n, int(np.ceil(hi[ax] + 0.5))))
                 if ax in displayed else slice(0, n) for ax, n in enumerate(shape))


def edit_view(widget: Any) -> bool:
    """Open the objects in view of a whole slide for proofreading (see module): the window is read and measured
    in a worker (up to ``slide_edit.WINDOW_MAX_PIXELS`` pixels: seconds), then shown (``_opened``). False (and
    a message) if it cannot start."""
    from napari_medseg._napari.jobs.workers import start_generator_worker

    st = widget.state
    if not isinstance(st, SlideObjectsState):
        widget.messages.error("'Edit view' opens the objects of a whole slide in view; these objects are editable "
                              "as they are.")
        return False
    if getattr(widget, "_worker", None) is not None:
        widget.messages.error("wait for the running objects job to finish (or its save to be written)")
        return False
    path = Path(str(medseg_meta(st.layer).get("objects", {}).get("path", "")))
    try:
        box = _view_box(widget.viewer, st.layer)  # the camera is read here, on the main thread
    except MedsegError as e:  # e.g. the 3D view
        widget.messages.error(str(e))
        return False
    widget.messages.say("info", "reading the objects in view...", toast=False)
    widget._worker = start_generator_worker(
        _open_job, path, box, list(st.schema.names), on_event=lambda ev: _opened(widget, st, path, *ev),
        on_finished=widget._on_finished, notify=widget.messages.error, owner=widget,
        progress={"total": 0, "desc": "napari-medseg: opening the view's objects"})
    widget._update_enabled()
    return True


def _open_job(path: Path, box: tuple[slice, ...], schema_names: list[str]) -> Generator[Any, None, None]:
    """Worker: the window's objects (``objects.slide_edit.open_window``), measured as the slide's table."""
    from napari_medseg._napari.widgets.objects_jobs import Found, PixelGrid, measure
    from napari_medseg.objects.slide_edit import open_window
    from napari_medseg.objects.stitch import measure_kwargs
    from napari_medseg.objects.tiled import PREDICTION_MANIFEST

    win = open_window(path, box)
    kw = measure_kwargs(json.loads((path / PREDICTION_MANIFEST).read_text()), len(box))  # as the slide's table
    grid = PixelGrid(pred=None, image=None, pixel_size=tuple(kw["pixel_size"]), unit=kw["unit"])
    names = list(win.class_names) or schema_names
    table = measure(win.objects, None, grid, names, offset=tuple(b.start for b in win.box))
    # the boxes the window's editor found (a second pass over up to 2^26 pixels is not needed)
    yield win, Found(win.objects, table, win.editor.boxes, np.zeros(0, np.uint8), None, grid, names)


def _opened(widget: Any, st: SlideObjectsState, path: Path, win: Any, found: Any) -> None:
    """Main thread: the window's objects as an editable layer over the slide's (``widget.state`` the window)."""
    from napari_medseg._napari.widgets.objects_jobs import OBJECTS_KEY

    if widget.state is not st or st.layer not in widget.viewer.layers:
        return  # the user moved on (another prediction, the slide's layer deleted) while the window was read
    layer0 = st.layer
    scale = np.asarray(layer0.scale, float)
    translate = np.asarray(layer0.translate, float) + scale * np.asarray([b.start for b in win.box], float)
    name = f"{layer0.name} (editing)"
    if name in widget.viewer.layers:
        widget.viewer.layers.remove(name)
    layer = widget.viewer.add_labels(win.objects.labels, name=name, scale=tuple(scale), translate=tuple(translate),
                                     opacity=0.8, metadata={"napari_medseg": {OBJECTS_KEY: {
                                         "window": [[b.start, b.stop] for b in win.box], "path": str(path)}}})
    st.layer.visible = False  # the slide's copy of these objects would show through what the edits change
    widget.state = WindowObjectsState(layer=layer, window=win, slide=st, found=found)
    widget._undo = []
    widget.viewer.layers.selection.active = layer
    layer.events.selected_label.connect(widget._on_selected_label)
    widget._show_table()
    widget.messages.info(f"editing the {len(found.table)} objects in view ({len(win.locked)} at its edge are "
                         "locked); 'Save to slide' writes the edits")
    widget._update_enabled()


def save_view(widget: Any) -> None:
    """Return to the slide's objects at once and write the window's edits into the slide in a worker (see module);
    the slide's layer shows them when they are written (``widget.last_save``: the counts)."""
    from napari_medseg._napari.jobs.workers import start_generator_worker

    st = widget.state
    if not isinstance(st, WindowObjectsState):
        widget.messages.error("Nothing is being edited: press 'Edit view' on a whole slide's objects first.")
        return
    slide = st.slide
    widget.state, widget._undo = slide, []  # the edits end here; the layer goes before the slide shows them
    if st.layer in widget.viewer.layers:
        widget.viewer.layers.remove(st.layer)
    widget._show_table()
    widget.messages.say("info", "writing the edits into the slide...", toast=False)

    def finished() -> None:
        slide.layer.visible = True
        widget._on_finished()

    widget._worker = start_generator_worker(
        _save_job, st.window, on_event=lambda ev: _saved(widget, slide, *ev), on_finished=finished,
        notify=widget.messages.error, owner=widget, progress={"total": 0, "desc": "napari-medseg: saving objects"})
    widget._update_enabled()


def _save_job(window: Any) -> Generator[Any, None, None]:
    """Worker: the window written into the slide (``objects.slide_edit.save_window``), then the slide's table."""
    import pandas as pd

    from napari_medseg.objects.slide_edit import save_window

    counts = save_window(window)
    csv = window.path / "objects.csv"
    table = window.table if window.table is not None else pd.read_csv(csv) if csv.is_file() else None
    yield counts, table  # the table as written (read only when nothing had to be written)


def _saved(widget: Any, slide: SlideObjectsState, counts: dict[str, int], table: Any) -> None:
    """Main thread: the slide's layer and table as written."""
    slide.layer.data = objects_levels(Path(str(medseg_meta(slide.layer)["objects"]["path"])))  # read afresh
    if table is not None:
        slide.table = table
    if widget.state is slide:
        widget._show_table()
    widget.last_save = counts
    widget.messages.info(f"saved to the slide: {counts['changed']} object(s) changed, {counts['removed']} removed, "
                         f"{counts['added']} added")


def slide_edit_buttons(widget: Any) -> tuple[Any, Any]:
    """The Proofread group's *Edit view* and *Save to slide* buttons, connected to ``widget``."""
    from qtpy.QtWidgets import QPushButton

    edit = QPushButton("Edit view")
    edit.setToolTip("Whole-slide objects: open the objects in view for proofreading (those that continue outside "
                    "the view stay locked)")
    save = QPushButton("Save to slide")
    save.setToolTip("Write the edits of the view into the slide's objects (every level, the table) and return")
    edit.clicked.connect(lambda: edit_view(widget))
    save.clicked.connect(lambda: save_view(widget))
    return edit, save


def update_slide_buttons(widget: Any, has: bool) -> None:
    """Enable *Edit view* on a whole slide's objects, *Save to slide* while a window is edited; a window's
    objects go out through the slide (the exports of a part would mislead)."""
    window = isinstance(widget.state, WindowObjectsState)
    idle = getattr(widget, "_worker", None) is None  # not while a find or a save runs
    widget.edit_view_btn.setEnabled(has and idle and isinstance(widget.state, SlideObjectsState))
    widget.save_view_btn.setEnabled(has and window)
    if window:
        for w in (widget.save_geojson_btn, widget.save_volume_btn, widget.send_btn):
            w.setEnabled(False)


def left_window(widget: Any) -> bool:
    """After the editing layer was deleted (its edits dropped): back on the slide's objects. True if so."""
    st = widget.state
    if not isinstance(st, WindowObjectsState) or st.slide.layer not in widget.viewer.layers:
        return False
    st.slide.layer.visible = True
    widget.state, widget._undo = st.slide, []
    widget._show_table()
    widget.messages.info("the edited view was closed without saving; its edits are not in the slide")
    return True
