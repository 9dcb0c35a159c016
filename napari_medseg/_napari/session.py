"""Per-viewer state shared by the plugin's widgets (the last checkpoint trained, the open label store)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Session:
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    label_stores: dict[str, Any] = field(default_factory=dict)  # image layer name -> LabelStore
    painters: dict[str, Any] = field(default_factory=dict)  # image layer name -> PaintingController


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The viewer's session, created on first use (one per viewer, whether a widget got the viewer itself
    or napari's proxy of it). Creating it also makes 3D views of volumes opened later through the plugin
    anatomically correct (LPS camera), as ``napari-medseg gui`` does, and keeps reference labels (a
    sample's ground truth) from being painted (``reference_layers``)."""
    from napari_medseg._napari.napari_compat_layers import unwrap

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
