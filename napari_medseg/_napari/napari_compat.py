"""The few things the painting controller needs from napari beyond its plain layer API, through public
attributes only.

A dock widget gets the viewer wrapped in napari's ``PublicOnlyProxy``: every ``_private`` attribute read
through it (``viewer.window._qt_viewer``, ``layer._reset_history``, ...) makes napari warn "Private attribute
access ... is deprecated" over the canvas, and those attributes go away in napari 0.10. Each function here
names the public route it takes, so a napari upgrade has one place to look at.
"""

from __future__ import annotations

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
