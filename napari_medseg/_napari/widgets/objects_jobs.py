"""The Objects widget's data side: the prediction and image pixels of a find (``layer_pixel_grid``), the
worker generator (``find_job``: read, find, measure), the class schema of a prediction layer (``schema_of``)
and the state of the objects found (``ObjectsState``: editor, table, geometry between the layers).

``find_job`` runs in a thread worker and touches no layer: it gets arrays (lazy ones are read there) and
plain numbers. ``ObjectsState`` runs on the main thread; it reads the Shapes layers the user draws on and
converts their coordinates to the objects' pixels through napari's public ``data_to_world`` /
``world_to_data``.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.objects import DEFAULT_MIN_SEED
from napari_medseg.objects.edit import Box, Editor, line_mask, object_boxes
from napari_medseg.objects.instances import Objects, find_objects

#: key of an objects layer's entry in ``metadata["napari_medseg"]``
OBJECTS_KEY = "objects"
SUFFIX = " objects"  # the objects layer is named after its prediction
#: the widget finds objects in predictions up to this many pixels (a whole slide: the CLI, by blocks)
MAX_FIND_PIXELS = 2**26


# -- the prediction's classes ---------------------------------------------------------------------------
def schema_of(layer: Any, store: Any = None) -> ClassSchema:
    """The class schema of prediction layer ``layer``: from its metadata, its prediction's run manifest (which
    keeps the object classes), the image's label store, else ``class 1..k`` from its values."""
    meta = medseg_meta(layer)
    c = meta.get("classes")
    if isinstance(c, dict):
        return ClassSchema.from_dict(c)
    if meta.get("path"):
        try:
            from napari_medseg.inference.output import read_manifest

            m = read_manifest(Path(meta["path"]))
            if m and isinstance(m.get("classes"), dict):
                return ClassSchema.from_dict(m["classes"])
        except (OSError, ValueError, MedsegError):
            pass
    if isinstance(c, (list, tuple)) and len(c) >= 2:
        if store is not None and tuple(store.classes.names) == tuple(c):
            return store.classes
        return ClassSchema(names=tuple(str(n) for n in c))
    if store is not None:
        return store.classes
    data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data
    top = int(np.asarray(data).max(initial=0))
    return ClassSchema.default(max(2, top + 1))


# -- pixels -----------------------------------------------------------------------------------------------
@dataclass
class PixelGrid:
    """What a find reads (lazy arrays, read in the worker) and the objects' physical pixel size."""

    pred: Any
    image: Any  # the image level on the prediction's grid, or None
    pixel_size: tuple[float, ...]
    unit: str


def unit_name(unit: Any) -> str:
    """The short name of a unit spelling ("um", "mm", ...), "px" for pixels or a unit the tables do not know."""
    from napari_medseg.objects.measure import normalize_unit

    try:
        return normalize_unit(str(unit))[0]
    except MedsegError:
        return "px"


def _unit_of(layer: Any) -> str:
    unit = medseg_meta(layer).get("unit")
    if not unit:
        units = getattr(layer, "units", None)
        unit = str(units[-1]) if units is not None and len(units) else "px"
    return unit_name(unit)


def layer_pixel_grid(pred: Any, image: Any = None) -> PixelGrid:
    """The prediction's level 0 and, when ``image`` has a level on the same grid, that level."""
    data = pred.data[0] if getattr(pred, "multiscale", False) else pred.data
    shape = tuple(int(s) for s in data.shape)
    if len(shape) not in (2, 3):
        raise MedsegError(f"{pred.name!r} has shape {shape}: objects are found in 2D or 3D predictions")
    if math.prod(shape) > MAX_FIND_PIXELS:
        raise MedsegError(f"{pred.name!r} has {math.prod(shape):,} pixels, too many to find objects here; find "
                          "the objects of a whole slide with 'napari-medseg predict --instances', or predict a "
                          "coarser level")
    img = None
    if image is not None:
        levels = list(image.data) if getattr(image, "multiscale", False) else [image.data]
        down = [1.0] if not getattr(image, "multiscale", False) else None
        for k, lv in enumerate(levels):
            sp = tuple(int(s) for s in (lv.shape[:-1] if getattr(image, "rgb", False) else lv.shape))
            if sp != shape:
                continue
            f = down[0] if down else np.asarray(image.downsample_factors[k])[-len(shape):]
            px = np.asarray(image.scale[-len(shape):], float) * f
            if np.allclose(px, np.asarray(pred.scale[-len(shape):], float), rtol=1e-3) and np.allclose(
                    np.asarray(image.translate[-len(shape):], float), np.asarray(pred.translate[-len(shape):]),
                    atol=float(np.min(px)) / 2):
                img = lv
                break
    unit = _unit_of(pred)
    px = tuple(float(s) for s in pred.scale[-len(shape):]) if unit != "px" else (1.0,) * len(shape)
    return PixelGrid(pred=data, image=img, pixel_size=px, unit=unit)


