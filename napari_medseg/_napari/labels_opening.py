"""Opening an image's labels for the Annotate widget, and rescuing labels that could not be saved.

``open_labels(layer, viewer)`` opens (or creates) the label store of an image layer where
``labels.location`` says it belongs: beside the image, or in the user data folder; an old store
in the cache folder is moved out first. With a ``path`` the user chose: a store, a project folder (the
store goes inside it) or a new store's path. It returns the store and what to tell the user; it raises
``MedsegError`` with a message for the user. No Qt here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_medseg._napari.layerdata import from_layer
from napari_medseg._napari.napari_compat_layers import is_labels_layer
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.user_folders import rescue_folder
from napari_medseg.labels.format import default_path, is_label_store
from napari_medseg.labels.location import labels_location, move_from_cache
from napari_medseg.labels.ops import save_as
from napari_medseg.labels.store import LabelStore

log = logging.getLogger(__name__)

Note = tuple[str, str]  # (level: "info" / "warning" / "error", text)


@dataclass
class OpenedLabels:
    """A store opened for an image: the store, why it is where it is (plain words, or "" where the user
    chose), and what to tell the user."""

    store: LabelStore
    why: str = ""
    notes: list[Note] = field(default_factory=list)


def open_labels(layer: Any, viewer: Any = None, path: str | Path | None = None, *,
                read_only: bool = False) -> OpenedLabels:
    """The label store of image ``layer``, why it is there, and the notes for the user (see module)."""
    mode = "r" if read_only else "r+"
    src = from_layer(layer, reopen=False)
    classes = classes_from_layer(layer, viewer)
    notes: list[Note] = []
    why = ""
    p = Path(path).expanduser() if path else None
    if p is None:
        loc = labels_location(src)
        target, why = loc.path, loc.why
        if loc.from_cache is not None:
            target = move_from_cache(loc)
            if target == loc.path:
                notes.append(("info", f"Your labels for '{layer.name}' were in the cache folder "
                                      f"({loc.from_cache}), which cleaning tools empty; they have been moved to "
                                      f"{target}."))
            else:
                why = "in the cache folder: they could not be moved out"
                notes.append(("warning", f"Your labels for '{layer.name}' are in the cache folder ({target}), "
                                         "which cleaning tools may empty, and could not be moved (are they "
                                         "open in another viewer?); use 'Save a copy elsewhere...' to keep "
                                         "them safe."))
        if is_label_store(target):
            store = LabelStore.open(target, image=src, mode=mode, on_readonly="memory")
        elif read_only:
            raise MedsegError(f"There are no labels for '{layer.name}' yet ({target}); untick 'view only' to "
                              "start painting them.")
        elif target == _beside(src):
            store = LabelStore.for_image(src, classes=classes, on_readonly="memory", mode=mode)
        else:
            store = LabelStore.create(target, src.shape, classes=classes, pixel_size=src.pixel_size,
                                      unit=src.unit, image_path=src.path, image_shape=src.shape,
                                      on_readonly="memory")
    elif is_label_store(p):
        store = LabelStore.open(p, image=src, mode=mode, on_readonly="memory")
    elif p.is_dir() and not p.name.endswith(".zarr"):
        store = LabelStore.for_image(src, folder=p, classes=classes, on_readonly="memory", mode=mode)
    elif read_only:
        raise MedsegError(f"{p} holds no labels; untick 'view only' to create a labels file there.")
    else:
        store = LabelStore.create(p, src.shape, classes=classes, pixel_size=src.pixel_size, unit=src.unit,
                                  image_path=src.path, image_shape=src.shape, on_readonly="memory")
    if store.not_saved_reason:
        notes.append(("warning", store.not_saved_reason))
    return OpenedLabels(store, why if store.path is not None else "", notes)


def _beside(src: Any) -> Path | None:
    try:
        return default_path(src)
    except MedsegError:
        return None


def rescue_dir() -> Path:
    """Where labels that could not be saved go when their store is closed (``core.user_folders``:
    ``<data folder>/unsaved-labels``, e.g. ``~/.local/share/napari-medseg/unsaved-labels``)."""
    return rescue_folder()


def rescue(store: LabelStore, name: str) -> Note:
    """Write the labels of ``store`` (saved and unsaved) to a new store in ``rescue_dir``; what to say."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    target = rescue_dir() / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}.labels.zarr"
    try:
        save_as(store, target)
    except MedsegError as e:
        log.error("could not rescue unsaved labels: %s", e)
        return ("error", f"Unsaved labels could not be written anywhere ({e}).")
    return ("warning", f"Your labels could not be saved where they were; they are safe in {target}: choose "
                       "that folder with 'Labels file...' to continue.")


def classes_from_layer(layer: Any, viewer: Any = None) -> ClassSchema | None:
    """Classes announced by the image's reader or sample (``metadata['napari_medseg']['classes']``), or by
    a labels layer of the same geometry (e.g. a sample's ground truth); None: the default schema."""
    candidates = [layer]
    if viewer is not None:
        shape = tuple(layer.level_shapes[0][:2] if getattr(layer, "rgb", False) else layer.level_shapes[0])
        candidates += [ly for ly in viewer.layers if is_labels_layer(ly) and tuple(ly.level_shapes[0]) == shape]
    for cand in candidates:
        meta = (getattr(cand, "metadata", None) or {}).get("napari_medseg", {})
        if isinstance(meta.get("classes"), dict):
            try:
                return ClassSchema.from_dict(meta["classes"])
            except MedsegError:
                continue
    return None
