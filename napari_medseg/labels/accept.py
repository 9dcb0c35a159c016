"""Accept a prediction into the label store for a correction round.

Prediction values (0 = background, k = class k) become store values k + 1 (1 = background), written only
where the store holds no paint (0): the user's own strokes are never overwritten. The prediction may be at
a coarser level than the store; it is mapped by physical pixel size (nearest neighbour).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.source import ImageSource

log = logging.getLogger(__name__)


def level0_region(source: ImageSource, level: int, region: tuple[slice, ...]) -> tuple[slice, ...]:
    """``region`` (spatial, in ``level`` pixels) in level-0 pixels of ``source``."""
    f = source.level_downsample(level)
    return tuple(slice(int(math.floor(s.start * k)), min(n, int(math.ceil(s.stop * k))))
                 for s, k, n in zip(region, f, source.shape))


def accept_prediction(store: Any, prediction: ImageSource, source: ImageSource, level: int,
                      region: tuple[slice, ...]) -> int:
    """Write ``prediction`` over ``region`` (``level`` pixels of ``source``) into ``store`` where it is 0.

    ``prediction`` is the labels image of a prediction (``inference.open_prediction``), opened by the caller.

    Returns the number of store pixels newly labelled. ``store`` is a ``LabelStore`` in ``source``'s level-0
    geometry (or any array-like with ``read``/``write``).
    """
    if tuple(store.shape) != tuple(source.shape):
        raise GeometryMismatchError(f"label store shape {tuple(store.shape)} differs from image shape {source.shape}")
    if prediction.kind != "labels":
        raise MedsegError("the prediction to accept is not a labels image; run the prediction first.")
    pred = prediction
    r0 = level0_region(source, level, region)
    # map level-0 store pixels to prediction pixels by physical size
    ratio = [pp / sp for pp, sp in zip(pred.pixel_size, source.pixel_size)]
    pr = tuple(slice(int(math.floor(s.start / k)), max(int(math.floor(s.start / k)) + 1, int(math.ceil(s.stop / k))))
               for s, k in zip(r0, ratio))
    for s, n in zip(pr, pred.shape):
        if s.start >= n:
            raise MedsegError("the region in view lies outside the prediction; predict the whole image first.")
    pred_block = np.asarray(pred.levels[0][pr])
    # nearest-neighbour upsampling to the store's pixels
    idx = [np.clip(((np.arange(s.start, s.stop) + 0.5) / k).astype(np.int64) - p.start, 0, pred_block.shape[i] - 1)
           for i, (s, k, p) in enumerate(zip(r0, ratio, pr))]
    up = pred_block[np.ix_(*idx)]
    if up.max(initial=0) + 1 > store.classes.max_store_value:
        raise MedsegError(f"the prediction has class {int(up.max())} but the label store's schema has only "
                          f"{store.classes.n_classes - 1} classes; check you predicted with the right model.")
    current = np.asarray(store.read(r0))
    free = current == 0
    new = np.where(free, up.astype(np.uint8) + 1, current).astype(current.dtype)
    n = int(free.sum())
    if n:
        store.write(r0, new)
        store.flush()
    log.info("accepted %d predicted pixels into %s", n, getattr(store, "path", "the label store"))
    return n
