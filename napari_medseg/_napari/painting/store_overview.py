"""The read-only overview of a label store: its pyramid levels for a multiscale napari Labels layer, blank
under the editable window (where the editable layer shows the live labels), so that every annotation is
visible at any zoom and none is shown twice. The levels are the store's own ``level_array`` views, except the
coarsest, which is a numpy array refilled in place (``StoreOverview.refill``).

Why the coarsest is an array: napari materialises a 2D multiscale layer's coarsest level once and keeps it
for the thumbnail and the zoomed-out view, so a lazy level would keep showing the labels of the moment the
layer was made; ``refresh()`` does not drop that copy. Replacing the layer's data does, but napari 0.9 then
puts the layer on its coarsest level with the corners of the finer level it showed, and the empty slice that
follows makes vispy's draw raise, which PyQt6 turns into an abort of the viewer (opening a label store or
moving the editable window while zoomed in did it). napari keeps a numpy level as it is (``np.asarray`` of
an array is the array), so refilling it and calling ``refresh()`` shows the current labels at every level
without replacing anything: the Predict widget's growing result works the same way
(``jobs.predict_job.OverviewLevel``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from napari_medseg.labels.store import LabelStore


class StoreOverview:
    """Every level of the store's pyramid, blank inside the level-0 box ``window()`` (None: nowhere);
    ``levels`` is what the napari layer holds."""

    def __init__(self, store: LabelStore, window: Callable[[], tuple[slice, ...] | None]) -> None:
        self.lazy = [store.level_array(k, blank=window) for k in range(len(store.level_shapes))]
        self.coarsest = np.array(self.lazy[-1]) if len(self.lazy) > 1 else None
        self.levels: list[Any] = [*self.lazy[:-1], self.coarsest] if self.coarsest is not None else self.lazy

    def refill(self) -> None:
        """Re-read the coarsest level into the array napari keeps (the finer levels are read lazily)."""
        if self.coarsest is not None:
            self.coarsest[...] = np.asarray(self.lazy[-1])
