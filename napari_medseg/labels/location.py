"""Where an image's labels are kept when the user has not chosen a place (pure: no napari, no Qt).

``labels_location(image)`` decides, in this order:

1. a label store **beside the image** that already exists (``format.default_path``), unless the
   image lives in a cache folder;
2. a store for this image in the **labels folder** of the user data folder (``user_folders``), matched by
   the image's path (or, when that path is gone, by its file name and shape);
3. a store that an older version left beside an image in the **cache folder** (the samples): it is to be
   moved to the labels folder (``move_from_cache``), because cleaning tools empty caches;
4. a new store beside the image, when the image is on disk, outside a cache folder, in a folder that
   can be written;
5. otherwise a new store in the labels folder (the first free ``<name>.labels.zarr``,
   ``<name> (2).labels.zarr``, ...).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from napari_medseg.core import user_folders
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.labels.format import default_path, is_label_store, read_meta, writable_dir
from napari_medseg.labels.lock import LOCK_NAME

log = logging.getLogger(__name__)

MAX_NAMESAKES = 100  # "<name> (100).labels.zarr" at most: beyond that something else is wrong


@dataclass(frozen=True)
class LabelsLocation:
    """Where an image's labels go (``path``), why, in plain words (``why``), and whether an old store in
    the cache folder should be moved there first (``from_cache``)."""

    path: Path
    why: str
    exists: bool
    from_cache: Path | None = None


def labels_location(image: ImageSource) -> LabelsLocation:
    """Where the labels of ``image`` are, or will be created (see module)."""
    file = Path(image.path) if image.path else None
    on_disk = file is not None and file.exists()
    cached = on_disk and user_folders.in_cache(file)
    beside = default_path(image) if on_disk else None
    if beside is not None and not cached and is_label_store(beside):
        return LabelsLocation(beside, "beside the image", exists=True)
    own = _in_labels_folder(image)
    if own.exists:
        return own
    if beside is not None and cached and is_label_store(beside):
        return LabelsLocation(own.path, "in your napari-medseg data folder: moved out of the cache folder",
                              exists=False, from_cache=beside)
    if beside is not None and not cached and writable_dir(beside.parent):
        return LabelsLocation(beside, "beside the image", exists=False)
    return own


def _in_labels_folder(image: ImageSource) -> LabelsLocation:
    folder = user_folders.labels_folder()
    why = ("in your napari-medseg data folder: the image has no folder of its own" if not image.path else
           "in your napari-medseg data folder: the image is in a cache folder, which cleaning tools empty"
           if user_folders.in_cache(image.path) else
           "in your napari-medseg data folder: the image's folder cannot be written")
    first = default_path(image, folder)
    stem = first.name[: -len(".labels.zarr")]
    free: Path | None = None
    for k in range(1, MAX_NAMESAKES + 1):
        path = first if k == 1 else folder / f"{stem} ({k}).labels.zarr"
        if not path.exists():
            free = free or path
            continue
        if _made_for(path, image):
            return LabelsLocation(path, why, exists=True)
    if free is None:
        raise MedsegError(f"{folder} holds {MAX_NAMESAKES} label stores named like {first.name}; choose a labels "
                          "file or a project folder for this image.")
    return LabelsLocation(free, why, exists=False)


def _made_for(path: Path, image: ImageSource) -> bool:
    """Whether the store at ``path`` was made for ``image``: the same image file (or, if the file it was
    made for is gone, one of the same name), of the same shape. Unreadable stores never match."""
    try:
        meta = read_meta(path)
    except (MedsegError, OSError):
        return False
    if tuple(meta.get("image_shape") or meta["shape"]) != tuple(image.shape):
        return False
    theirs, ours = meta.get("image_path"), image.path
    if theirs is None or ours is None:
        return theirs is None and ours is None
    if Path(theirs) == Path(ours):
        return True
    return Path(theirs).name == Path(ours).name and not Path(theirs).exists()


def move_from_cache(location: LabelsLocation) -> Path:
    """Move the old store ``location.from_cache`` to ``location.path``; returns where the labels are now.

    A store that is open for editing elsewhere (its lock file exists), or that cannot be moved, stays
    where it is: its path is returned and nothing is lost."""
    old = location.from_cache
    if old is None:
        return location.path
    if (old / LOCK_NAME).exists():
        log.warning("label store %s is locked; it stays in the cache folder", old)
        return old
    new = location.path
    try:
        new.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(old), str(new))
    except OSError as e:
        log.warning("could not move label store %s to %s (%s); it stays where it is", old, new, e)
        if new.exists() and old.exists():  # a copy across disks stopped half-way: the old one is whole
            shutil.rmtree(new, ignore_errors=True)
        return old if old.exists() else new
    log.info("moved label store %s to %s", old, new)
    return new
