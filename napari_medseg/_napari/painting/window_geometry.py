"""Where the editable window of a label store goes, and at which resolution (pure arithmetic, no napari).

The window is a chunk-aligned box of the store shown as a plain napari Labels layer. Its resolution is a
level of the store's overview pyramid: level 0 (full resolution) when the view is small enough, a coarser
level when the view is zoomed out beyond what ``max_window`` full-resolution pixels cover, so that the
window always covers the view and a stroke anywhere on the canvas lands in it. A window is given in
store (level-0) pixels; at level ``k`` its layer pixels ("cells") are ``F x F`` blocks of store pixels,
``F`` the level's cumulative factor, and its edges fall on store chunk edges.

Only 2D stores get coarse levels: a volume's window is a slab of slices that follows the slice slider
(or the whole volume when it fits in ``volume_max_voxels``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from napari_medseg.labels.chunks import cumulative_factors

Window = tuple[slice, ...]


def store_transform(pixel_size: Sequence[float], image_scale: Sequence[float] | None = None,
                    image_translate: Sequence[float] | None = None
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """napari ``scale`` and ``translate`` of store pixel (0, ..) so that it sits on the pixels of the image
    layer with ``image_scale`` / ``image_translate`` (their last axes; none: at the origin). A store declared
    at a coarser level than the image has its pixel centres between the image's."""
    nd = len(pixel_size)
    scale = tuple(float(p) for p in pixel_size)
    if image_scale is None or image_translate is None:
        return scale, (0.0,) * nd
    img_scale, img_tr = tuple(image_scale)[-nd:], tuple(image_translate)[-nd:]
    return scale, tuple(t + ((s / q if q else 1.0) - 1) / 2 * q for s, q, t in zip(scale, img_scale, img_tr))


class WindowGeometry:
    """Window sizes, alignment and levels for one store (``shape``, ``chunks``, ``level_shapes`` and
    ``level_factors`` as ``LabelStore`` has them)."""

    def __init__(self, shape: Sequence[int], chunks: Sequence[int], level_shapes: Sequence[Sequence[int]],
                 level_factors: Sequence[Sequence[int]], *, max_window: int = 4096,
                 volume_max_voxels: int = 256 * 2**20) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.chunks = tuple(int(c) for c in chunks)
        self.ndim = len(self.shape)
        self.max_window = max(int(max_window), 1)
        self.volume_max_voxels = int(volume_max_voxels)
        if self.ndim == 2 and not self.fits_whole:
            self.factors = cumulative_factors(level_factors)
            self.level_shapes = [tuple(int(s) for s in ls) for ls in level_shapes]
        else:
            self.factors = [(1,) * self.ndim]
            self.level_shapes = [self.shape]

    @classmethod
    def of_store(cls, store: object, **kwargs: int) -> WindowGeometry:
        return cls(store.shape, store.chunks, store.level_shapes, store.level_factors, **kwargs)

    @property
    def n_levels(self) -> int:
        return len(self.factors)

    @property
    def fits_whole(self) -> bool:
        """The whole store is one window (a small slide, or a volume within ``volume_max_voxels``)."""
        if self.ndim == 3:
            return math.prod(self.shape) <= self.volume_max_voxels
        return all(s <= self.max_window for s in self.shape)

    # -- per level ----------------------------------------------------------------------------------
    def align(self, level: int) -> tuple[int, ...]:
        """Cells per axis between possible window starts: a start on a cell edge and a chunk edge."""
        return tuple(math.lcm(c, f) // f for c, f in zip(self.chunks, self.factors[level]))

    def cap(self, level: int) -> tuple[int, ...]:
        """The largest window per axis, in cells (a whole number of ``align`` steps)."""
        out = []
        for a, al in enumerate(self.align(level)):
            cap = self.max_window
            if self.ndim == 3 and a == 0:
                inplane = min(self.max_window, self.shape[1]) * min(self.max_window, self.shape[2])
                cap = self.volume_max_voxels // max(inplane, 1)
            out.append(max(al, cap // al * al))
        return tuple(out)

    def cells(self, window: Window, level: int) -> Window:
        """The window in cells of ``level`` (its layer's pixels)."""
        return tuple(slice(w.start // f, -(-w.stop // f)) for w, f in zip(window, self.factors[level]))

    def layer_transform(self, window: Window, level: int, scale: Sequence[float],
                        translate: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """napari ``scale`` and ``translate`` of the window's layer, given those of store pixel (0, ..):
        cell ``i`` covers store pixels ``i F .. i F + F - 1``, so its centre is ``(F - 1) / 2`` pixels on."""
        f = self.factors[level]
        sc = tuple(s * k for s, k in zip(scale, f))
        tr = tuple(t + (k - 1) / 2 * s + c.start * s * k
                   for t, s, k, c in zip(translate, scale, f, self.cells(window, level)))
        return sc, tr

    # -- choosing -----------------------------------------------------------------------------------
    def window_for(self, center: Sequence[float], level: int = 0) -> Window:
        """The largest aligned window of ``level`` centred (to the nearest alignment step) on ``center``
        (store pixels); the whole store when it fits."""
        if self.fits_whole:
            return tuple(slice(0, s) for s in self.shape)
        f, shp = self.factors[level], self.level_shapes[level]
        out = []
        for a, (n, al, cap) in enumerate(zip(shp, self.align(level), self.cap(level))):
            if cap >= n:
                c0, c1 = 0, n
            else:
                c0 = round((center[a] / f[a] - cap / 2) / al) * al
                c0 = max(0, min(c0, math.ceil((n - cap) / al) * al))
                c1 = min(n, c0 + cap)
            out.append(slice(int(c0 * f[a]), int(min(self.shape[a], c1 * f[a]))))
        return tuple(out)

    def level_for_view(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[int, bool]:
        """The finest level whose window covers the view box ``lo``..``hi`` (store pixels, clipped to the
        store here) wherever the view is, and whether one does (else: the coarsest level)."""
        ext = [min(float(s), b) - max(0.0, a) for s, a, b in zip(self.shape, lo, hi)]
        inplane = range(self.ndim - 2, self.ndim)
        for k in range(self.n_levels):
            f, shp, al, cap = self.factors[k], self.level_shapes[k], self.align(k), self.cap(k)
            if all(shp[a] <= cap[a] or ext[a] / f[a] <= cap[a] - al[a] for a in inplane):
                return k, True
        return self.n_levels - 1, False

    def beyond(self, window: Window, lo: Sequence[float], hi: Sequence[float]) -> bool:
        """Does the view box ``lo``..``hi`` (store pixels, clipped to the store here) reach beyond ``window``?"""
        return any(max(0.0, a) < w.start or min(float(s), b) > w.stop
                   for w, a, b, s in zip(window, lo, hi, self.shape))

    def fits_level(self, window: Window, level: int) -> bool:
        """Can ``window`` be shown at ``level``: within its cap, starting on its alignment?"""
        f, al, cap = self.factors[level], self.align(level), self.cap(level)
        return all(w.start % (a * ff) == 0 and -(-(w.stop - w.start) // ff) <= c
                   for w, ff, a, c in zip(window, f, al, cap))

    def level_of(self, window: Window, prefer: int | None = None) -> int:
        """The level to show a window at: ``prefer`` if the window fits it, else the finest it fits."""
        if prefer is not None and 0 <= prefer < self.n_levels and self.fits_level(window, prefer):
            return prefer
        return next((k for k in range(self.n_levels) if self.fits_level(window, k)), self.n_levels - 1)
