"""``zoom="auto"``: the zoom that shows a model the image's objects at the size it learnt them.

The checkpoint records the median diameter of the objects it was trained on (``training.object_sizes``, pixels
at the training level). Here a few regions of the image's tissue (``SAMPLE_REGIONS`` of ``SAMPLE_SIDE`` pixels,
spread evenly over the tissue) are predicted at zoom 1 (``region.predict_region``), their objects found as the
whole-slide pass finds them (``output.class_labels``, then ``objects.find_objects``; objects cut by a region's
edge left out), and the zoom is the learnt diameter over theirs (``objects.sizes.zoom_for``, within 0.5-2). As
Cellpose brings cells to a fixed diameter; on MoNuSeg's held-out images (nuclei 11-30 px against 24 px in
training) the zoom chosen this way raised the AJI from 0.529 to 0.574 (benchmarks/RESULTS.md). The sample costs a few
regions' prediction, small beside a slide's.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.core.tissue import TissueMask
from napari_medseg.inference.modelrun import LoadedModel
from napari_medseg.inference.output import class_labels
from napari_medseg.models.normalization import NormConfig
from napari_medseg.objects.instances import find_objects
from napari_medseg.objects.sizes import median_diameter_of_counts, uncut_counts, zoom_for

SAMPLE_REGIONS = 6
SAMPLE_SIDE = 512
MIN_SIZE = 10  # pixels: smaller objects and seeds are speckle (as the benchmark's)


def _starts(n: int, s: int) -> list[int]:
    """Starts of boxes of ``s`` pixels that cover ``n`` pixels, evenly spaced (the last ends at ``n``)."""
    if n <= s:
        return [0]
    k = -(-n // s)
    return sorted({round(i * (n - s) / (k - 1)) for i in range(k)})


def sample_regions(shape: tuple[int, int], side: int, n: int, keep=None) -> list[tuple[tuple[int, int], ...]]:
    """Up to ``n`` boxes of ``side`` pixels on a grid that covers ``shape`` (YX), evenly spread over those
    ``keep(box)`` accepts (all without ``keep``)."""
    sy, sx = min(side, shape[0]), min(side, shape[1])
    boxes = [((y, y + sy), (x, x + sx)) for y in _starts(shape[0], sy) for x in _starts(shape[1], sx)]
    if keep is not None:
        boxes = [b for b in boxes if keep(b)]
    if len(boxes) <= n:
        return boxes
    return [boxes[i] for i in sorted(set(np.linspace(0, len(boxes) - 1, n).round().astype(int).tolist()))]


def estimate_zoom(src: ImageSource, loaded: LoadedModel, level: int, norm: NormConfig, tissue: TissueMask | None,
                  device: torch.device) -> tuple[float, float | None]:
    """``(zoom, measured diameter)`` for predicting ``src`` at ``level`` with ``loaded`` (see the module)."""
    from napari_medseg.inference.region import predict_region

    classes = loaded.classes
    if classes is None or not classes.object_values:
        raise MedsegError("zoom 'auto' matches the size of objects: this model has no object classes; give a number")
    if loaded.object_diameter is None:
        raise MedsegError("zoom 'auto' needs the size of the objects the model learnt, which its checkpoint does not "
                          "record (trained before napari-medseg recorded it, or a model from another tool); give a "
                          "number: the objects' diameter in the training images / their diameter here")
    shape = src.level_shape(level)
    if len(shape) != 2 or (loaded.spatial_dims or 2) != 2:
        raise MedsegError("zoom 'auto' measures objects on 2D images; for a volume give a number")
    ds = src.level_downsample(level)
    keep = None if tissue is None else (lambda box: tissue.any_tissue(box, ds))
    counts: list[np.ndarray] = []
    for box in sample_regions(tuple(shape), SAMPLE_SIDE, SAMPLE_REGIONS, keep):
        rp = predict_region(loaded.module, src, level, tuple(slice(a, b) for a, b in box), norm, with_probs=True,
                            probs_dtype="float32", device=str(device))
        lab = class_labels(torch.from_numpy(np.ascontiguousarray(rp.probs)), classes).numpy()
        objs = find_objects(lab, classes, min_size=MIN_SIZE, min_seed=MIN_SIZE).labels
        # a region's side that is not the image's edge cuts the objects on it
        counts.append(uncut_counts(objs, [(a > 0, b < n) for (a, b), n in zip(box, shape)]))
    measured = median_diameter_of_counts(np.concatenate(counts) if counts else np.zeros(0, np.int64), 2, MIN_SIZE)
    return zoom_for(loaded.object_diameter, measured), measured
