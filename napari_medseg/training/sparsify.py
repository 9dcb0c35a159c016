"""Simulated sparse annotation from dense masks, deterministic by seed.

Dense masks use prediction values (0 = background, k = class k); the results are label-store arrays
(0 = not annotated, 1 = background, k + 1 = class k) of the same shape (``YX`` or ``ZYX``):

- ``scribbles``: short strokes along the skeleton of each class region (background included), a few pixels
  wide and inside the region, about ``fraction`` of all pixels, split evenly across the classes present;
- ``random_pixels``: a ``fraction`` of pixels drawn at random (per class, evenly, if ``balanced``);
- ``keep_cases``: which of ``n`` cases keep their (dense) labels;
- ``dense_to_store``: a whole mask as store values.
"""

from __future__ import annotations

import logging

import numpy as np

from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)


def dense_to_store(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.size and int(m.max()) > 253:
        raise MedsegError("dense masks may hold at most 253 classes")
    return (m.astype(np.uint8) + 1).astype(np.uint8)


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise MedsegError(f"the fraction of labelled pixels must be in (0, 1], got {fraction}")


def random_pixels(mask: np.ndarray, fraction: float, seed: int = 0, balanced: bool = True) -> np.ndarray:
    """Store values for a random ``fraction`` of the pixels of ``mask`` (evenly per class if ``balanced``)."""
    _check_fraction(fraction)
    m = np.asarray(mask)
    rng = np.random.default_rng(seed)
    out = np.zeros(m.shape, np.uint8)
    flat = m.ravel()
    total = int(round(fraction * flat.size))
    if not balanced:
        pos = rng.choice(flat.size, max(1, total), replace=False)
        out.ravel()[pos] = flat[pos] + 1
        return out
    classes = np.unique(flat)
    per = max(1, total // len(classes))
    for c in classes:
        pos = np.flatnonzero(flat == c)
        take = rng.choice(pos, min(per, pos.size), replace=False)
        out.ravel()[take] = c + 1
    return out


def scribbles(mask: np.ndarray, fraction: float, seed: int = 0, width: int = 3, stroke: int = 24) -> np.ndarray:
    """Store values for scribbles covering about ``fraction`` of the pixels, evenly split across classes.

    Each stroke is the part of a class region's skeleton within ``stroke / 2`` pixels of a random skeleton
    point, thickened to ``width`` pixels and kept inside the region.
    """
    from scipy.ndimage import binary_dilation, binary_erosion
    from skimage.morphology import ball, disk, skeletonize

    _check_fraction(fraction)
    m = np.asarray(mask)
    rng = np.random.default_rng(seed)
    out = np.zeros(m.shape, np.uint8)
    classes = [int(c) for c in np.unique(m)]
    budget = fraction * m.size / len(classes)
    r = max(0, width // 2)
    fp = (disk(r) if m.ndim == 2 else ball(r)) if r else None
    for c in classes:
        region = m == c
        inner = binary_erosion(region, disk(width) if m.ndim == 2 else ball(width))
        if not inner.any():
            inner = region
        pts = np.argwhere(skeletonize(inner))
        if len(pts) == 0:
            pts = np.argwhere(inner)
        chosen = np.zeros(len(pts), bool)
        n_px = 0.0
        # strokes until the budget (each skeleton point gives about `width` pixels once thickened)
        for _ in range(100000):
            if n_px >= budget or chosen.all():
                break
            free = np.flatnonzero(~chosen)
            s = pts[free[int(rng.integers(len(free)))]]
            near = np.flatnonzero(np.abs(pts - s).max(axis=1) <= stroke // 2)
            new = near[~chosen[near]]
            need = int(np.ceil((budget - n_px) / max(1, width)))
            new = new[:need]
            chosen[new] = True
            n_px += len(new) * max(1, width)
        line = np.zeros(m.shape, bool)
        line[tuple(pts[chosen].T)] = True
        if fp is not None:
            line = binary_dilation(line, fp)
        line &= region & (out == 0)
        out[line] = c + 1
    log.debug("scribbles: %.3f%% of pixels (asked %.3f%%)", 100 * (out > 0).mean(), 100 * fraction)
    return out


def keep_cases(n: int, keep: int | float, seed: int = 0) -> list[int]:
    """Indices of the cases that keep labels: ``keep`` cases (an int) or that fraction of ``n`` (a float)."""
    k = int(round(keep * n)) if isinstance(keep, float) else int(keep)
    if not 1 <= k <= n:
        raise MedsegError(f"keep between 1 and {n} labelled cases, got {keep}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, k, replace=False))
