"""Per-viewer state shared by the plugin's widgets: for each image layer its open label store (and the
painter showing it) and the ``ImageSource`` opened for it, and the last and best checkpoint trained.

A widget that wants to know when a training run produced a model (the Annotate widget's "Where to paint
next" box re-ranks then) listens with ``on_checkpoint(callback)``; the Train widget announces each finished
run with ``checkpoint_trained(path)``. The widgets so never import each other.

Layers are keyed by identity (the layer object behind napari's proxy), never by name: a user who renames
an image layer keeps its labels in every widget. Entries go with their layer (weak keys). The widgets ask
the session (``store_for``, ``painter_for``, ``source_for``) each time and keep no second reference; the
Annotate widget, which opens and closes the labels, is the one that attaches and detaches them.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from napari_medseg._napari.layerdata import from_layer, medseg_meta
from napari_medseg._napari.napari_compat_layers import unwrap

if TYPE_CHECKING:
    from napari_medseg.core.source import ImageSource
    from napari_medseg.labels.store import LabelStore

log = logging.getLogger(__name__)
CheckpointListener = Callable[[Path], Any]


class Painter(Protocol):
    """What the session's users need of a painter (``painting.controller.PaintingController``)."""

    def flush(self, wait: bool = False, full: bool = False) -> Any: ...


class Session:
    """The state of one viewer (see module); ``session_for(viewer)`` gives it."""

    def __init__(self) -> None:
        self.last_checkpoint: Path | None = None
        self.best_checkpoint: Path | None = None
        self.distilled_checkpoint: Path | None = None  # "Distil for deployment"'s student (not the session's model)
        self._labels: weakref.WeakKeyDictionary[Any, tuple[LabelStore, Painter | None]] = \
            weakref.WeakKeyDictionary()
        self._sources: weakref.WeakKeyDictionary[Any, tuple[Any, Any, ImageSource]] = weakref.WeakKeyDictionary()
        self._checkpoint_listeners: list[Callable[[], CheckpointListener | None]] = []

    # -- trained models -------------------------------------------------------------------------------
    def on_checkpoint(self, callback: CheckpointListener) -> Callable[[], None]:
        """Call ``callback(path)`` (main thread) each time a training run of this viewer ends with a model
        (``checkpoint_trained``). A bound method is held weakly (a closed widget's listener goes with it).
        Returns a function that removes the listener."""
        ref: Callable[[], CheckpointListener | None]
        if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
            ref = weakref.WeakMethod(callback)  # type: ignore[arg-type]
        else:
            ref = lambda: callback  # noqa: E731 - a plain function lives as long as the session
        self._checkpoint_listeners.append(ref)

        def remove() -> None:
            if ref in self._checkpoint_listeners:
                self._checkpoint_listeners.remove(ref)

        return remove

    def checkpoint_trained(self, path: str | Path) -> None:
        """A training run ended with the model at ``path``: tell the listeners (``on_checkpoint``). A
        listener that fails is logged and the others still hear of it."""
        path = Path(path)
        for ref in list(self._checkpoint_listeners):
            callback = ref()
            if callback is None:
                self._checkpoint_listeners.remove(ref)
                continue
            try:
                callback(path)
            except RuntimeError as e:
                if "deleted" not in str(e):  # else a Qt widget deleted behind its Python object: forget it
                    log.exception("a checkpoint listener failed")
                    continue
                log.debug("checkpoint listener gone: %s", e)
                self._checkpoint_listeners.remove(ref)
            except Exception:
                log.exception("a checkpoint listener failed")

    # -- labels ---------------------------------------------------------------------------------------
    def attach_labels(self, layer: Any, store: LabelStore, painter: Painter | None = None) -> None:
        """``store`` (shown by ``painter``) is now the open label store of image ``layer``."""
        self._labels[unwrap(layer)] = (store, painter)

    def detach_labels(self, layer: Any) -> None:
        """Image ``layer`` has no open label store any more."""
        if layer is not None:
            self._labels.pop(unwrap(layer), None)

    def store_for(self, layer: Any) -> LabelStore | None:
        """The open label store of image ``layer`` (whatever its name now), or None."""
        entry = self._labels.get(unwrap(layer)) if layer is not None else None
        return entry[0] if entry is not None else None

    def painter_for(self, layer: Any) -> Painter | None:
        """The painter showing the label store of image ``layer``, or None."""
        entry = self._labels.get(unwrap(layer)) if layer is not None else None
        return entry[1] if entry is not None else None

    # -- images ---------------------------------------------------------------------------------------
    def source_for(self, layer: Any) -> ImageSource:
        """The ``ImageSource`` of image ``layer`` for workers (``layerdata.from_layer``: reopened from its
        file where the plugin's reader made the layer), opened once per layer and again only when the
        layer's data or file changed."""
        key = unwrap(layer)
        data, path = key.data, medseg_meta(key).get("path")
        entry = self._sources.get(key)
        if entry is not None and entry[0] is data and entry[1] == path:
            return entry[2]
        src = from_layer(key)
        self._sources[key] = (data, path, src)
        return src


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The viewer's session, created on first use (one per viewer, whether a widget got the viewer itself
    or napari's proxy of it). Creating it also makes 3D views of volumes opened later through the plugin
    anatomically correct (LPS camera), as ``napari-medseg gui`` does, and keeps reference labels (a
    sample's ground truth) from being painted (``reference_layers``)."""
    viewer = unwrap(viewer)  # each widget gets its own proxy: the session belongs to the viewer behind it
    s = _SESSIONS.get(viewer)
    if s is None:
        s = Session()
        _SESSIONS[viewer] = s
        from napari_medseg._napari.layers import is_volume_layer, use_lps_camera
        from napari_medseg._napari.reference_layers import guard_reference_layers

        guard_reference_layers(viewer)

        def _on_insert(event: Any) -> None:
            if is_volume_layer(event.value):
                use_lps_camera(viewer)

        viewer.layers.events.inserted.connect(_on_insert)
        if any(is_volume_layer(lay) for lay in viewer.layers):
            use_lps_camera(viewer)
    return s
