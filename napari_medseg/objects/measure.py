"""Measurements of objects: one table row per object id, in physical units.

``measure_objects(labels, classes, ...)`` measures an instance label array (0 = no object, ids 1..n)
(2D and 3D): sizes, centroids, intensities and the moment-based shape features (axes, eccentricity,
orientation: scikit-image's definitions) in one vectorised pass over the object pixels, the perimeter and
solidity with ``skimage.measure.regionprops_table`` (one pass per object, skipped with ``shape="basic"``).
It returns a ``pandas.DataFrame`` with the columns
documented in docs/objects.md:

- ``id``, ``class`` (the class name of the id);
- ``centroid_<ax>_px``: the centroid in level-0 pixels of the whole image (the crop's ``offset`` added), and
  ``centroid_<ax>_<unit>``: the same in physical units, ``ax`` in ``z``, ``y``, ``x``;
- ``area_<unit>2`` (2D) or ``volume_<unit>3`` (3D; with ``unit="um"`` also ``volume_mm3``, the unit
  radiologists give lesions in), and ``n_pixels`` (``n_voxels``);
- ``mean_<channel>``: the mean intensity of each image channel inside the object, when ``image`` is given
  (a numpy ``YX``/``YXC``/``ZYX``/``CZYX`` array of the labels' shape, or an ``ImageSource``, read over the
  objects' bounding box only);
- shape features. 2D: ``perimeter_<unit>``, ``eccentricity``, ``solidity``, ``major_axis_<unit>``,
  ``minor_axis_<unit>``, ``orientation_deg`` (angle between the row axis and the major axis, as scikit-image
  defines it). 3D: ``equivalent_diameter_<unit>``, ``extent``, ``solidity`` (NaN for objects too flat for a
  3D convex hull). The perimeter needs square pixels: NaN otherwise.

The pixel size defaults to the ``ImageSource``'s (converted to ``unit``). The table's ``attrs`` keep the
geometry (``pixel_size``, ``unit``, ``shape``, ``offset``, ``downsample``) that ``summarize`` uses for
areas and densities. ``summarize``, ``write_table`` and ``read_table`` live in ``objects/tables.py`` and are
re-exported here.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.source import ImageSource, read_box
from napari_medseg.objects.tables import normalize_unit, read_table, summarize, write_table

__all__ = ["measure_objects", "summarize", "write_table", "read_table", "class_name_of", "normalize_unit",
           "AXES"]

#: column letters of the spatial axes, by number of dimensions
AXES = {2: "yx", 3: "zyx"}


def class_name_of(value: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    """The name of prediction value ``value``: ``class_names[value]`` (a sequence indexed by prediction value,
    e.g. ``ClassSchema.names``, or a mapping), or ``"class <value>"``."""
    if class_names is not None:
        if isinstance(class_names, Mapping):
            if value in class_names:
                return str(class_names[value])
        elif 0 <= value < len(class_names):
            return str(class_names[value])
    return f"class {value}"


def _column(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower() or "channel"


def _check_labels(labels: Any, classes: Any) -> tuple[np.ndarray, np.ndarray]:
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise MedsegError(f"objects are measured in 2D (YX) or 3D (ZYX) label arrays, got shape {lab.shape}.")
    if lab.dtype.kind not in "ui" and lab.dtype != bool:
        raise MedsegError(f"an instance label array holds integer ids, got {lab.dtype}.")
    if lab.size and lab.min() < 0:
        raise MedsegError("object ids must be >= 0 (0 = no object).")
    n = int(lab.max()) if lab.size else 0
    if classes is None:
        cls = np.ones(n + 1, np.int64)
        cls[0] = 0
    else:
        cls = np.asarray(classes, np.int64).ravel()
        if len(cls) < n + 1:
            raise MedsegError(f"the labels hold ids up to {n} but classes has only {len(cls)} entries "
                              "(one per id, classes[0] for 'no object'); pass the objects' own classes.")
    return lab.astype(np.int64, copy=False) if lab.dtype.kind != "u" or lab.dtype.itemsize > 4 else lab, cls


def _pixel_size(lab_ndim: int, pixel_size: Any, image: Any, unit: str, level: int
                ) -> tuple[tuple[float, ...], str, tuple[float, ...]]:
    """Labels' pixel size per axis in ``unit``, the short unit, and the labels' downsample vs level 0."""
    short, metres = normalize_unit(unit)
    down = (1.0,) * lab_ndim
    if isinstance(image, ImageSource):
        if image.spatial_dims != lab_ndim:
            raise GeometryMismatchError(f"the image is {image.spatial_dims}D ({image.spatial_axes}) but the "
                                        f"objects are {lab_ndim}D.")
        if not 0 <= level < len(image.levels):
            raise MedsegError(f"level {level} is not a level of the image (it has {len(image.levels)}).")
        down = image.level_downsample(level)
    if pixel_size is not None:
        px = np.atleast_1d(np.asarray(pixel_size, float))
        if px.size == 1:
            px = np.repeat(px, lab_ndim)
        if px.size != lab_ndim or not np.all(np.isfinite(px)) or np.any(px <= 0):
            raise MedsegError(f"pixel_size {pixel_size} needs one positive value (or one per axis of the "
                              f"{lab_ndim}D objects).")
        return tuple(float(v) for v in px), short, down
    if isinstance(image, ImageSource) and normalize_unit(image.unit)[1] > 0 and metres > 0:
        src_m = normalize_unit(image.unit)[1]
        return tuple(p * src_m / metres for p in image.level_pixel_size(level)), short, down
    if isinstance(image, ImageSource) and short == "px":
        return tuple(float(d) for d in down), short, down
    if short != "px":
        warnings.warn(f"no pixel size is known: measuring in pixels, not {unit}", stacklevel=3)
    return (1.0,) * lab_ndim, "px", down


def _channel_names(n: int, given: Sequence[str] | None, image: Any) -> list[str]:
    if given is not None:
        if len(given) != n:
            raise MedsegError(f"{len(given)} channel names for an image with {n} channels.")
        names = [str(c) for c in given]
    elif isinstance(image, ImageSource) and len(image.channel_names) == n:
        names = list(image.channel_names)
    elif n == 3 or (n == 4 and isinstance(image, ImageSource) and image.rgb):
        names = ["red", "green", "blue", "alpha"][:n]
    elif n == 1:
        names = ["intensity"]
    else:
        names = [f"ch{i}" for i in range(n)]
    cols = [_column(c) for c in names]
    if len(set(cols)) != len(cols):
        cols = [f"{c}_{i}" for i, c in enumerate(cols)]
    return cols


def _intensity(image: Any, lab: np.ndarray, start: tuple[int, ...], stop: tuple[int, ...], level: int,
               offset: tuple[float, ...], down: tuple[float, ...]) -> np.ndarray:
    """The image over the labels' box ``[start, stop)`` as ``(*spatial, C)`` (float)."""
    if isinstance(image, ImageSource):
        if any(abs(o / d - round(o / d)) > 1e-6 for o, d in zip(offset, down)):
            raise MedsegError(f"offset {offset} is not a whole number of level-{level} pixels.")
        base = [int(round(o / d)) for o, d in zip(offset, down)]
        box = [(b + s, b + e) for b, s, e in zip(base, start, stop)]
        return read_box(image, level, box, pad=0, channels_last=True).astype(np.float64, copy=False)
    img = np.asarray(image)
    sh = lab.shape
    if img.shape == sh:
        img = img[..., None]
    elif img.ndim == lab.ndim + 1 and lab.ndim == 2 and img.shape[:2] == sh:
        pass  # YXC
    elif img.ndim == lab.ndim + 1 and img.shape[1:] == sh:
        img = np.moveaxis(img, 0, -1)  # CZYX (or CYX)
    else:
        raise GeometryMismatchError(f"the image's shape {img.shape} does not fit objects of shape {sh} (expected "
                                    "YX/YXC for 2D objects, ZYX/CZYX for 3D, same spatial shape).")
    sl = tuple(slice(a, b) for a, b in zip(start, stop))
    return img[sl].astype(np.float64, copy=False)


