"""The few things the painting controller needs from napari beyond its plain layer API, through public
attributes only.

A dock widget gets the viewer wrapped in napari's ``PublicOnlyProxy``: every ``_private`` attribute read
through it (``viewer.window._qt_viewer``, ``layer._reset_history``, ...) makes napari warn "Private attribute
access ... is deprecated" over the canvas, and those attributes go away in napari 0.10. Each function here
names the public route it takes, so a napari upgrade has one place to look at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_CANVAS = (800, 1200)  # (height, width) in screen pixels when there is no canvas to ask


def canvas_size(viewer: Any, default: tuple[int, int] = DEFAULT_CANVAS) -> tuple[int, int]:
    """The canvas size in screen pixels, ``(height, width)``.

    napari (>= 0.6) keeps it in the public canvas model, ``viewer.canvas.size``, in sync with the Qt canvas
    (a resize of the window updates it). Before the window is first shown the model holds napari's default.
    """
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if size is None or len(size) != 2:
        return default
    h, w = (int(v) for v in size)
    return (h, w) if h > 0 and w > 0 else default


def reset_undo_history(layer: Any) -> None:
    """Forget a Labels layer's undo and redo history, keeping its mode.

    napari has no public call for it, but a Labels layer drops its history when it stops being editable
    (its history refers to pixels that are no longer there); the mode it had is restored afterwards. A layer
    that is not editable has no history to drop.
    """
    if not layer.editable:
        return
    mode = layer.mode
    layer.editable = False
    layer.editable = True
    if layer.mode != mode:
        layer.mode = mode


def set_data(layer: Any, data: Any) -> None:
    """``layer.data = data``, keeping the pyramid level a multiscale layer shows when the new data has as many.

    napari 0.9 (since the level lock of napari#8917) puts a multiscale layer back on its coarsest level when its
    data is replaced, but keeps the corners of the level it showed: zoomed in, the next slice asks the coarsest
    level for a region beyond its edge, gets an empty array, and vispy's draw raises on it (``zero-size array
    to reduction operation minimum``), which PyQt6 turns into an abort of the whole viewer (found by opening a
    label store while zoomed in on a slide). The public ``data_level`` puts the level back with the corners it
    belongs to; napari's next draw then picks the level for the view as usual."""
    level = layer.data_level if getattr(layer, "multiscale", False) else None
    n_levels = len(layer.data) if level is not None else 0
    layer.data = data
    if level is not None and getattr(layer, "multiscale", False) and len(layer.data) == n_levels:
        layer.data_level = level


def replace_multiscale_data(layer: Any, levels: Sequence[Any], *, editable: bool = False) -> None:
    """Make a multiscale layer re-read ``levels`` (the same arrays whose content changed).

    A 2D multiscale layer keeps its coarsest level in memory (for the thumbnail and the zoomed-out view);
    ``refresh()`` does not drop that copy, replacing the data does (``set_data``: the level shown is kept).
    Setting data makes a layer editable again, so ``editable`` is set afterwards.
    """
    set_data(layer, list(levels))
    layer.editable = editable


def show_outline(layer: Any, color: str = "#ffd400", width: float = 2.0) -> bool:
    """Draw a layer's extent as a thin rectangle (napari's bounding-box overlay, lines only; it follows the
    layer's ``scale`` and ``translate``). False if this napari has no such overlay."""
    box = getattr(layer, "bounding_box", None)
    if box is None:
        return False
    box.points = False
    box.line_color = color
    box.line_thickness = float(width)
    box.visible = True
    return True
