"""Instances from a prediction: the objects of each object class, told apart by the predicted boundary.

``find_objects(pred, schema)`` takes prediction values (0 = background, k = class k; 2D or 3D) and returns
``Objects``: an instance label array (``uint32``, 0 = no object, ids 1..n) and the class of each id. The
recipe is the boundary-class one of the 3-class U-Net used for nuclei (interior / boundary / background):

1. seeds: the connected components (face connectivity) of each object class's interior; the predicted
   ``object boundary`` pixels separate touching objects, so each seed is one object;
2. each seed grows into the boundary pixels around it (nearest seed wins, at most ``grow`` pixels), so
   objects keep their full extent;
3. objects smaller than ``min_size`` pixels are dropped; ids are renumbered 1..n in raster order of the
   objects' first pixel, so the same prediction always gives the same ids.

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
    """Drop objects under ``min_size`` pixels; ids 1..n in raster order of the objects' first pixel."""
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=len(classes_of))
    keep = sizes >= max(1, int(min_size))
    keep[0] = False
    # first pixel of each id in raster order
    ids, first = np.unique(flat, return_index=True)
    order = ids[np.argsort(first)]
    order = order[keep[order]]
    lut = np.zeros(len(classes_of), np.uint32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.uint32)
    out = lut[labels]
    classes = np.zeros(len(order) + 1, np.int32)
    classes[1:] = classes_of[order]
    return Objects(out, classes)


def find_objects(pred: np.ndarray, schema: ClassSchema, *, min_size: int = 0, grow: int = 3) -> Objects:
    """Instances of every object class of ``schema`` in ``pred`` (prediction values)."""
    pred = _check(pred, schema)
    b = schema.boundary_value
    seeds = np.zeros(pred.shape, np.uint32)
    classes_of = [0]
    for v in schema.object_values:
        lab, n = ndi.label(pred == v)
        if n:
            seeds[lab > 0] = lab[lab > 0] + np.uint32(len(classes_of) - 1)
            classes_of.extend([v] * n)
    classes_arr = np.asarray(classes_of, np.int32)
    if b is not None and grow > 0 and len(classes_of) > 1:
        boundary = pred == b
        if boundary.any():
            # nearest seed pixel of every boundary pixel, within ``grow`` pixels
            dist, idx = ndi.distance_transform_edt(seeds == 0, return_indices=True)
            near = seeds[tuple(idx)]
            take = boundary & (dist <= grow)
            seeds[take] = near[take]
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
