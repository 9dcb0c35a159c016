"""Instances from a prediction: the objects of each object class, told apart by the predicted boundary.

``find_objects(pred, schema)`` takes prediction values (0 = background, k = class k; 2D or 3D) and returns
``Objects``: an instance label array (``uint32``, 0 = no object, ids 1..n) and the class of each id. The
recipe is the boundary-class one of the 3-class U-Net used for nuclei (interior / boundary / background):

1. seeds: the connected components (face connectivity) of each object class's interior; the predicted
   ``object boundary`` pixels separate touching objects, so each seed is one object; interior fragments
   smaller than ``min_seed`` pixels (speckle of an uncertain prediction) are no seeds: they are treated like
   boundary pixels (joined to a nearby seed, else dropped);
2. each seed grows into the boundary pixels around it, one face-neighbour step at a time (at most
   ``grow`` steps, through boundary pixels only), so objects keep their full extent; a pixel reached by two
   seeds in the same step joins the one in a fixed direction order, so a window of a slide gives the same
   objects as the whole slide;
3. objects smaller than ``min_size`` pixels are dropped; ids are 1..n class by class (in the schema's
   order of object classes), within a class in raster order of each seed's first pixel, so the same
   prediction always gives the same ids.

Without a boundary class the objects are the connected components of each object class.
``watershed_objects`` is the classic alternative that needs no boundary class (distance transform, one
marker per local maximum, watershed), kept as the baseline to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError


@dataclass
class Objects:
    labels: np.ndarray  # uint32, 0 = no object, 1..n
    classes: np.ndarray  # (n + 1,) prediction value of each id's class; classes[0] = 0

    @property
    def n(self) -> int:
        return len(self.classes) - 1


def _check(pred: np.ndarray, schema: ClassSchema) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.ndim not in (2, 3):
        raise MedsegError(f"objects are found in 2D or 3D predictions, got an array of shape {pred.shape}")
    if pred.dtype.kind not in "ui":
        raise MedsegError(f"a prediction holds integer class values, got {pred.dtype}")
    if not schema.objects:
        raise MedsegError(f"no class is marked as objects in {list(schema.names[1:])}: mark the classes to count "
                          "and measure (e.g. nuclei) as object classes first")
    return pred


def _renumber(labels: np.ndarray, classes_of: np.ndarray, min_size: int) -> Objects:
    """Drop objects under ``min_size`` pixels and number the others 1..n, keeping their order."""
    sizes = np.bincount(labels.ravel(), minlength=len(classes_of))
    keep = sizes >= max(1, int(min_size))
    keep[0] = False
    order = np.flatnonzero(keep)
    if len(order) == len(classes_of) - 1:  # nothing dropped: the ids are already 1..n
        return Objects(labels, np.asarray(classes_of, np.int32))
    lut = np.zeros(len(classes_of), np.uint32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.uint32)
    classes = np.zeros(len(order) + 1, np.int32)
    classes[1:] = classes_of[order]
    return Objects(lut[labels], classes)


def _shifted(a: np.ndarray, axis: int, step: int) -> np.ndarray:
    """``a`` moved by ``step`` (+1 / -1) along ``axis``, zero-filled: out[i] = a[i - step]."""
    out = np.zeros_like(a)
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    src[axis], dst[axis] = (slice(None, -1), slice(1, None)) if step > 0 else (slice(1, None), slice(None, -1))
    out[tuple(dst)] = a[tuple(src)]
    return out


def _grow_into(seeds: np.ndarray, room: np.ndarray, steps: int) -> None:
    """Grow ``seeds`` (in place) into the pixels of ``room``, one face-neighbour step at a time, at most
    ``steps`` steps: a pixel joins the seed of its first labelled neighbour in a fixed direction order, so
    the result depends on the pixels around it, never on the ids (a window of a slide gives the same
    objects as the whole slide)."""
    room = room & (seeds == 0)
    for _ in range(int(steps)):
        if not room.any():
            return
        new = np.zeros_like(seeds)
        for axis in range(seeds.ndim):
            for step in (1, -1):
                nb = _shifted(seeds, axis, step)
                take = room & (new == 0) & (nb > 0)
                new[take] = nb[take]
        grown = new > 0
        if not grown.any():
            return
        seeds[grown] = new[grown]
        room &= ~grown


def find_objects(pred: np.ndarray, schema: ClassSchema, *, min_size: int = 0, grow: int = 3,
                 min_seed: int = 0) -> Objects:
    """Instances of every object class of ``schema`` in ``pred`` (prediction values)."""
    pred = _check(pred, schema)
    b = schema.boundary_value
    seeds = np.zeros(pred.shape, np.uint32)
    classes_of = [0]
    for v in schema.object_values:
        lab, n = ndi.label(pred == v)
        if n:
            fg = lab > 0
            seeds[fg] = lab[fg].astype(np.uint32) + np.uint32(len(classes_of) - 1)
            classes_of.extend([v] * n)
    classes_arr = np.asarray(classes_of, np.int32)
    fragments = None
    if min_seed > 1 and len(classes_of) > 1:
        small = np.bincount(seeds.ravel(), minlength=len(classes_of)) < int(min_seed)
        small[0] = False
        if small.any():
            fragments = small[seeds]
            seeds[fragments] = 0
    if b is not None and grow > 0 and len(classes_of) > 1:
        room = pred == b
        if fragments is not None:
            room |= fragments
        if room.any() and seeds.any():
            _grow_into(seeds, room, grow)
    return _renumber(seeds, classes_arr, min_size)


def watershed_objects(foreground: np.ndarray, *, min_distance: int = 4, min_size: int = 0,
                      value: int = 1) -> Objects:
    """The baseline: split a foreground mask at the saddles of its distance transform (one marker per
    local maximum at least ``min_distance`` pixels apart, scikit-image watershed)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    fg = np.asarray(foreground).astype(bool)
    if fg.ndim not in (2, 3):
        raise MedsegError(f"objects are found in 2D or 3D masks, got shape {fg.shape}")
    dist = ndi.distance_transform_edt(fg)
    comps, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=max(1, int(min_distance)), labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, np.uint32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.uint32)
    lab = watershed(-dist, markers, mask=fg).astype(np.uint32)
    # components without a marker (tiny or flat) stay objects of their own
    missing = fg & (lab == 0)
    if missing.any():
        extra, n = ndi.label(missing)
        lab[extra > 0] = extra[extra > 0] + np.uint32(len(peaks))
    classes = np.full(int(lab.max()) + 1, value, np.int32)
    classes[0] = 0
    return _renumber(lab, classes, min_size)