def _moments(crop: np.ndarray, ids: np.ndarray, px: tuple[float, ...], intens: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per id (in ``ids`` order), from one pass over the object pixels with ``np.bincount``: pixel counts
    ``(n,)``, centroids in crop pixels ``(n, nd)``, the physical covariance of the pixel positions
    ``(n, nd, nd)`` (scikit-image's inertia tensor is built from it) and the channel means ``(n, C)``."""
    nd = crop.ndim
    flat = crop.ravel()
    nz = np.flatnonzero(flat)
    lab = flat[nz].astype(np.int64)
    size = int(ids.max()) + 1 if len(ids) else 1
    count = np.bincount(lab, minlength=size).astype(float)
    coords = np.unravel_index(nz, crop.shape)
    safe = np.maximum(count, 1)
    means = [np.bincount(lab, weights=c, minlength=size) / safe for c in coords]
    centred = [c - m[lab] for c, m in zip(coords, means)]
    cov = np.zeros((size, nd, nd))
    for i in range(nd):
        for j in range(i, nd):
            v = np.bincount(lab, weights=centred[i] * centred[j], minlength=size) / safe * px[i] * px[j]
            cov[:, i, j] = cov[:, j, i] = v
    chan = None
    if intens is not None:
        vals = intens.reshape(-1, intens.shape[-1])[nz]
        chan = np.stack([np.bincount(lab, weights=vals[:, k], minlength=size) / safe
                         for k in range(vals.shape[1])], axis=1)[ids]
    return count[ids], np.stack(means, axis=1)[ids], cov[ids], chan


def _ellipse_2d(cov: np.ndarray) -> dict[str, np.ndarray]:
    """Major / minor axis lengths, eccentricity and orientation of the ellipse with the same second moments,
    as scikit-image's regionprops defines them (``4 sqrt(eigenvalue)`` of the inertia tensor; orientation:
    angle between the row axis and the major axis, in radians)."""
    a, b, c = cov[:, 1, 1], -cov[:, 0, 1], cov[:, 0, 0]  # inertia tensor [[a, b], [b, c]]
    half = (a + c) / 2
    root = np.sqrt(np.maximum(((a - c) / 2) ** 2 + b ** 2, 0))
    l1, l2 = np.maximum(half + root, 0), np.maximum(half - root, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.maximum(1 - l2 / np.where(l1 > 0, l1, 1), 0)), 0.0)
    orient = np.where(a - c == 0, np.where(b < 0, -np.pi / 4, np.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
    return {"major": 4 * np.sqrt(l1), "minor": 4 * np.sqrt(l2), "eccentricity": ecc, "orientation": orient}


def measure_objects(labels: Any, classes: Any, *, image: Any = None, pixel_size: Any = None, unit: str = "um",
                    class_names: Sequence[str] | Mapping[int, str] | None = None,
                    channel_names: Sequence[str] | None = None, offset: Sequence[float] | None = None,
                    level: int = 0, shape: str = "full") -> Any:
    """One row per object id of ``labels`` (see the module docstring for the columns).

    ``classes[id]`` is the prediction value of each id's class (``Objects.classes``; None: all class 1),
    named by ``class_names`` (``ClassSchema.names``). ``offset``: the labels' origin in level-0 pixels when
    they are a crop of a larger image (per spatial axis, ``(y, x)`` or ``(z, y, x)``). ``level``: the level of
    the ``ImageSource`` the labels lie on (a prediction made at a coarser level); pixel sizes and the
    intensity reads follow it. ``shape``: ``"full"`` (every shape feature) or ``"basic"`` (those of the
    second moments only: no perimeter, no solidity, which need one scikit-image pass per object and
    cost 2-4x the rest on a block of nuclei; for whole slides of millions of objects)."""
    import pandas as pd
    from skimage.measure import regionprops_table

    if shape not in ("full", "basic"):
        raise MedsegError(f"shape must be 'full' or 'basic', got {shape!r}")
    lab, cls = _check_labels(labels, classes)
    nd = lab.ndim
    axes = AXES[nd]
    px, u, down = _pixel_size(nd, pixel_size, image, unit, level)
    off = tuple(float(v) for v in (offset if offset is not None else (0.0,) * nd))
    if len(off) != nd:
        raise MedsegError(f"offset {tuple(off)} needs one value per axis ({axes}) of the objects.")
    # crop to the objects' bounding box: less to measure and to read
    nz = [np.flatnonzero(lab.any(axis=tuple(j for j in range(nd) if j != i))) for i in range(nd)]
    empty = any(len(n) == 0 for n in nz)
    start = tuple(0 if empty else int(n[0]) for n in nz)
    stop = tuple(min(1, s) if empty else int(n[-1]) + 1 for n, s in zip(nz, lab.shape))  # empty: 1 px
    crop = lab[tuple(slice(a, b) for a, b in zip(start, stop))]
    intens = None
    chans: list[str] = []
    if image is not None:
        intens = _intensity(image, lab, start, stop, level, off, down)
        chans = _channel_names(intens.shape[-1], channel_names, image)
    ids = np.flatnonzero(np.bincount(crop.ravel().astype(np.int64))[1:]) + 1 if not empty else np.zeros(0, np.int64)
    n_px, cen, cov, chan = _moments(crop, ids, px, intens)
    out: dict[str, Any] = {"id": ids,
                           "class": [class_name_of(int(cls[i]), class_names) for i in ids]}
    for i, a in enumerate(axes):
        c_px = cen[:, i] + start[i] if len(ids) else np.zeros(0)
        lvl0 = c_px * down[i] + off[i] + (down[i] - 1) / 2  # a coarse pixel's centre in level-0 pixels
        out[f"centroid_{a}_px"] = lvl0
        out[f"centroid_{a}_{u}"] = lvl0 * px[i] / down[i]
    size = n_px * float(np.prod(px))
    n_int = np.rint(n_px).astype(np.int64)
    iso = np.allclose(px[-2:], px[-1], rtol=1e-3)
    extra: dict[str, Any] = {}
    if shape == "full" and len(ids):
        props = ["label"] + (["solidity"] + (["perimeter"] if iso else []) if nd == 2 else ["extent"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            extra = regionprops_table(crop, properties=props, spacing=px)
    nan = np.full(len(ids), np.nan)
    if nd == 2:
        ell = _ellipse_2d(cov) if len(ids) else {k: nan for k in ("major", "minor", "eccentricity", "orientation")}
        out[f"area_{u}2"] = size
        out["n_pixels"] = n_int
        out[f"perimeter_{u}"] = np.asarray(extra["perimeter"], float) if "perimeter" in extra else nan
        out["eccentricity"] = ell["eccentricity"]
        out["solidity"] = np.asarray(extra["solidity"], float) if "solidity" in extra else nan
        out[f"major_axis_{u}"] = ell["major"]
        out[f"minor_axis_{u}"] = ell["minor"]
        out["orientation_deg"] = np.degrees(ell["orientation"])
    else:
        out[f"volume_{u}3"] = size
        if u == "um":
            out["volume_mm3"] = size * 1e-9
        out["n_voxels"] = n_int
        out[f"equivalent_diameter_{u}"] = (6 * size / np.pi) ** (1 / 3)
        out["extent"] = np.asarray(extra["extent"], float) if "extent" in extra else nan
        out["solidity"] = _solidity_3d(crop, ids) if shape == "full" else nan
    for j, c in enumerate(chans):
        out[f"mean_{c}"] = chan[:, j] if chan is not None else nan
    df = pd.DataFrame(out)
    df.attrs.update({"pixel_size": list(px), "unit": u, "shape": list(lab.shape), "offset": list(off),
                     "downsample": list(down), "ndim": nd})
    return df


def _solidity_3d(crop: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Solidity (volume / convex hull volume) per id; NaN where Qhull cannot build a 3D hull (flat objects)."""
    from skimage.measure import regionprops

    out = np.full(len(ids), np.nan)
    pos = {int(i): k for k, i in enumerate(ids)}
    for r in regionprops(crop):
        if min(r.image.shape) < 2:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[pos[int(r.label)]] = float(r.solidity)
        except Exception:  # Qhull errors on degenerate (coplanar) objects
            continue
    return out
