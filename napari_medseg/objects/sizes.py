"""Object sizes, and the zoom that shows a model objects at the size it learnt.

A model trained on nuclei of ~24 px finds nuclei of ~12 px poorly: on MoNuSeg's held-out images from a
hospital whose nuclei are half the training size, the AJI was 0.39-0.50 against 0.50-0.66 elsewhere
(benchmarks/RESULTS.md, "Objects of another size"). Prediction takes a ``zoom`` (``inference.predict``,
``napari-medseg predict --zoom``): the model sees each window resampled by it. ``zoom_for`` gives the zoom
that brings the objects found in an image to the size of those the model learnt from, as Cellpose's size model
brings cells to a fixed diameter; ``median_diameter`` measures both.
"""

from __future__ import annotations

import math

import numpy as np

from napari_medseg.core.errors import MedsegError


def median_diameter(labels: np.ndarray, min_size: int = 0) -> float | None:
    """Median equivalent diameter in pixels of the objects of an instance label array (0 = background): the
    diameter of the disk (2D) or ball (3D) of each object's pixel count. Objects under ``min_size`` pixels are
    left out; None when no object is left."""
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise MedsegError(f"object sizes need a 2D or 3D label array, got {lab.ndim} dimensions")
    if lab.size == 0 or not np.issubdtype(lab.dtype, np.integer):
        raise MedsegError("object sizes need a non-empty integer label array")
    return median_diameter_of_counts(np.bincount(lab.ravel().astype(np.int64))[1:], lab.ndim, min_size)


def median_diameter_of_counts(counts: np.ndarray, ndim: int = 2, min_size: int = 0) -> float | None:
    """``median_diameter`` of objects given by their pixel counts (zeros and those under ``min_size`` left out)."""
    counts = np.asarray(counts)
    counts = counts[(counts > 0) & (counts >= max(int(min_size), 1))]
    if not counts.size:
        return None
    return float(np.median(equivalent_diameters(counts, ndim)))


def equivalent_diameters(counts: np.ndarray, ndim: int = 2) -> np.ndarray:
    """The diameter of the disk (2D) or ball (3D) of each pixel count."""
    counts = np.asarray(counts, np.float64)
    return 2.0 * np.sqrt(counts / math.pi) if ndim == 2 else np.cbrt(6.0 * counts / math.pi)


def uncut_counts(labels: np.ndarray, cut: list[tuple[bool, bool]]) -> np.ndarray:
    """Pixel counts of the objects of an instance label array (0 = background) that touch none of its cut edges:
    ``cut[axis] = (low side cut, high side cut)``, e.g. a window's sides that are not the image's edges, where an
    object may go on outside."""
    lab = np.asarray(labels).astype(np.int64, copy=False)
    counts = np.bincount(lab.ravel())
    keep = counts > 0
    keep[0] = False
    for ax, (lo, hi) in enumerate(cut):
        for at, is_cut in ((0, lo), (-1, hi)):
            if is_cut:
                keep[np.unique(np.take(lab, at, axis=ax))] = False
    return counts[keep]


def zoom_for(reference: float, measured: float | None, lo: float = 0.5, hi: float = 2.0) -> float:
    """The zoom that shows objects of ``measured`` diameter at the ``reference`` diameter (reference / measured),
    kept within ``[lo, hi]``; 1 when nothing was measured."""
    if not (math.isfinite(reference) and reference > 0):
        raise MedsegError(f"the reference diameter must be a positive number, got {reference}")
    if not 0 < lo <= 1 <= hi:
        raise MedsegError(f"the zoom bounds must satisfy 0 < lo <= 1 <= hi, got {lo}, {hi}")
    if measured is None or not math.isfinite(measured) or measured <= 0:
        return 1.0
    return float(min(hi, max(lo, reference / measured)))
