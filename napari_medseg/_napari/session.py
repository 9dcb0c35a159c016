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


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    s = _SESSIONS.get(viewer)
    if s is None:
        s = Session()
        _SESSIONS[viewer] = s
    return s
