"""The viewer side of ``core.courtesy``: one ``Courtesy`` per viewer, touched by every camera move (pan,
zoom, rotation), slice change and mouse drag (panning with the mouse, painting a stroke), so that training
and whole-image prediction pause while the user works in the view (see ``core.courtesy`` for why and for
the limits that keep the work going).

Off by default; ``NAPARI_MEDSEG_GIVE_WAY=1`` turns it on. Three A/B pairs of full
``benchmarks/bench_ui_latency.py`` runs (2-core VM, 2026-12-05; the camera moving ~60 % of the time): the
main thread's p99 13 % lower while predicting (all three pairs) and 9 % while training (two of three), but
0.4x the training steps and 1.45x the prediction time while the view moves: a small gain for a large cost.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.napari_compat_layers import unwrap
from napari_medseg.core.courtesy import Courtesy

_by_viewer: weakref.WeakKeyDictionary[Any, Courtesy] = weakref.WeakKeyDictionary()


def give_way_wanted() -> bool:
    return os.environ.get("NAPARI_MEDSEG_GIVE_WAY", "0").strip().lower() in ("1", "true", "yes", "on")


def courtesy_for(viewer: Any) -> Courtesy:
    """The ``Courtesy`` of ``viewer``, connected to its camera, dims and mouse drags on first use."""
    key = unwrap(viewer)
    found = _by_viewer.get(key)
    if found is not None:
        return found
    courtesy = Courtesy(enabled=give_way_wanted())
    camera = camera_of(viewer)
    for name in ("center", "zoom", "angles"):
        emitter = getattr(camera.events, name, None)
        if emitter is not None:
            emitter.connect(courtesy.touch)
    viewer.dims.events.current_step.connect(courtesy.touch)

    def on_drag(_viewer: Any, event: Any) -> Any:  # a generator: napari sends the drag's moves to it
        courtesy.touch()
        yield
        while event.type == "mouse_move":
            courtesy.touch()
            yield
        courtesy.touch()

    viewer.mouse_drag_callbacks.append(on_drag)
    _by_viewer[key] = courtesy
    return courtesy


__all__ = ["courtesy_for", "give_way_wanted"]
