"""The viewer side of layers: the current view of a layer as a region at a pyramid level, a thread-safe box
for it (``LatestValue``), the camera (LPS orientation for volumes), and adding or updating result layers
in place. (An ``ImageSource`` to and from a layer: ``layerdata``.)

Everything here runs on the main thread (it touches layers); workers only get plain values from it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medseg._napari.layerdata import medseg_meta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewRequest:
    """What the user is looking at: a region (spatial slices, in ``level`` pixel coordinates)."""

    level: int
    region: tuple[slice, ...]

    @property
    def key(self) -> tuple:
        return (self.level, tuple((s.start, s.stop) for s in self.region))


def _clamp(lo: int, hi: int, size: int, cap: int) -> tuple[int, int]:
    lo, hi = max(0, lo), min(size, hi)
    if hi - lo > cap:
        c = (lo + hi) // 2
        lo, hi = max(0, c - cap // 2), min(size, c - cap // 2 + cap)
    return lo, max(hi, lo + 1)


def current_view(viewer: Any, layer: Any, *, max_px: int = 1024, depth: int = 1) -> ViewRequest | None:
    """The region of ``layer`` shown on the canvas, at the pyramid level napari is showing, capped at
    ``max_px`` per axis around the view centre. For volumes shown as 2D slices the region is ``depth``
    slices around the current one (1 for a 2D model, the model's patch depth for a 3D model)."""
    try:
        level = int(getattr(layer, "data_level", 0)) if getattr(layer, "multiscale", False) else 0
        shapes = layer.level_shapes if getattr(layer, "multiscale", False) else [layer.data.shape]
        nd = int(layer.ndim)  # spatial dims (napari's ndim excludes an RGB channel axis)
        shape = [int(s) for s in shapes[level]][:nd]
        corners = np.asarray(layer.corner_pixels)[:, :nd]
        region = []
        displayed = list(viewer.dims.displayed)[-2:]
        for ax in range(nd):
            if ax in [d - (viewer.dims.ndim - nd) for d in displayed] or viewer.dims.ndisplay == 3:
                lo, hi = int(corners[0, ax]), int(corners[1, ax]) + 1
                if hi - lo < 2:  # corners not yet computed: whole axis
                    lo, hi = 0, shape[ax]
                region.append(slice(*_clamp(lo, hi, shape[ax], max_px if nd == 2 or ax > 0 else max(depth, 1))))
            else:  # a sliced (not displayed) axis: the current slice, ``depth`` around it
                world = list(viewer.dims.point)
                data_pt = layer.world_to_data(world)[-nd:]
                z = int(np.clip(round(float(data_pt[ax]) / (shapes[0][ax] / shape[ax])), 0, shape[ax] - 1))
                lo = max(0, min(z - depth // 2, shape[ax] - depth))
                region.append(slice(lo, min(shape[ax], lo + depth)))
        return ViewRequest(level=level, region=tuple(region))
    except Exception as e:  # the view is a hint; never break the GUI over it
        log.debug("could not compute the current view: %s", e)
        return None


def view_at_level0(viewer: Any, layer: Any) -> tuple[tuple[slice, ...], bool] | None:
    """The region of ``layer`` on the canvas in its level-0 pixels (uncapped), and whether napari draws
    its coarsest level there (zoomed out). None when the view cannot be told."""
    view = current_view(viewer, layer, max_px=1 << 40)
    if view is None:
        return None
    multiscale = bool(getattr(layer, "multiscale", False))
    factors = np.asarray(layer.downsample_factors[view.level]) if multiscale else np.ones(len(view.region))
    factors = factors[-len(view.region):]
    region = tuple(slice(int(s.start * f), int(np.ceil(s.stop * f))) for s, f in zip(view.region, factors))
    coarsest = (not multiscale) or view.level == len(layer.data) - 1
    return region, coarsest


def overlaps(a: tuple[slice, ...], b: tuple[slice, ...]) -> bool:
    """Whether two regions (slices with starts and stops) share a pixel (the trailing axes aligned)."""
    n = min(len(a), len(b))
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a[-n:], b[-n:]))


def lies_over(layer: Any, other: Any) -> bool:
    """Whether two layers share some of the plane: their in-plane world extents intersect."""
    a, b = np.asarray(layer.extent.world, float), np.asarray(other.extent.world, float)
    n = min(a.shape[1], b.shape[1], 2)
    a, b = a[:, -n:], b[:, -n:]
    return bool(np.all(a[0] < b[1]) and np.all(b[0] < a[1]))


class LatestValue:
    """A thread-safe box holding the newest value (the GUI writes the view; a worker reads it)."""

    def __init__(self, value: Any = None) -> None:
        self._lock = threading.Lock()
        self._value = value

    def set(self, value: Any) -> None:
        with self._lock:
            self._value = value

    def get(self) -> Any:
        with self._lock:
            return self._value


def camera_of(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def use_lps_camera(viewer: Any) -> None:
    """Make 3D views of LPS+ ZYX volumes anatomically correct (not mirrored).

    Z (superior), Y (posterior), X (patient left) form a left-handed triple; napari's default camera
    orientation ("towards", "down", "right") draws axes 0, 1, 2 as a right-handed frame, which mirrors
    such volumes in 3D. With axis 0 pointing "away" the 3D view is correct and the 2D view is unchanged
    (the radiological view: looking from the feet, anterior up, patient's right on the left).
    """
    try:
        camera_of(viewer).orientation = ("away", "down", "right")
    except Exception as e:  # pragma: no cover - napari < 0.5 has no camera orientation
        log.debug("camera orientation not set: %s", e)


def is_volume_layer(layer: Any) -> bool:
    meta = medseg_meta(layer)
    return bool(meta) and str(meta.get("axes", "")).endswith("ZYX")


def upsert_layer(viewer: Any, name: str, kind: str, data: Any, **kwargs: Any) -> Any:
    """Update layer ``name`` in place (data, translate, scale...) or add it; returns the layer. The user's
    layer selection is kept (a result layer never steals the active layer from the painter)."""
    selected = set(viewer.layers.selection)
    active = viewer.layers.selection.active
    try:
        return _upsert(viewer, name, kind, data, **kwargs)
    finally:
        if selected and set(viewer.layers.selection) != selected:
            viewer.layers.selection.clear()
            viewer.layers.selection.update({lay for lay in selected if lay in viewer.layers})
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active


def _upsert(viewer: Any, name: str, kind: str, data: Any, **kwargs: Any) -> Any:
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer._type_string == kind:
            for k, v in kwargs.items():
                if k in ("translate", "scale", "opacity", "colormap", "contrast_limits", "visible"):
                    setattr(layer, k, v)
            layer.data = data
            return layer
        viewer.layers.remove(layer)
    return add_then_show(viewer, kind, data, name=name, **kwargs)


#: delay between adding a layer (hidden) and showing it, so one frame and the user's input fit in between
SHOW_AFTER_MS = 30


def add_then_show(viewer: Any, kind: str, data: Any, *, activate: bool = False, **kwargs: Any) -> Any:
    """Add a layer hidden, and show it (unless ``visible=False``) a moment later, from the event loop.

    Adding a layer costs the main thread two chunks of work: napari building the layer's controls and
    vispy node (~0.08 s on the 2-core VM), then the first draw of the new visual (its shaders are compiled
    then: ~0.05 s in software OpenGL). Done in one go it is one stall of the viewer; this way it is two
    shorter ones with the user's input and a frame in between. Unless ``activate``, the selection is put
    back as it was (napari selects what is added: the painter would lose the brush's layer), through the
    public selection API (napari's private switch that avoids the selection change would warn the user
    about private attribute access)."""
    from qtpy.QtCore import QTimer

    visible = kwargs.pop("visible", True)
    selection = viewer.layers.selection
    kept, active = set(selection), selection.active  # napari selects what is added: put the selection back
    layer = getattr(viewer, f"add_{kind}")(data, visible=False, **kwargs)
    if not activate and layer in selection:
        selection.clear()
        selection.update(kept)
        selection.active = active
    if visible:
        def show() -> None:
            if layer in viewer.layers:
                layer.visible = True

        QTimer.singleShot(SHOW_AFTER_MS, show)
    return layer


def on_layer_renamed(viewer: Any, callback: Any) -> None:
    """Call ``callback(layer)`` on the main thread whenever a layer of ``viewer`` (now or later) is renamed.

    napari re-emits every event of every layer through the layer list's event group; this listens there
    and passes only ``name`` events on."""
    def _on_layer_event(event: Any) -> None:
        if getattr(event, "type", None) == "name":
            callback(getattr(event, "source", None))

    viewer.layers.events.connect(_on_layer_event)
