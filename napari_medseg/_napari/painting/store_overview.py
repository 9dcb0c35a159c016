"""The read-only overview of a label store: its pyramid levels for a multiscale napari Labels layer, blank
under the editable window (where the editable layer shows the live labels), so that every annotation is
visible at any zoom and none is shown twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from napari_medseg.labels import index as ix
from napari_medseg.labels.store import LabelStore, _normalize_key


class MaskedLevel:
    """One overview level of the store for napari, blank where the editable window is."""

    def __init__(self, store: LabelStore, level: int, window: Callable[[], tuple[slice, ...] | None]) -> None:
        self.store, self.level, self._window = store, level, window
        self._levels = store.level_array(level)
        self._factor = ix.cumulative_factors(store.level_factors)[level]
        self.shape = store.level_shapes[level]
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        out = np.asarray(self._levels[key])
        win = self._window()
        if win is None:
            return out
        ranges, squeeze = _normalize_key(key, self.shape)
        sel = []
        for (start, stop, step), w, f in zip(ranges, win, self._factor):
            wlo, whi = -(-w.start // f), w.stop // f  # level pixels entirely inside the window
            if w.stop >= self.store.shape[len(sel)]:
                whi = -(-w.stop // f)  # the window reaches the store's edge: so does its last pixel
            i0 = max(0, -(-(wlo - start) // step))
            i1 = max(i0, min(len(range(start, stop, step)), -(-(whi - start) // step)))
            sel.append(slice(i0, i1))
        view = out
        if squeeze:
            view = out.reshape([1 if ax in squeeze else n for ax, n in
                                enumerate(len(range(*r)) for r in ranges)])
        view[tuple(sel)] = 0
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype)


def overview_levels(store: LabelStore, window: Callable[[], tuple[slice, ...] | None]) -> list[MaskedLevel]:
    """Every level of the store's pyramid, blank inside ``window()``."""
    return [MaskedLevel(store, k, window) for k in range(len(store.level_shapes))]
