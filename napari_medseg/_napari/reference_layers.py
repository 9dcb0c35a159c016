"""Reference labels (a sample's ground truth) are for looking at: never painted by mistake, never the
layer a user finds selected after opening a sample.

A labels layer whose ``metadata["napari_medseg"]["role"]`` is ``"reference"`` (``sample_data`` marks the
samples' ground truth so) is made not editable when it enters a viewer that has the guard
(``guard_reference_layers``: installed by the samples, the plugin's widgets through ``session_for``, and
``napari-medseg gui``), and napari's habit of selecting the layer just added is redirected to the image
it belongs to (the newest image layer of the same geometry; the labels a user paints into, once the
Annotate widget has opened them, are selected by that widget). The redirection waits for the Qt event
loop to turn: changed from inside napari's selection events, napari's layer list would go on showing
the reference labels selected. Removing the role from a layer's metadata makes it editable for good.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

from napari_medseg._napari.napari_compat_layers import is_image_layer, is_labels_layer, same_layer, unwrap

log = logging.getLogger(__name__)

ROLE = "reference"
_GUARDED: weakref.WeakSet = weakref.WeakSet()


def mark_reference(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` (a layer's) marked as reference labels."""
    metadata.setdefault("napari_medseg", {})["role"] = ROLE
    return metadata


def is_reference(layer: Any) -> bool:
    meta = (getattr(layer, "metadata", None) or {}).get("napari_medseg") or {}
    return is_labels_layer(layer) and isinstance(meta, dict) and meta.get("role") == ROLE


def guard_reference_layers(viewer: Any) -> None:
    """Protect the reference labels of ``viewer``, now and later (once per viewer; no-op without one)."""
    viewer = unwrap(viewer)
    layers = getattr(viewer, "layers", None)
    if layers is None or viewer in _GUARDED:
        return
    _GUARDED.add(viewer)
    layers.events.inserted.connect(lambda event: _on_inserted(viewer, event.value))
    for layer in list(layers):
        if is_reference(layer):
            _lock(layer)
    active = layers.selection.active
    if active is not None and is_reference(active):
        _select_instead(viewer, active)


def _lock(layer: Any) -> None:
    layer.editable = False
    # napari makes a layer editable again when its data is replaced: lock it again, while it is reference
    # labels (removing the role from its metadata unlocks it for good)
    layer.events.editable.connect(lambda _e, ref=weakref.ref(layer): _relock(ref))


def _relock(ref: weakref.ref) -> None:
    layer = ref()
    if layer is not None and layer.editable and is_reference(layer):
        layer.editable = False


def _on_inserted(viewer: Any, layer: Any) -> None:
    if not is_reference(layer):
        return
    _lock(layer)
    selection = viewer.layers.selection

    def once(event: Any) -> None:  # napari selects the new layer right after ``inserted``
        if event.value is None:  # the selection is cleared first
            return
        selection.events.active.disconnect(once)
        if same_layer(event.value, layer):
            # not from inside napari's own selection events: its Qt layer list would keep showing the
            # reference labels selected; once the event loop turns, and only if still selected
            _later(lambda: _select_instead(viewer, layer) if same_layer(selection.active, layer) else None)

    selection.events.active.connect(once)
    # where napari did not select it (insertion without activation), stop waiting; without Qt, ``once``
    # waits for the next selection instead
    _later(lambda: _disconnect(selection.events.active, once), or_now=False)


def _later(func: Any, *, or_now: bool = True) -> None:
    """``func()`` once the Qt event loop turns; without a Qt application at once (``or_now``) or never."""
    try:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication
    except ImportError:  # pragma: no cover - no Qt binding
        app = None
    else:
        app = QApplication.instance()
    if app is not None:
        QTimer.singleShot(0, func)
    elif or_now:
        func()


def _disconnect(emitter: Any, callback: Any) -> None:
    with contextlib.suppress(Exception):  # already gone
        emitter.disconnect(callback)


def _select_instead(viewer: Any, reference: Any) -> None:
    """Select the image the reference labels belong to (same shape, newest first), else the newest image,
    else nothing."""
    shape = tuple(reference.level_shapes[0])
    images = [ly for ly in reversed(list(viewer.layers)) if is_image_layer(ly)]
    for layer in images:
        own = tuple(layer.level_shapes[0])  # napari leaves out an RGB image's colour axis; older ones kept it
        if (own[:-1] if getattr(layer, "rgb", False) and len(own) == len(shape) + 1 else own) == shape:
            viewer.layers.selection.active = layer
            return
    if images:
        viewer.layers.selection.active = images[0]
    else:
        viewer.layers.selection.clear()
