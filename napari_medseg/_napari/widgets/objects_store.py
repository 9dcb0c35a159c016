"""Proofread objects into the image's label store ("Send to training labels" of the Objects widget).

``send_objects(store, objects, ...)`` writes, over the objects' bounding region only (mapped onto the store's
pixels by physical position: nearest neighbour when the objects lie on a coarser grid), the store values of
``objects.boundaries.instances_to_store``: each object's class, a boundary rim where objects touch each
other or the background, and elsewhere in the region the prediction's own class (background, or the
non-object classes such as stroma) so that nothing false is taught there. It writes only where the store
holds no paint, an object class or the boundary class: the user's own strokes of background and of other
classes stay. It returns the region and what the store held there before, so the widget can undo it
(``restore``). No Qt here; the widget passes plain arrays and geometry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medseg.core.classes import BACKGROUND, ClassSchema
from napari_medseg.core.errors import MedsegError

#: a region larger than this many store pixels is refused (one step in memory: 3 arrays of this size)
MAX_SEND_PIXELS = 256 * 2**20


@dataclass
class Sent:
    """One write into the store: its region (store pixels), what was there before, pixels changed."""

    region: tuple[slice, ...]
    before: np.ndarray
    changed: int


def _store_values_of(pred_schema: ClassSchema, store_schema: ClassSchema) -> np.ndarray:
    """Prediction value -> store value, by class name (a prediction class the store lacks -> 0)."""
    lut = np.zeros(pred_schema.n_classes + 1, np.int64)
    for v, name in enumerate(pred_schema.names):
        if name in store_schema.names:
            lut[v] = store_schema.names.index(name) + BACKGROUND
    lut[0] = BACKGROUND
    return lut


def store_region(box: Sequence[slice], obj_scale: Sequence[float], obj_translate: Sequence[float],
                 store_scale: Sequence[float], store_translate: Sequence[float],
                 store_shape: Sequence[int]) -> tuple[tuple[slice, ...], list[np.ndarray]]:
    """The store region covering ``box`` (objects pixels) and, per axis, the objects pixel under each store
    pixel's centre (indices into ``box``)."""
    region, idx = [], []
    for s, osc, otr, ssc, strn, n in zip(box, obj_scale, obj_translate, store_scale, store_translate, store_shape):
        lo = max(0, int(math.floor((otr + s.start * osc - strn) / ssc + 1e-6)))
        hi = min(int(n), int(math.ceil((otr + s.stop * osc - strn) / ssc - 1e-6)))
        if hi <= lo:
            raise MedsegError("the objects lie outside the image's labels: were they found on a prediction of "
                              "another image?")
        centres = strn + (np.arange(lo, hi) + 0.5) * ssc
        j = np.floor((centres - otr) / osc).astype(np.int64) - s.start
        idx.append(np.clip(j, 0, s.stop - s.start - 1))
        region.append(slice(lo, hi))
    return tuple(region), idx


def send_objects(store: Any, labels: np.ndarray, classes: np.ndarray, box: tuple[slice, ...], *,
                 pred: np.ndarray | None, pred_schema: ClassSchema, obj_scale: Sequence[float],
                 obj_translate: Sequence[float], store_translate: Sequence[float] | None = None,
                 width: int = 2) -> Sent:
    """Write the objects of ``labels[box]`` (classes: prediction values of ``pred_schema``) into ``store``
    (see module). ``pred`` is the semantic prediction on the objects' grid (None: background around the
    objects). Returns what ``restore`` needs to undo it."""
    from napari_medseg.objects.boundaries import instances_to_store

    sch = store.classes
    if sch.boundary_value is None:
        names = [pred_schema.names[v] for v in sorted({int(c) for c in classes[1:] if c > 0})]
        raise MedsegError(f"the labels of this image have no object classes: tick 'Obj.' for {', '.join(names)} "
                          "in the Annotate widget's class table (it adds the 'object boundary' class), then send "
                          "the objects again.")
    lut = _store_values_of(pred_schema, sch)
    used = {int(c) for c in np.unique(classes[1:]) if c > 0}
    missing = [pred_schema.names[v] for v in used if lut[v] == 0]
    if missing:
        raise MedsegError(f"the labels of this image have no class {', '.join(map(repr, missing))}: add it in the "
                          "Annotate widget (same name), then send the objects again.")
    st = tuple(store_translate) if store_translate is not None else (0.0,) * store.ndim
    pad = int(width) + 1  # the objects' outer rims lie inside the region (its edge makes no rim)
    box = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, labels.shape))
    region, idx = store_region(box, obj_scale, obj_translate, store.pixel_size, st, store.shape)
    if math.prod(s.stop - s.start for s in region) > MAX_SEND_PIXELS:
        raise MedsegError("the objects span too large a region to send at once; delete the objects you do not "
                          "want to train on, or find objects on a smaller region")
    sub = np.asarray(labels[box])[np.ix_(*idx)]
    cls_store = np.zeros(len(classes), np.int64)  # store values -> prediction values of the store's schema
    cls_store[1:] = np.where(classes[1:] > 0, lut[np.asarray(classes[1:], np.int64)] - BACKGROUND, 0)
    cls_store[1:][cls_store[1:] <= 0] = 0
    ids = np.where(cls_store[sub] > 0, sub, 0)  # removed ids (class 0) are no objects
    values = instances_to_store(ids, cls_store, sch, width=width).astype(np.uint8)
    if pred is not None:
        p = np.asarray(pred[box])[np.ix_(*idx)]
        semantic = lut[p]
        object_like = np.isin(p, [*pred_schema.object_values,
                                  *([pred_schema.boundary_value] if pred_schema.boundary_value else [])])
        keep = (ids == 0) & ~object_like & (semantic > 0)
        values[keep] = semantic[keep]
    current = np.asarray(store.read(region))
    replaceable = (current == 0) | np.isin(current, [v + BACKGROUND for v in (*sch.object_values,
                                                                                   sch.boundary_value)])
    new = np.where(replaceable, values, current).astype(current.dtype)
    changed = int(np.count_nonzero(new != current))
    if changed:
        store.write(region, new)
        store.flush()
    return Sent(region, current, changed)


def restore(store: Any, sent: Sent) -> None:
    """Undo ``send_objects``: the region back as it was before the send (strokes painted there since go too)."""
    store.write(sent.region, sent.before)
    store.flush()


__all__ = ["MAX_SEND_PIXELS", "Sent", "restore", "send_objects", "store_region"]