# -- the worker -------------------------------------------------------------------------------------------
@dataclass
class Found:
    """The result of ``find_job``."""

    objects: Objects
    table: Any
    boxes: dict[int, Box]
    pred: np.ndarray
    image: np.ndarray | None
    grid: PixelGrid
    class_names: list[str] = field(default_factory=list)


def measure(found_objects: Objects, image: Any, grid: PixelGrid, class_names: list[str], *,
            offset: tuple[int, ...] | None = None) -> Any:
    from napari_medseg.objects.measure import measure_objects

    return measure_objects(found_objects.labels, found_objects.classes, image=image, pixel_size=grid.pixel_size,
                           unit=grid.unit, class_names=class_names, offset=offset)


def find_job(grid: PixelGrid, schema: ClassSchema, min_size: int = 0) -> Generator[Any, None, None]:
    """Worker: read the prediction, find its objects, measure them (three steps, one event each)."""
    pred = np.asarray(grid.pred)
    yield "read"
    objects = find_objects(pred, schema, min_size=min_size, min_seed=DEFAULT_MIN_SEED)
    boxes = object_boxes(objects.labels)
    yield "found"
    image = np.asarray(grid.image) if grid.image is not None else None
    table = measure(objects, image, grid, list(schema.names))
    yield Found(objects, table, boxes, pred, image, grid, list(schema.names))


