"""Stop napari's layer list from repainting its rows on events that change nothing it shows.

napari's Qt layer list model turns every event of every layer into ``dataChanged`` with no roles ("all
roles changed"), which makes the list's sort proxy re-sort and the list repaint the row (thumbnail, SVG
icons); only ``thumbnail``, ``visible``, ``name``, ``loaded`` and ``locked`` map to the roles it shows
(napari 0.9.2, ``_qt/containers/qt_layer_model.py:_process_event``). Among the others are events that come
many times a second while the plugin works:

- ``scale_factor``: each layer emits it on every draw after a zoom change; on the 2-core VM under software
  OpenGL it cost about 6 ms of every zoomed frame with the two layers of the sample slide and 11 ms with
  eight (``benchmarks/bench_zoom_frames.py``);
- ``reload``, ``set_data``, ``_extent_augmented``, ``data``: each refresh of the live preview and each block
  of a whole-slide prediction that reaches its layer (counted in a 10 s stretch of prediction in
  ``benchmarks/bench_ui_latency.py --quick``: 64 ``reload``, 42 ``set_data``, against 33 ``thumbnail``, which
  still passes);
- ``paint``: one per brush dab while the user paints.

``quiet_zoom_events(viewer)`` reconnects the model's handler behind a filter that drops those events and
passes every other one. It finds the model and its handler through ``napari_compat_layers`` (public Qt and
napari event API: no private attribute of the viewer or its window); where they are not found it does
nothing. ``NAPARI_MEDSEG_LAYER_LIST_FILTER=0`` turns it off; ``=zoom`` drops ``scale_factor`` alone (the
filter's first version, kept for comparisons). The right fix belongs in napari (map events to the roles they
change, and ignore the rest).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from napari_medseg._napari import napari_compat_layers

log = logging.getLogger(__name__)

#: layer events that change nothing the layer list shows (``thumbnail`` carries what data changes show)
IGNORED = frozenset({"scale_factor", "reload", "set_data", "_extent_augmented", "data", "paint"})
#: ``NAPARI_MEDSEG_LAYER_LIST_FILTER=zoom``: the zoom steps alone
ZOOM_ONLY = frozenset({"scale_factor"})


def _setting() -> str:
    return os.environ.get("NAPARI_MEDSEG_LAYER_LIST_FILTER", "1").strip().lower()


def layer_list_model(viewer: Any) -> Any:
    """The Qt model of ``viewer``'s layer list, or None (see ``napari_compat_layers``)."""
    return napari_compat_layers.layer_list_model(viewer)


def quiet_zoom_events(viewer: Any) -> bool:
    """Filter the events that change nothing the list shows (``IGNORED``) out of the layer list's model of
    ``viewer`` (once). Returns whether the filter is in place."""
    setting = _setting()
    if setting in ("0", "false", "no", "off"):
        return False
    ignored = ZOOM_ONLY if setting == "zoom" else IGNORED
    try:
        model = layer_list_model(viewer)
        if model is None:
            return False
        if getattr(model, "_medseg_filter", None) is not None:
            return True
        events = napari_compat_layers.unwrap(viewer.layers).events
        handler = napari_compat_layers.layer_event_handler(model, viewer.layers)
        if handler is None:
            return False

        def filtered(event: Any) -> None:
            if getattr(event, "type", None) not in ignored:
                handler(event)

        events.disconnect(handler)
        events.connect(filtered)
        model._medseg_handler = handler  # our own attributes on the model: napari's handler, and the
        model._medseg_filter = filtered  # filter, kept alive with the model (the emitter may hold them weakly)
        return True
    except Exception:  # another napari: leave its layer list as it is
        log.debug("layer list events left unfiltered", exc_info=True)
        return False


@contextlib.contextmanager
def unfiltered(viewer: Any) -> Iterator[None]:
    """napari's own layer-list behaviour for a while, where the filter is in place (the benchmarks compare
    against it)."""
    model = layer_list_model(viewer)
    filtered = getattr(model, "_medseg_filter", None)
    if filtered is None:
        yield
        return
    events = napari_compat_layers.unwrap(viewer.layers).events
    handler = model._medseg_handler
    events.disconnect(filtered)
    events.connect(handler)
    try:
        yield
    finally:
        events.disconnect(handler)
        events.connect(filtered)
