"""The read-only overview of a label store: its pyramid levels for a multiscale napari Labels layer, blank
under the editable window (where the editable layer shows the live labels), so that every annotation is
visible at any zoom and none is shown twice. The levels are the store's own ``level_array`` views."""

from __future__ import annotations

from collections.abc import Callable

from napari_medseg.labels.chunks import LevelArray
from napari_medseg.labels.store import LabelStore


def overview_levels(store: LabelStore, window: Callable[[], tuple[slice, ...] | None]) -> list[LevelArray]:
    """Every level of the store's pyramid, blank inside the level-0 box ``window()`` (None: nowhere)."""
    return [store.level_array(k, blank=window) for k in range(len(store.level_shapes))]
