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

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg._napari.widgets.objects_jobs import MAX_FIND_PIXELS, ObjectsState
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError

NOT_HERE = ("the objects of a whole slide are not held in memory, so they cannot be {what} here; find objects in "
            "a region (predict the view or a crop) to {what2} them")


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
