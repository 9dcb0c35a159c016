"""The one place where the plugin's layer handling meets napari internals (napari 0.9), each use tested.

A dock widget gets the viewer wrapped in napari's ``PublicOnlyProxy``: every private attribute read
through it (``viewer.window._qt_viewer``, ``layer._type_string``, ``layers._activate_on_insert``) warns
"Private attribute access ... is deprecated and will be unavailable no earlier than 0.10.0". Nothing in
the plugin reads private attributes through the viewer or its layers; what napari offers no public API
for is found here through public Qt and napari event API instead:

- ``layer_list_model(viewer)``: the Qt model behind the viewer's layer list, found in Qt's widget tree
  by the layer list it shows (``QAbstractItemView.model``, the model's public ``getItem``), not through
  ``Window._qt_viewer``;
- ``layer_event_handler(model, layers)``: the model's handler of layer events, found among the layer
  list's connected callbacks (napari's public ``EventEmitter.callbacks``), not by its private name;
- ``close_notifications()``: closes napari's toast notifications (screenshots), found in Qt's widget
  tree.

``unwrap`` returns the object behind a proxy (wrapt's public ``__wrapped__``): used for identity only
(is this the same layer, the same viewer), never to reach private attributes. Where napari changes,
these return None and the callers leave napari's behaviour as it is (``tests/gui/test_napari_compat``).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def unwrap(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (the object itself if it is not a proxy)."""
    return getattr(obj, "__wrapped__", obj)


def same_layer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same layer (one may be a proxy, the other not, e.g. an event's)."""
    return a is not None and b is not None and unwrap(a) is unwrap(b)


def is_image_layer(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)  # a proxy reports its wrapped class


def is_labels_layer(layer: Any) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels)


def layer_list_model(viewer: Any) -> Any | None:
    """napari's Qt model of ``viewer``'s layer list (the source model under its sort proxy), or None
    (no window, no Qt application, another napari)."""
    layers = unwrap(getattr(unwrap(viewer), "layers", None))
    if layers is None or getattr(viewer, "window", None) is None:
        return None
    try:
        from qtpy.QtCore import QModelIndex
        from qtpy.QtWidgets import QAbstractItemView, QApplication
    except ImportError:  # pragma: no cover - no Qt binding
        return None
    app = QApplication.instance()
    if app is None:
        return None
    for top in app.topLevelWidgets():
        for view in top.findChildren(QAbstractItemView):
            model = view.model()
            source = model.sourceModel() if hasattr(model, "sourceModel") else model
            get_item = getattr(source, "getItem", None)
            if get_item is None:
                continue
            try:
                root = get_item(QModelIndex())
            except Exception:  # another kind of model
                continue
            if root is layers:
                return source
    return None


def layer_event_handler(model: Any, layers: Any) -> Any | None:
    """The bound method of ``model`` connected to every event of ``layers`` (the layer list), or None."""
    layers = unwrap(layers)
    for cb in getattr(layers.events, "callbacks", ()):
        if isinstance(cb, tuple) and len(cb) == 2:  # napari keeps a bound method as (weakref, name)
            ref, name = cb
            obj = ref() if callable(ref) else ref
            if obj is model:
                return getattr(model, name, None)
        elif getattr(cb, "__self__", None) is model:
            return cb
    return None


def close_notifications() -> int:
    """Close napari's toast notifications (so they do not hide the canvas in a screenshot); how many."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
        from qtpy.QtWidgets import QApplication
    except ImportError:  # pragma: no cover - napari moved it
        return 0
    app = QApplication.instance()
    if app is None:
        return 0
    found = {id(w): w for w in app.topLevelWidgets() if isinstance(w, NapariQtNotification)}
    for top in app.topLevelWidgets():
        found.update((id(w), w) for w in top.findChildren(NapariQtNotification))
    for w in found.values():
        w.close()
    return len(found)


def is_shapes_layer(layer: Any) -> bool:
    from napari.layers import Shapes

    return isinstance(layer, Shapes)  # a proxy reports its wrapped class