# -- the objects found, on the main thread --------------------------------------------------------------
class ObjectsState:
    """The objects of one find: their layer, editor, table and the layers they came from."""

    def __init__(self, *, layer: Any, pred: Any, image: Any, schema: ClassSchema, found: Found) -> None:
        self.layer, self.pred, self.image, self.schema, self.found = layer, pred, image, schema, found
        self.editor = Editor(found.objects, boxes=found.boxes)
        found.objects.labels = layer.data  # napari may keep its own array: edit what it shows
        self.table = found.table
        self._attrs = dict(found.table.attrs)
        # where the objects' array starts in the pixels of their table (a window of a whole slide: its start)
        self.origin: tuple[int, ...] = tuple(int(round(v)) for v in (self._attrs.get("offset") or [0] * layer.ndim))

    def features(self) -> Any:
        """The table as the layer's ``features`` (napari finds a label's row by the ``index`` column)."""
        f = self.table.copy()
        f.insert(0, "index", f["id"].to_numpy())
        return f

    def pred_values(self) -> np.ndarray:
        return self.found.pred

    def centroid(self, obj_id: int) -> np.ndarray | None:
        """The object's centroid in the objects' pixels, or None if it has no row."""
        rows = self.table.index[self.table["id"] == int(obj_id)]
        if not len(rows):
            return None
        nd = self.layer.ndim
        attrs = self._attrs
        off = attrs.get("offset") or [0.0] * nd
        return np.array([float(self.table.at[rows[0], f"centroid_{a}_px"]) - o
                         for a, o in zip("zyx"[-nd:], off)])

    def update_rows(self, ids: tuple[int, ...]) -> None:
        """Re-measure ``ids`` (those that still exist) and drop the rows of the others."""
        import pandas as pd

        ids = [int(i) for i in ids]
        keep = self.table[~self.table["id"].isin(ids)]
        alive = [i for i in ids if i in self.editor.boxes]
        parts = [keep]
        if alive:
            box = tuple(slice(min(self.editor.boxes[i][a].start for i in alive),
                              max(self.editor.boxes[i][a].stop for i in alive)) for a in range(self.layer.ndim))
            crop = np.array(self.editor.objects.labels[box])
            crop[~np.isin(crop, alive)] = 0
            img = self.found.image[box] if self.found.image is not None else None
            sub = measure(Objects(crop, self.editor.objects.classes), img, self.found.grid, self.found.class_names,
                          offset=tuple(o + s.start for o, s in zip(self.origin, box)))
            parts.append(sub)
        table = pd.concat([p for p in parts if len(p)] or [keep], ignore_index=True)
        table = table.sort_values("id", kind="stable").reset_index(drop=True)
        table.attrs = dict(self._attrs)
        self.table = table

    def region(self) -> Box | None:
        """The bounding box of every object."""
        boxes = list(self.editor.boxes.values())
        if not boxes:
            return None
        return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                     for a in range(len(boxes[0])))

    # -- shapes drawn by the user ---------------------------------------------------------------------
    def _to_objects(self, shapes: Any, pts: np.ndarray) -> np.ndarray:
        nd = self.layer.ndim
        out = []
        for p in np.asarray(pts, float):
            world = shapes.data_to_world(p)
            out.append(np.asarray(self.layer.world_to_data(world), float)[-nd:])
        return np.array(out)

    def _check_shapes(self, shapes: Any, what: str) -> None:
        from napari.layers import Shapes

        if not isinstance(shapes, Shapes):
            raise MedsegError(f"Choose a Shapes layer (add one with napari's 'New shapes layer' button) and draw "
                              f"{what} in it.")

    def last_line(self, shapes: Any) -> np.ndarray:
        """The last line or path of ``shapes`` in the objects' pixels."""
        self._check_shapes(shapes, "a line or path across the object to split")
        for data, kind in zip(reversed(list(shapes.data)), reversed(list(shapes.shape_type))):
            if kind in ("line", "path"):
                return self._to_objects(shapes, data)
        raise MedsegError(f"{shapes.name!r} has no line or path: draw one across the object with napari's line "
                          "or path tool, then press Split.")

    def object_under(self, points: np.ndarray) -> int:
        """The object the polyline crosses most (by pixels)."""
        lab = self.editor.objects.labels
        lo = np.clip(np.floor(points.min(0)).astype(int) - 1, 0, None)
        hi = np.minimum(np.ceil(points.max(0)).astype(int) + 2, lab.shape)
        if np.any(hi <= lo):
            raise MedsegError("the line lies outside the objects; draw it across an object.")
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        crop = np.asarray(lab[box])
        hit = crop[line_mask(points - lo, crop.shape)]
        hit = hit[hit > 0]
        if not hit.size:
            raise MedsegError("the line crosses no object; draw it across the object to split.")
        return int(np.bincount(hit).argmax())

    def polygons(self, shapes: Any) -> dict[str, np.ndarray]:
        """The polygons, rectangles and ellipses of ``shapes`` as ``(x, y)`` vertices in the objects'
        pixel-corner coordinates (what ``summarize`` takes), named ``region 1``, ``region 2``..."""
        self._check_shapes(shapes, "polygons, rectangles or ellipses around the regions to count")
        if self.layer.ndim != 2:
            raise MedsegError("counting in drawn regions works on 2D objects.")
        out: dict[str, np.ndarray] = {}
        for data, kind in zip(shapes.data, shapes.shape_type):
            if kind not in ("polygon", "rectangle", "ellipse"):
                continue
            pts = self._to_objects(shapes, data)
            if kind == "ellipse":  # 4 corners of the bounding box: sample the ellipse inside it
                c = pts.mean(0)
                u, v = (pts[1] - pts[0]) / 2, (pts[3] - pts[0]) / 2
                t = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]
                pts = c + np.cos(t) * u + np.sin(t) * v
            out[f"region {len(out) + 1}"] = pts[:, ::-1] + 0.5
        if not out:
            raise MedsegError(f"{shapes.name!r} has no polygon, rectangle or ellipse: draw the regions to count "
                              "in it first.")
        return out

    def level0_placement(self) -> tuple[tuple[float, float], float]:
        """(offset (y, x), scale) of the objects in the image's level-0 pixels (QuPath's coordinates)."""
        if self.image is None:
            return (0.0, 0.0), 1.0
        isc = np.asarray(self.image.scale[-2:], float)
        scale = float(np.asarray(self.layer.scale[-1], float) / isc[-1])
        off = (np.asarray(self.layer.translate[-2:], float) - np.asarray(self.image.translate[-2:], float)) / isc
        # a coarser level's pixel centres sit (scale - 1) / 2 level-0 pixels in (``inference.job``: translation);
        # the GeoJSON offset is that of its pixel corners
        off = off - (scale - 1.0) / 2.0
        return (float(off[0]), float(off[1])), scale
