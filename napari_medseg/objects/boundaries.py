"""The ``object boundary`` class, derived from the painting: what lets a model trained on painted pixels tell
touching objects apart.

A semantic model that only learns "nucleus" vs "background" predicts two touching nuclei as one blob. With the
boundary class it learns a third thing: the rim of each object. ``find_objects`` (``instances.py``) then takes
the interiors (object pixels that are not rim) as one seed per object and grows them back into the rim.

Nobody paints rims by hand. Training derives them from the painting (``mark_boundaries``, applied to every
labelled and validation patch when the schema has object classes):

- a pixel painted with an object class becomes ``object boundary`` when a pixel painted with *another* value
  (background, another class, another object class) lies within ``width`` pixels;
- unpainted pixels (store value 0) say nothing: a nucleus scribble with nothing painted around it gets no rim,
  so sparse scribbles never teach false rims;
- pixels painted ``object boundary`` by hand stay so, and do not themselves mark their neighbours.

How to paint touching objects so that they can be told apart:

1. paint each object with its class, then draw a thin *background* stroke along the line where two objects
   touch (a 1-3 px brush): the object pixels on both sides of the stroke become boundary, so the model learns
   that a gap, however thin, separates two objects; or
2. paint the ``object boundary`` class directly along the contact line (the brush with that class).

Painting two touching objects with the class in one stroke, with no background or boundary between them, says
they are one object. Around isolated objects, painting some background next to them is enough for their rim.

``instances_to_store`` does the same for *complete* instance label images (ground truth instances, proofread
objects, imported GeoJSON detections): every object's rim where it touches background or another instance
becomes boundary, so objects that touch without a gap are still separated. ``mark_dense_boundaries`` does it
for a dense mask in prediction values (a validation mask or a mask from a folder), whose instances are the
connected regions of each object class.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from napari_medseg.core.classes import BACKGROUND, ClassSchema
from napari_medseg.core.errors import MedsegError


@lru_cache(maxsize=16)
def _footprint(ndim: int, width: int) -> np.ndarray:
    """A disk (2D) or ball (3D) of radius ``width``: the pixels within ``width`` pixels (Euclidean)."""
    grid = np.indices((2 * width + 1,) * ndim) - width
    return (grid ** 2).sum(0) <= width * width


def _check(arr: np.ndarray, width: int, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim not in (2, 3):
        raise MedsegError(f"{what} must be a 2D or 3D array, got shape {a.shape}")
    if a.dtype.kind not in "uib":
        raise MedsegError(f"{what} must hold integer values, got {a.dtype}")
    if int(width) < 1:
        raise MedsegError(f"the boundary width must be at least 1 pixel, got {width}")
    return a


def mark_boundaries(store_lab: np.ndarray, schema: ClassSchema, width: int = 2) -> np.ndarray:
    """``store_lab`` (label-store values, 2D or 3D) with the rims of painted objects as ``object boundary``.

    A pixel of an object class becomes the boundary store value when a pixel painted with another value
    (neither 0 = not annotated nor the boundary itself) lies within ``width`` pixels. Returns a new array of the
    same dtype, or ``store_lab`` itself when the schema has no object or boundary class or nothing changes.
    """
    b = schema.boundary_value
    if b is None:
        return store_lab
    lab = _check(store_lab, width, "a label patch")
    bs = b + 1
    obj_values = [v + 1 for v in schema.object_values]
    present = [v for v in obj_values if (lab == v).any()]
    if not present:
        return store_lab
    fp = _footprint(lab.ndim, int(width))
    out = None
    for v in present:
        trigger = (lab != 0) & (lab != v) & (lab != bs)
        if not trigger.any():
            continue
        own = lab == v
        # only the bounding box of the class (plus the reach) needs the dilation
        box = _box(own, int(width))
        near = ndi.maximum_filter(trigger[box].view(np.uint8), footprint=fp, mode="constant") > 0
        hit = own[box] & near
        if hit.any():
            if out is None:
                out = lab.copy()
            out[box][hit] = bs
    return store_lab if out is None else out


def _box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask``, grown by ``pad`` on every side (clipped to the array)."""
    sl = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        sl.append(slice(max(0, int(idx[0]) - pad), min(mask.shape[ax], int(idx[-1]) + pad + 1)))
    return tuple(sl)


def mark_dense_boundaries(mask: np.ndarray, schema: ClassSchema, width: int = 2) -> np.ndarray:
    """A dense mask in prediction values (0 = background, k = class k) with the rim of each connected region of
    an object class as the boundary class (where it touches background or another class); other pixels keep
    their value. Unchanged when the schema has no boundary class."""
    b = schema.boundary_value
    if b is None:
        return mask
    m = _check(mask, width, "a dense mask")
    if m.size and int(m.max()) >= schema.n_classes:
        raise MedsegError(f"the dense mask holds value {int(m.max())} but the schema has only "
                          f"{schema.n_classes - 1} classes")
    store = m.astype(np.uint8) + np.uint8(1)
    marked = mark_boundaries(store, schema, width)
    if marked is store:
        return mask
    return (marked - np.uint8(1)).astype(m.dtype, copy=False)


def instances_to_store(instance_labels: np.ndarray, classes: np.ndarray | int, schema: ClassSchema,
                       width: int = 2) -> np.ndarray:
    """Label-store values (uint8) of a complete instance label image: the pixels of object ``i`` get the store
    value of ``classes[i]`` (its prediction value; an int gives every object that class), the rim of every object
    where it lies within ``width`` pixels of background or of another instance gets the boundary store value,
    every other pixel is background (1). The image border is no rim."""
    b = schema.boundary_value
    if b is None:
        raise MedsegError(f"the classes {list(schema.names[1:])} have no object classes with the "
                          "'object boundary' class: mark the object classes first (schema.with_objects)")
    ids = _check(instance_labels, width, "an instance label image")
    if ids.dtype.kind == "i" and ids.size and int(ids.min()) < 0:
        raise MedsegError("the instance labels hold negative ids; use 0 for no object and positive ids")
    ids = ids.astype(np.int64 if ids.dtype.kind == "i" else ids.dtype, copy=False)
    n = int(ids.max()) if ids.size else 0
    if np.isscalar(classes) or np.ndim(classes) == 0:
        cls = np.full(n + 1, int(classes), np.int64)
    else:
        cls = np.asarray(classes, np.int64)
        if cls.ndim != 1 or len(cls) < n + 1:
            raise MedsegError(f"the instance labels hold ids up to {n} but {len(cls)} classes were given "
                              "(one per id, index 0 for 'no object')")
    cls = cls.copy()
    cls[0] = 0
    objs = np.asarray(cls[1:n + 1])
    bad = sorted({int(c) for c in objs[(objs < 1) | (objs >= schema.n_classes)]})
    if bad:
        raise MedsegError(f"instance classes {bad[:5]} are not classes of the schema (1..{schema.n_classes - 1})")
    out = (cls[ids] + BACKGROUND).astype(np.uint8)
    fg = ids > 0
    if fg.any():
        fp = _footprint(ids.ndim, int(width))
        box = _box(fg, int(width))
        sub = ids[box]
        hi = ndi.grey_dilation(sub, footprint=fp, mode="nearest")
        lo = ndi.grey_erosion(sub, footprint=fp, mode="nearest")
        rim = (sub > 0) & ((hi != sub) | (lo != sub))
        out[box][rim] = b + BACKGROUND
    return out
