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
(``jobs.predict_job.OverviewLevel``).

The overview shows nothing inside the window, so while the window covers the whole view it is hidden
(``OverviewShown``): a hidden layer is neither sliced nor drawn, and on software OpenGL every visible layer
that covers the canvas costs the viewer ~0.2x of napari's own p99 frame time (issue 23,
``bench_ui_latency``). It shows itself when the view reaches beyond the window (a pan, before the window
follows; a view wider than the coarsest window) and stays hidden once the user unticks its eye."""

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

        self.layer: Any = None
        self.shown: OverviewShown | None = None

    def add_layer(self, viewer: Any, name: str, **kwargs: Any) -> Any:
        """The read-only napari Labels layer of the levels (``kwargs``: scale, translate, colormap, ...)."""
        many = len(self.levels) > 1
        self.layer = viewer.add_labels(self.levels if many else self.levels[0], name=name, multiscale=many,
                                       **kwargs)
        self.layer.editable = False
        self.shown = OverviewShown(self.layer)
        return self.layer

    def refill(self) -> None:
        """Re-read the coarsest level into the array napari keeps (the finer levels are read lazily)."""
        if self.coarsest is not None:
            self.coarsest[...] = np.asarray(self.lazy[-1])

    def refresh(self) -> None:
        """Show the store's current labels at every level."""
        self.refill()
        if self.layer is not None:
            self.layer.refresh()

    def show(self, needed: bool) -> None:
        if self.shown is not None:
            self.shown.show(needed)

    def close(self) -> None:
        if self.shown is not None:
            self.shown.close()


class OverviewShown:
    """Keeps the overview ``layer`` visible only while it is needed (``show(needed)``), unless the user hid it
    (unticked its eye while it was shown): then it stays hidden until the user ticks it again."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.user_hidden = False
        self._setting = False
        layer.events.visible.connect(self._on_visible)

    def _on_visible(self, event: Any = None) -> None:
        if not self._setting:
            self.user_hidden = not self.layer.visible

    def show(self, needed: bool) -> None:
        if self.user_hidden or bool(self.layer.visible) == bool(needed):
            return
        self._setting = True
        try:
            self.layer.visible = bool(needed)
        finally:
            self._setting = False

    def close(self) -> None:
        self.layer.events.visible.disconnect(self._on_visible)
