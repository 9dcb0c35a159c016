"""Helpers for the painting GUI tests (test_painting_*.py): a slide with its label store and painting
controller in a shown napari viewer, store pixel <-> world <-> canvas pixel conversions, and mouse strokes
sent as real Qt mouse events to the napari canvas (the path a user's hand takes: Qt -> vispy -> napari's
mouse callbacks -> the Labels brush)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication

from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.napari_compat import canvas_size
from napari_medseg.core.classes import ClassSchema

CLASSES = ClassSchema(names=("background", "tumor", "stroma"))
PS = 0.5  # um per pixel
SLIDE = (3000, 4000)  # px; with 256 px chunks and the overview down to <= 500 px: factors 1, 2, 4, 8

LEFT = Qt.MouseButton.LeftButton
NONE = Qt.MouseButton.NoButton


def world(ctl, y: float, x: float) -> tuple[float, float]:
    """World coordinates of store pixel (y, x)."""
    return tuple(t + v * s for t, v, s in zip(ctl._translate, (y, x), ctl._scale))


def look_at(viewer, ctl, y: float, x: float, zoom: float) -> None:
    """Point the camera at store pixel (y, x) with ``zoom`` screen pixels per world unit."""
    camera_of(viewer).center = world(ctl, y, x)
    camera_of(viewer).zoom = zoom


def canvas_pos(viewer, ctl, y: float, x: float) -> tuple[float, float]:
    """Canvas pixel (x right, y down) showing store pixel (y, x) in a 2D view."""
    cam = camera_of(viewer)
    h, w = canvas_size(viewer)
    wy, wx = world(ctl, y, x)
    return (wx - cam.center[-1]) * cam.zoom + w / 2, (wy - cam.center[-2]) * cam.zoom + h / 2


def _send(widget, typ, pos, button, buttons) -> None:
    local = QPointF(float(pos[0]), float(pos[1]))
    glob = QPointF(widget.mapToGlobal(QPoint(int(pos[0]), int(pos[1]))))
    QApplication.sendEvent(widget, QMouseEvent(typ, local, glob, button, buttons, Qt.KeyboardModifier.NoModifier))


def canvas_widget(viewer):
    return viewer.window._qt_viewer.canvas.native  # tests may look inside napari; the plugin does not


def qt_stroke(viewer, qtbot, ctl, pixels, *, settle_ms: int = 5) -> None:
    """Press, drag through and release over store pixels ``pixels`` [(y, x), ...] with real Qt mouse events
    on the canvas (napari handles each move in its own event-loop turn, as with a hand on a mouse)."""
    native = canvas_widget(viewer)
    pts = [canvas_pos(viewer, ctl, y, x) for y, x in pixels]
    assert all(0 <= px < native.width() and 0 <= py < native.height() for px, py in pts), "stroke off the canvas"
    _send(native, QEvent.Type.MouseButtonPress, pts[0], LEFT, LEFT)
    qtbot.wait(settle_ms)
    for p in pts[1:]:
        _send(native, QEvent.Type.MouseMove, p, NONE, LEFT)
        qtbot.wait(settle_ms)
    _send(native, QEvent.Type.MouseButtonRelease, pts[-1], LEFT, NONE)
    qtbot.wait(settle_ms)


def line(p0, p1, n: int = 30) -> list[tuple[float, float]]:
    return [tuple(a + (b - a) * t for a, b in zip(p0, p1)) for t in np.linspace(0.0, 1.0, n)]


def blocks_only(mask: np.ndarray, f: int) -> bool:
    """Is ``mask`` (a region starting on a multiple of ``f``) a union of whole, aligned f x f blocks?"""
    h, w = (s // f * f for s in mask.shape)
    b = mask[:h, :w].reshape(h // f, f, w // f, f)
    return bool(np.all(b.all(axis=(1, 3)) == b.any(axis=(1, 3))))
