"""The size of the painted objects, recorded in the checkpoint so that prediction can show a model objects at
the size it learnt them (``inference.zoom_estimate``, ``predict(zoom="auto")``; docs/objects.md).

Objects are the connected regions of the object classes in the labels (with the ``object boundary`` class where
dense masks carry their rims already: those rims belong to the objects they surround), so touching objects
painted as one region count as one, as in the images the benchmark scores. Regions cut by the edge of a
painted chunk (not the image's edge) are left out; so are regions under ``MIN_SIZE`` pixels (stray strokes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_medseg.core.classes import ClassSchema
from napari_medseg.objects.sizes import equivalent_diameters, uncut_counts
from napari_medseg.training.data import _blocks

#: regions smaller than this (pixels at level 0) are not objects
MIN_SIZE = 10


def painted_object_diameter(views: Sequence[Any], classes: ClassSchema) -> float | None:
    """Median equivalent diameter (disk in 2D, ball in 3D), in pixels of the training level, of the painted
    objects of ``views`` (``training.data.ItemView``: their labels are level-0 store values, 0 = unpainted);
    None without object classes or objects."""
    if not classes.object_values:
        return None
    values = [v + 1 for v in classes.object_values]  # store values
    if classes.boundary_value is not None:
        values.append(classes.boundary_value + 1)
    diameters: list[np.ndarray] = []
    for v in views:
        labels = v.item.labels
        if labels is None:
            continue
        shape = tuple(int(s) for s in labels.shape)
        factor = float(np.mean(v.factor[-2:]))  # in-plane downsample of the training level
        for off, block in _blocks(labels):
            block = np.asarray(block)
            cut = [(o > 0, o + b < n) for o, b, n in zip(off, block.shape, shape)]
            counts = uncut_counts(ndi.label(np.isin(block, values))[0], cut)
            counts = counts[counts >= MIN_SIZE]
            if counts.size:
                diameters.append(equivalent_diameters(counts, block.ndim) / factor)
    if not diameters:
        return None
    return float(np.median(np.concatenate(diameters)))
