"""The geometry of a ranking pass (numpy only): the region grid, its tissue, the window size and where the
windows go. ``scoring.rank_regions`` runs what is planned here.

- Regions: ``region_size`` level pixels per in-plane axis; a volume's Z cells are ``max(1, region_size // 4)``
  slices (volumes are thinner than they are wide, and a 2D model sees one slice of each region).
- Tissue: the fraction of each region on the tissue mask (``core.tissue``, as ``predict`` computes it),
  from an integral image of the mask: no pixel of the image is read.
- Windows: ``samples`` per region, each placed at random (seeded) inside its region; of ``TRIES`` random
  places the first whose centre is on tissue is taken. A region smaller than a window (at the image's far
  edges) gets the window centred on it, moved back inside the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.tissue import TissueMask
from napari_medseg.inference.modelrun import LoadedModel, fit_size, model_multiple

#: random places tried per window to find one whose centre is on tissue
TRIES = 8


def region_sizes(region_size: int, ndim: int) -> tuple[int, ...]:
    """Region size per spatial axis: in-plane ``region_size``, Z ``max(1, region_size // 4)``."""
    r = int(region_size)
    return (max(1, r // 4), r, r) if ndim == 3 else (r, r)


def grid(shape: Sequence[int], size: Sequence[int]) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """(cells per axis, starts, stops): the regions of a level of ``shape``, in C order, ``(n, ndim)``
    level pixels, the last region of each axis clipped to the image."""
    shp = np.asarray(shape, np.int64)
    sz = np.asarray(size, np.int64)
    counts = tuple(int(c) for c in -(-shp // sz))
    idx = np.indices(counts).reshape(len(counts), -1).T.astype(np.int64)
    starts = idx * sz
    return counts, starts, np.minimum(starts + sz, shp)


def level0_boxes(starts: np.ndarray, stops: np.ndarray, shape: Sequence[int], ds: Sequence[float],
                 shape0: Sequence[int]) -> np.ndarray:
    """Level boxes (``starts``/``stops``, ``(n, ndim)``, of a level of ``shape``) as level-0 boxes
    ``(n, ndim, 2)``: scaled by the level's downsample ``ds`` and rounded; boxes at the level's far edge reach
    the image's far edge (``shape0``)."""
    d = np.asarray(ds, np.float64)
    s0 = np.asarray(shape0, np.int64)
    a = np.clip(np.rint(starts * d).astype(np.int64), 0, s0)
    b = np.where(stops >= np.asarray(shape, np.int64), s0, np.clip(np.rint(stops * d).astype(np.int64), 0, s0))
    return np.stack([a, np.maximum(b, np.minimum(a + 1, s0))], axis=-1)


def tissue_fractions(tm: TissueMask | None, boxes0: np.ndarray) -> np.ndarray:
    """Fraction of each level-0 box ``(n, ndim, 2)`` on tissue (its in-plane YX extent in mask cells,
    rounded outwards as ``TissueMask.any_tissue`` does); 1 everywhere without a mask."""
    n = boxes0.shape[0]
    if tm is None:
        return np.ones(n, np.float64)
    m = tm.mask
    h, w = m.shape
    ii = np.zeros((h + 1, w + 1), np.int64)
    ii[1:, 1:] = np.cumsum(np.cumsum(m, axis=0, dtype=np.int64), axis=1)
    dy, dx = tm.downsample
    yx = boxes0[:, -2:, :].astype(np.float64)
    a0 = np.clip(np.floor(yx[:, 0, 0] / dy), 0, h).astype(np.int64)
    a1 = np.clip(np.ceil(yx[:, 0, 1] / dy), 0, h).astype(np.int64)
    b0 = np.clip(np.floor(yx[:, 1, 0] / dx), 0, w).astype(np.int64)
    b1 = np.clip(np.ceil(yx[:, 1, 1] / dx), 0, w).astype(np.int64)
    area = (a1 - a0) * (b1 - b0)
    s = ii[a1, b1] - ii[a0, b1] - ii[a1, b0] + ii[a0, b0]
    return np.where(area > 0, s / np.maximum(area, 1), 0.0)


def _largest_allowed(rule: tuple[int, int] | None, mult: int, size: int) -> int:
    """The largest window side the model takes that fits in ``size`` pixels (0: none)."""
    if rule is None:
        return (size // mult) * mult
    lo, step = int(rule[0]), int(rule[1])
    if size < lo:
        return 0
    return lo if step <= 0 else lo + ((size - lo) // step) * step


def window_shape(loaded: LoadedModel, shape: Sequence[int], window: int, where: str) -> tuple[tuple[int, ...], bool]:
    """(window over the level's spatial axes, slice-wise?): ``window`` pixels per model axis, moved to a size
    the model takes; a 2D model on a volume gets one slice ``(1, h, w)``, a 3D model a cube clipped to the
    volume. A 2D image (or slice) smaller than the window is a ``MedsegError`` naming both sizes."""
    nd = len(shape)
    md = loaded.spatial_dims or nd
    if md > nd:
        raise MedsegError(f"a {md}D model cannot rank a {nd}D image; use a {nd}D model")
    rule = loaded.window_rule
    mult = model_multiple(loaded)
    rules: list[Any] = list(rule) if rule else [None] * md
    if rule:
        win = [fit_size(r, window) for r in rule]
    else:
        win = [max(mult, (int(window) // mult) * mult)] * md
    space = list(shape[nd - md:])
    if md == 3:  # a cube clipped to the volume, to sizes the model still takes
        win = [w if w <= s else _largest_allowed(r, mult, s) for w, s, r in zip(win, space, rules)]
        if loaded.config is None and not rule:  # a module that says nothing of its sizes: its trial pass decides
            win = [w or s for w, s in zip(win, space)]
    if any(w < 1 or w > s for w, s in zip(win, space)):
        size = " x ".join(str(s) for s in space)
        raise MedsegError(f"{where} is {size} pixels at this level, smaller than one window of "
                          f"{' x '.join(str(w) for w in win)} pixels; choose a smaller window or a finer level")
    slicewise = md == 2 and nd == 3
    return ((1,) * (nd - md) + tuple(win)), slicewise


def place(rng: np.random.Generator, starts: np.ndarray, stops: np.ndarray, win: Sequence[int],
          shape: Sequence[int], tm: TissueMask | None, ds: Sequence[float]) -> np.ndarray:
    """Window starts ``(n, ndim)`` (level pixels), one per region box ``starts``/``stops`` (see module)."""
    n, nd = starts.shape
    if n == 0:
        return np.zeros((0, nd), np.int64)
    L = np.asarray(win, np.int64)
    hi = stops - L
    span = np.maximum(hi - starts, 0)
    cand = starts[:, None, :] + np.floor(rng.random((n, TRIES, nd)) * (span + 1)[:, None, :]).astype(np.int64)
    centred = starts + (stops - starts - L) // 2
    cand = np.where((hi < starts)[:, None, :], centred[:, None, :], cand)
    cand = np.clip(cand, 0, np.maximum(np.asarray(shape, np.int64) - L, 0))
    if tm is None:
        return cand[:, 0]
    centre0 = (cand[..., -2:] + L[-2:] / 2.0) * np.asarray(ds, np.float64)[-2:]  # level-0 YX
    h, w = tm.mask.shape
    iy = np.clip(np.floor(centre0[..., 0] / tm.downsample[0]).astype(np.int64), 0, h - 1)
    ix = np.clip(np.floor(centre0[..., 1] / tm.downsample[1]).astype(np.int64), 0, w - 1)
    on = tm.mask[iy, ix]  # (n, TRIES)
    first = np.where(on.any(axis=1), on.argmax(axis=1), 0)
    return cand[np.arange(n), first]


def painted_centres(store: Any, boxes0: np.ndarray) -> np.ndarray:
    """For each level-0 box ``(n, ndim, 2)``, the level-0 centre of its part of the store chunk with the most
    paint inside it (from the index: no pixel read); the box's centre where none is painted."""
    out = boxes0.mean(axis=2)
    counts = store.index.chunk_counts()
    if not counts or not len(boxes0):
        return out
    keys = sorted(counts)
    cs = np.asarray(store.chunks, np.int64)
    c0 = np.asarray(keys, np.int64) * cs
    c1 = np.minimum(c0 + cs, np.asarray(store.shape, np.int64))
    density = np.asarray([sum(counts[k].values()) for k in keys], np.float64) / np.prod(c1 - c0, axis=1)
    for i, box in enumerate(boxes0):
        lo = np.maximum(box[:, 0], c0)
        hi = np.minimum(box[:, 1], c1)
        paint = np.prod(np.clip(hi - lo, 0, None), axis=1) * density
        j = int(np.argmax(paint))
        if paint[j] > 0:
            out[i] = (lo[j] + hi[j]) / 2.0
    return out


def centred_starts(centres0: np.ndarray, win: Sequence[int], shape: Sequence[int], ds: Sequence[float]) -> np.ndarray:
    """Window starts (level pixels) of windows centred on level-0 points, kept inside the level."""
    L = np.asarray(win, np.int64)
    c = centres0 / np.asarray(ds, np.float64)
    st = np.floor(c - L / 2.0).astype(np.int64)
    return np.clip(st, 0, np.maximum(np.asarray(shape, np.int64) - L, 0))


def grow_until(shape: Sequence[int], region_size: int, max_regions: int, ds: Sequence[float],
               shape0: Sequence[int], tm: TissueMask | None
               ) -> tuple[int, tuple[int, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The region grid with at most ``max_regions`` regions on tissue: ``region_size`` doubled until it is
    so. Returns (region size used, cells per axis, starts, stops, level-0 boxes, tissue fractions)."""
    r = int(region_size)
    while True:
        size = region_sizes(r, len(shape))
        counts, starts, stops = grid(shape, size)
        boxes0 = level0_boxes(starts, stops, shape, ds, shape0)
        frac = tissue_fractions(tm, boxes0)
        if int((frac > 0).sum()) <= max_regions or math.prod(counts) == 1:
            return r, counts, starts, stops, boxes0, frac
        r *= 2
