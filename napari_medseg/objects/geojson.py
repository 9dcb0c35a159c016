"""QuPath-compatible GeoJSON: 2D objects out as detections with class, color and measurements, and back in.

``to_geojson(objects, class_names=..., colors=...)`` gives a ``FeatureCollection`` with one ``Feature`` per
object id, in id order. Its ``geometry`` is a ``Polygon`` (a ``MultiPolygon`` for an object of several
parts), traced with ``skimage.measure.find_contours`` on the object's padded crop (holes included) and
simplified with ``skimage.measure.approximate_polygon`` (``TOLERANCE`` px). Coordinates follow QuPath:
``[x, y]`` in full-resolution (level-0) pixels, origin at the top-left corner of the top-left pixel, so pixel
``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``. ``offset`` is the labels' origin ``(y, x)`` in
level-0 pixels (a crop of a slide); ``scale`` the level-0 pixels per label pixel (a prediction made at a
coarser level). ``properties`` hold ``objectType: "detection"``, ``classification: {name, color: [r, g, b]}``,
``measurements`` (the numeric columns of the object's table row) and ``medseg_id`` (the object id); each
feature also has a stable UUID ``id``.

``read_geojson(path, shape, class_names)`` rasterises the ``Polygon``/``MultiPolygon`` features of a
FeatureCollection (or a list of features, or one feature, as older QuPath versions write) into ``Objects``
on a grid of ``shape`` (``skimage.draw.polygon``, holes cleared), ids 1..n in file order. Features of other
geometry types (points, lines) are skipped with a warning that counts them. Objects are 2D only.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.objects.instances import Objects

logger = logging.getLogger(__name__)

TOLERANCE = 0.5  # px, approximate_polygon's tolerance: removes staircase vertices, keeps the outline within 1/2 px
_NAMESPACE = uuid.UUID("6f1c0a52-4b8e-4c1e-9a55-3d1f0b5c7e21")


def _rgb(color: Any) -> list[int]:
    """``[r, g, b]`` 0-255 of a hex string, an RGB(A) tuple of floats 0-1 or of ints 0-255."""
    if isinstance(color, str):
        c = color.lstrip("#")
        if len(c) not in (6, 8):
            raise MedsegError(f"color {color!r} is not a hex color like '#ff8800'.")
        return [int(c[i:i + 2], 16) for i in (0, 2, 4)]
    v = np.asarray(color, float).ravel()[:3]
    if v.size != 3:
        raise MedsegError(f"color {color!r} needs 3 components.")
    return [int(round(x * 255)) if v.max() <= 1.0 else int(round(x)) for x in v]


def _ring(contour: np.ndarray, origin: tuple[float, float], scale: float) -> list[list[float]] | None:
    """A closed GeoJSON ring ``[[x, y], ...]`` from a ``find_contours`` contour (``(row, col)``, pixel-centre
    coordinates of the padded crop whose pixel 0 lies at ``origin`` in the labels' grid)."""
    from skimage.measure import approximate_polygon

    simple = approximate_polygon(contour, tolerance=TOLERANCE)
    if len(simple) < 4:
        simple = contour
    if len(simple) < 4:
        return None
    if not np.array_equal(simple[0], simple[-1]):
        simple = np.vstack([simple, simple[:1]])
    # pixel-centre index -> corner coordinates (+0.5), into the labels' grid, then level-0 pixels
    ys = (simple[:, 0] + origin[0] + 0.5) * scale
    xs = (simple[:, 1] + origin[1] + 0.5) * scale
    return [[round(float(x), 3), round(float(y), 3)] for x, y in zip(xs, ys)]


def _outline(mask: np.ndarray, origin: tuple[float, float], scale: float, offset: tuple[float, float]
             ) -> list[list[list[list[float]]]]:
    """Polygons (each: outer ring, then holes) of the parts of ``mask`` (face-connected parts)."""
    from skimage.measure import find_contours

    polys = []
    parts, n = ndi.label(mask)
    for k in range(1, n + 1):
        part = parts == k
        filled = ndi.binary_fill_holes(part)
        rings = []
        outer = find_contours(np.pad(filled, 1).astype(np.uint8), 0.5, fully_connected="low")
        if not outer:
            continue
        ring = _ring(max(outer, key=len), (origin[0] - 1, origin[1] - 1), scale)
        if ring is None:
            continue
        rings.append(ring)
        holes, m = ndi.label(filled & ~part, structure=np.ones((3, 3)))
        for h in range(1, m + 1):
            hc = find_contours(np.pad(holes == h, 1).astype(np.uint8), 0.5, fully_connected="high")
            if hc:
                r = _ring(max(hc, key=len), (origin[0] - 1, origin[1] - 1), scale)
                if r is not None:
                    rings.append(r)
        polys.append([[[x + offset[1], y + offset[0]] for x, y in r] for r in rings])
    return polys


def _measurements(table: Any, ids: np.ndarray) -> dict[int, dict[str, float]]:
    if table is None or len(table) == 0:
        return {}
    if "id" not in table.columns:
        raise MedsegError("the table needs an 'id' column (made by measure_objects) to attach measurements.")
    num = table.select_dtypes(include=[np.number])
    out = {}
    for i, row in zip(table["id"].to_numpy(np.int64), num.to_dict("records")):
        out[int(i)] = {str(k): float(v) for k, v in row.items() if np.isfinite(v)}  # JSON has no NaN
    return out


def to_geojson(objects: Objects, *, table: Any = None, class_names: Sequence[str] | Mapping[int, str],
               colors: Sequence[Any] | Mapping[int, Any], offset: Sequence[float] = (0, 0),
               scale: float = 1.0) -> dict[str, Any]:
    """A GeoJSON ``FeatureCollection`` of the 2D ``objects`` (see the module docstring).

    ``class_names`` / ``colors``: per prediction value (``ClassSchema.names`` / ``.colors``: hex strings or
    RGB tuples). ``table``: a ``measure_objects`` table whose numeric columns become each feature's
    ``measurements``."""
    from napari_medseg.objects.measure import class_name_of

    lab = np.asarray(objects.labels)
    if lab.ndim != 2:
        raise MedsegError(f"GeoJSON holds 2D objects; these are {lab.ndim}D (shape {lab.shape}). Export 3D objects "
                          "as NIfTI instead.")
    if float(scale) <= 0:
        raise MedsegError(f"scale must be positive, got {scale}.")
    off = (float(offset[0]), float(offset[1]))
    classes = np.asarray(objects.classes)
    meas = _measurements(table, classes)
    feats = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        mask = lab[sl] == i
        polys = _outline(mask, (sl[0].start, sl[1].start), float(scale), off)
        if not polys:
            continue
        value = int(classes[i]) if i < len(classes) else 0
        color = colors.get(value) if isinstance(colors, Mapping) else (colors[value] if value < len(colors) else None)
        geometry = ({"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1
                    else {"type": "MultiPolygon", "coordinates": polys})
        classification: dict[str, Any] = {"name": class_name_of(value, class_names)}
        if color is not None:
            classification["color"] = _rgb(color)
        feats.append({
            "type": "Feature",
            "id": str(uuid.uuid5(_NAMESPACE, f"object-{i}")),
            "geometry": geometry,
            "properties": {"objectType": "detection", "classification": classification,
                           "isLocked": False, "measurements": meas.get(i, {}), "medseg_id": i},
        })
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(path: str | os.PathLike, objects: Objects, **kwargs: Any) -> Path:
    """Write ``to_geojson(objects, **kwargs)`` to ``path`` (``.geojson`` or ``.json``) and return the path."""
    p = Path(path)
    if p.suffix.lower() not in (".geojson", ".json"):
        raise MedsegError(f"{p}: name the GeoJSON file .geojson (QuPath imports .geojson and .json).")
    if not p.parent.is_dir():
        raise MedsegError(f"{p.parent}: the folder does not exist; create it or choose another path.")
    fc = to_geojson(objects, **kwargs)
    try:
        p.write_text(json.dumps(fc, allow_nan=False))
    except OSError as e:
        raise MedsegError(f"{p}: could not write the GeoJSON ({e.strerror or e}).") from e
    return p


def load_features(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The features of a GeoJSON file: a FeatureCollection, a list of features or one feature."""
    p = Path(path)
    if not p.is_file():
        raise UnreadableInputError(f"{p}: no such file.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableInputError(f"{p}: not a GeoJSON file (it is not valid JSON: {e}).") from e
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    elif isinstance(data, list):
        feats = data
    else:
        what = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise UnreadableInputError(f"{p}: a GeoJSON FeatureCollection, Feature or list of features was expected, "
                                   f"got {what!r}; export the objects from QuPath as GeoJSON (File > Export "
                                   "objects as GeoJSON).")
    if not isinstance(feats, list) or not all(isinstance(f, dict) and f.get("type") == "Feature" for f in feats):
        raise UnreadableInputError(f"{p}: its features are not all GeoJSON Features (objects with "
                                   "\"type\": \"Feature\").")
    return feats


def feature_class(feature: dict[str, Any]) -> str | None:
    """A feature's class name (QuPath ``classification.name``; older files: ``classification`` a string)."""
    c = (feature.get("properties") or {}).get("classification")
    if isinstance(c, dict):
        names = c.get("names")  # QuPath derived classes, e.g. ["Tumor", "Positive"]
        c = c.get("name") or (": ".join(map(str, names)) if isinstance(names, list) and names else None)
    return str(c) if c is not None else None


def feature_polygons(feature: dict[str, Any], where: str) -> list[list[np.ndarray]] | None:
    """The polygons (outer ring then holes, each ``(N, 2)`` ``x, y``) of a Polygon/MultiPolygon feature;
    None for other geometry types."""
    geom = feature.get("geometry") or {}
    kind = geom.get("type")
    coords = geom.get("coordinates")
    if kind == "Polygon":
        polys = [coords]
    elif kind == "MultiPolygon":
        polys = coords
    else:
        return None
    try:
        out = [[np.asarray(r, float).reshape(-1, 2) for r in poly] for poly in polys]
    except (TypeError, ValueError) as e:
        raise UnreadableInputError(f"{where}: its {kind} coordinates are not lists of [x, y] numbers.") from e
    if any(not np.all(np.isfinite(r)) for poly in out for r in poly):
        raise UnreadableInputError(f"{where}: its {kind} coordinates hold non-finite numbers.")
    return out


def rasterize_box(polygons: list[list[np.ndarray]], shape: tuple[int, int], offset: Sequence[float], scale: float
                  ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The polygons (level-0 ``(x, y)`` pixels, holes cleared) on the labels' grid, drawn only within their
    bounding box: ``(box, mask)`` with ``mask`` the box's pixels, or None when they miss the grid. One feature
    costs its own size, not the grid's (a slide's detections are many small polygons on a large grid)."""
    from skimage.draw import polygon as draw_polygon

    rings = [((r[:, 1] - offset[0]) / scale - 0.5, (r[:, 0] - offset[1]) / scale - 0.5)
             for poly in polygons for r in poly[:1] if len(r) >= 3]  # the outer rings bound the feature
    if not rings:
        return None
    r0 = max(0, int(np.floor(min(rows.min() for rows, _ in rings))))
    r1 = min(shape[0], int(np.ceil(max(rows.max() for rows, _ in rings))) + 1)
    c0 = max(0, int(np.floor(min(cols.min() for _, cols in rings))))
    c1 = min(shape[1], int(np.ceil(max(cols.max() for _, cols in rings))) + 1)
    if r1 <= r0 or c1 <= c0:
        return None
    mask = np.zeros((r1 - r0, c1 - c0), bool)
    for rings_ in polygons:
        for k, ring in enumerate(rings_):
            if len(ring) < 3:
                continue
            rows = (ring[:, 1] - offset[0]) / scale - 0.5 - r0
            cols = (ring[:, 0] - offset[1]) / scale - 0.5 - c0
            rr, cc = draw_polygon(rows, cols, mask.shape)
            mask[rr, cc] = k == 0  # rings after the first are holes
    return (slice(r0, r1), slice(c0, c1)), mask


def rasterize(polygons: list[list[np.ndarray]], shape: tuple[int, int], offset: Sequence[float], scale: float
              ) -> np.ndarray:
    """Boolean mask on the labels' grid of polygons given in level-0 ``(x, y)`` pixels (holes cleared)."""
    mask = np.zeros(shape, bool)
    got = rasterize_box(polygons, shape, offset, scale)
    if got is not None:
        mask[got[0]] = got[1]
    return mask


def read_geojson(path: str | os.PathLike, shape: Sequence[int], class_names: Sequence[str] | Mapping[int, str],
                 *, offset: Sequence[float] = (0, 0), scale: float = 1.0, add_classes: bool = False,
                 default_class: str | None = None) -> Objects:
    """``Objects`` on a grid of ``shape`` from a GeoJSON file (QuPath detections or annotations).

    ``class_names``: names per prediction value (``ClassSchema.names``). A feature whose class is not among
    them is an error listing those classes, unless ``add_classes`` (then each new name gets the next value;
    ``read_geojson_classes`` returns the names). ``default_class``: the class of unclassified features."""
    return read_geojson_classes(path, shape, class_names, offset=offset, scale=scale, add_classes=add_classes,
                                default_class=default_class)[0]


def read_geojson_classes(path: str | os.PathLike, shape: Sequence[int],
                         class_names: Sequence[str] | Mapping[int, str], *, offset: Sequence[float] = (0, 0),
                         scale: float = 1.0, add_classes: bool = False, default_class: str | None = None
                         ) -> tuple[Objects, dict[int, str]]:
    """``read_geojson``, also returning the class names per prediction value (with any added classes)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise MedsegError(f"GeoJSON objects are 2D; cannot read them onto a {len(shape)}D grid {shape}.")
    if float(scale) <= 0:
        raise MedsegError(f"scale must be positive, got {scale}.")
    names = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    value_of = {str(v): k for k, v in names.items()}
    feats = load_features(path)
    picked, skipped = [], 0
    unknown: dict[str, int] = {}
    for k, f in enumerate(feats):
        polys = feature_polygons(f, f"{path}, feature {k + 1}")
        if polys is None:
            skipped += 1
            continue
        name = feature_class(f) or default_class
        if name is None:
            name = "(unclassified)"
        if name not in value_of:
            if add_classes and name != "(unclassified)":
                value_of[name] = max([0, *names]) + 1
                names[value_of[name]] = name
            else:
                unknown[name] = unknown.get(name, 0) + 1
                continue
        picked.append((polys, value_of[name]))
    if unknown:
        listed = ", ".join(f"{n!r} ({c})" for n, c in unknown.items())
        raise MedsegError(f"{path}: features of classes not in {[names[k] for k in sorted(names) if k]}: {listed}. "
                          "Add these classes, rename them in QuPath, or import with add_classes (--add-classes); "
                          "give unclassified features a class with default_class (--default-class).")
    if skipped:
        warnings.warn(f"{path}: {skipped} feature(s) that are not polygons (points, lines) were skipped",
                      stacklevel=2)
    labels = np.zeros(shape, np.uint32)
    classes = [0]
    for polys, value in picked:
        got = rasterize_box(polys, shape, (float(offset[0]), float(offset[1])), float(scale))
        if got is None or not got[1].any():
            continue  # outside the grid or thinner than a pixel
        classes.append(value)
        labels[got[0]][got[1]] = len(classes) - 1
    # overlapping features: a later one may have covered an earlier one entirely; renumber 1..n
    present = np.zeros(len(classes), bool)
    present[np.unique(labels)] = True
    present[0] = True
    if not present.all():
        lut = np.cumsum(present).astype(np.uint32) - 1
        labels = lut[labels]
        classes = [c for c, keep in zip(classes, present) if keep]
    logger.info("%s: %d objects read", path, len(classes) - 1)
    return Objects(labels, np.asarray(classes, np.int32)), names
