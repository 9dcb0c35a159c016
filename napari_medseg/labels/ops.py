"""Whole-store operations, as functions of a ``LabelStore``: importing dense masks, finding annotated
regions, editing the class schema, saving to another place, and the store as a dask pyramid or an
``ImageSource``. All of them work from the per-chunk index: only painted chunks are read or rewritten.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from napari_medseg.core.classes import DEFAULT_COLORS, ClassSchema
from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.grid import Chunk
from napari_medseg.core.source import ImageSource
from napari_medseg.labels.chunks import LevelArray
from napari_medseg.labels.format import LabelValueError
from napari_medseg.labels.store import LabelStore

log = logging.getLogger(__name__)

IMPORT_BLOCK_CHUNKS = 4  # dense masks are converted in blocks of 4 x 4 (x 4) store chunks


# -- dense masks ---------------------------------------------------------------------------------------
def import_dense_mask(store: LabelStore, mask: Any, *, background_value: int = 0, ignore_value: int | None = None,
                      region: tuple[slice, ...] | None = None) -> int:
    """Import a dense mask (model convention: ``background_value`` = background, 1.. = classes) into ``store``.

    The conversion is explicit: ``background_value`` -> store value 1 (background), every other value
    ``v`` -> ``v + 1`` (class ``v``), ``ignore_value`` (if given) -> left as it is in the store (not
    annotated unless painted before). ``mask`` is any array-like in the store's geometry (or of
    ``region``'s shape), read block by block; it is checked whole before anything is written, so a bad
    mask changes nothing. Returns the number of chunks written.
    """
    store.require_writable()
    if region is None:
        region = tuple(slice(0, s) for s in store.shape)
    region = tuple(slice(*sl.indices(s)[:2]) for sl, s in zip(region, store.shape))
    rshape = tuple(sl.stop - sl.start for sl in region)
    mshape = tuple(int(s) for s in getattr(mask, "shape", ()))
    if mshape != rshape:
        raise GeometryMismatchError(
            f"dense mask has shape {mshape} but the label store region is {rshape} ({store.axes}); resample "
            "or crop the mask to the image's geometry (a colour mask must be converted to class indices).")
    kind = np.dtype(mask.dtype).kind
    if kind not in "uib":
        raise LabelValueError(
            f"dense mask has dtype {np.dtype(mask.dtype)}; a mask holds integer class indices (0 = "
            "background): threshold or round it and cast to an integer type first.")
    n_cls = len(store.classes.names)
    seen: set[int] = set()
    for sub in _import_blocks(store, region):
        blk = np.asarray(mask[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(sub, region))])
        seen.update(int(v) for v in np.unique(blk))
    classes_used = {v for v in seen if v != background_value and v != ignore_value}
    bad = sorted(v for v in classes_used if v < 0 or v + 1 > store.classes.max_store_value)
    if bad:
        raise LabelValueError(
            f"dense mask holds class value(s) {bad[:8]} but the schema has {n_cls} classes (0 = background up "
            f"to {n_cls - 1}); add classes with set_classes first.")
    written: set[Chunk] = set()
    for sub in _import_blocks(store, region):
        rel = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(sub, region))
        blk = np.asarray(mask[rel])
        out = blk.astype(np.int16) + 1
        out[blk == background_value] = 1
        if ignore_value is not None:
            keep = blk == ignore_value
            if keep.any():
                out[keep] = store.read(sub)[keep]
        written.update(store.write(sub, out.astype(np.uint8), overview=False) or [])
    store.rebuild_overview(written)
    log.info("imported a dense mask into %s: %d chunks", store.path or "memory", len(written))
    return len(written)


def _import_blocks(store: LabelStore, region: tuple[slice, ...]) -> Iterator[tuple[slice, ...]]:
    step = [c * IMPORT_BLOCK_CHUNKS for c in store.chunks]
    starts = [range((r.start // st) * st, r.stop, st) for r, st in zip(region, step)]
    for origin in np.ndindex(*[len(s) for s in starts]):
        lo = [max(s[i], r.start) for s, i, r in zip(starts, origin, region)]
        hi = [min(s[i] + st, r.stop) for s, i, r, st in zip(starts, origin, region, step)]
        if all(h > lo_ for lo_, h in zip(lo, hi)):
            yield tuple(slice(a, b) for a, b in zip(lo, hi))


# -- annotated regions ---------------------------------------------------------------------------------
def painted_bbox(store: LabelStore) -> tuple[slice, ...] | None:
    """Bounding box (pixels, chunk precision) of everything painted, or None."""
    pc = store.painted_chunks()
    if not pc:
        return None
    arr = np.asarray(pc)
    lo, hi = arr.min(0), arr.max(0) + 1
    return tuple(slice(int(a) * c, min(int(b) * c, s)) for a, b, c, s in zip(lo, hi, store.chunks, store.shape))


def painted_regions(store: LabelStore) -> list[tuple[slice, ...]]:
    """Groups of touching painted chunks as pixel boxes (chunk precision), in reading order (rows,
    then columns; slices first for volumes). For "jump to the next annotated region"."""
    from scipy import ndimage

    pc = store.painted_chunks()
    if not pc:
        return []
    arr = np.asarray(pc)
    lo = arr.min(0)
    grid = np.zeros(tuple(arr.max(0) - lo + 1), bool)
    grid[tuple((arr - lo).T)] = True
    lab, _n = ndimage.label(grid, structure=np.ones((3,) * store.ndim))
    out = []
    for obj in ndimage.find_objects(lab):
        out.append(tuple(slice(int(o.start + b) * c, min(int(o.stop + b) * c, s))
                         for o, b, c, s in zip(obj, lo, store.chunks, store.shape)))
    return sorted(out, key=lambda reg: tuple(s.start for s in reg))


# -- class schema --------------------------------------------------------------------------------------
def extend_classes(store: LabelStore, top: int) -> list[str]:
    """Add classes "class N" (default colours) until store value ``top`` is a class; returns the names."""
    old = store.classes
    extra = range(old.max_store_value + 1, int(top) + 1)
    names = list(old.names) + [f"class {v - 1}" for v in extra]
    colors = list(old.colors) + [DEFAULT_COLORS[(v - 1) % len(DEFAULT_COLORS)] for v in extra]
    set_classes(store, ClassSchema(names=tuple(names), colors=tuple(colors), objects=old.objects))
    return names


def set_classes(store: LabelStore, classes: ClassSchema) -> None:
    """Rename, recolour or add classes. Refused (``LabelValueError``) if painted values would fall
    outside the new schema: remove classes with ``remove_class``, which relabels the paint."""
    if not isinstance(classes, ClassSchema):
        raise MedsegError("set_classes takes a ClassSchema")
    store.require_writable()
    lost = {v: n for v, n in store.class_counts().items() if v > classes.max_store_value and n}
    if lost:
        raise LabelValueError(
            f"{sum(lost.values())} painted pixels have store values {sorted(lost)} beyond the new schema of "
            f"{len(classes.names)} classes; use remove_class to relabel them first.")
    with store.write_lock:
        store.classes = classes
        _try_write_attrs(store)


def remove_class(store: LabelStore, value: int, *, merge_into: int = 0) -> None:
    """Remove the class with store value ``value`` (>= 2). Its pixels become ``merge_into`` (0 = not
    annotated, 1 = background); classes above it move down by one. Only chunks holding a value >=
    ``value`` are rewritten."""
    if value < 2 or value > store.classes.max_store_value:
        raise MedsegError(f"store value {value} is not a removable class (2..{store.classes.max_store_value})")
    if merge_into not in (0, 1):
        raise MedsegError("merge_into must be 0 (not annotated) or 1 (background)")
    store.require_writable()
    names = list(store.classes.names)
    colors = list(store.classes.colors)
    del names[value - 1]
    del colors[value - 1]
    gone = store.classes.names[value - 1]
    new = ClassSchema(names=tuple(names), colors=tuple(colors),
                      objects=tuple(o for o in store.classes.objects if o != gone))  # the others stay objects
    with store.write_lock:
        affected = [c for c, vals in store.chunk_classes().items() if any(v >= value for v in vals)]
        store.classes = new
        for i in range(0, len(affected), 64):
            batch = {}
            for c in affected[i:i + 64]:
                blk = store.read(store.chunk_region(c))
                hit = blk == value
                blk[blk > value] -= 1
                blk[hit] = merge_into
                batch[c] = blk
            store.write_chunks(batch, validated=True)
        _try_write_attrs(store)


def _try_write_attrs(store: LabelStore) -> None:
    try:
        store.write_attrs()
    except OSError as e:
        store.io.go_memory(e)


# -- save-as -------------------------------------------------------------------------------------------
def save_as(store: LabelStore, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write the whole store (saved and in-memory chunks) to a new ``path`` and continue there
    (``store.take_over``). The old location keeps what it had; its lock is released."""
    with store.write_lock:
        new = type(store).create(path, store.shape, classes=store.classes, chunks=store.chunks,
                                 pixel_size=store.pixel_size, unit=store.unit, image_path=store.image_path,
                                 level=store.level, overwrite=overwrite, image_shape=store.image_shape,
                                 coarsest=store.coarsest)
        try:
            pc = store.painted_chunks()
            for i in range(0, len(pc), 64):
                batch = {c: store.read(store.chunk_region(c)) for c in pc[i:i + 64]}
                new.write_chunks(batch, overview=False, validated=True)
            new.rebuild_overview()
        except BaseException:
            new.close()
            raise
        store.take_over(new)
    log.info("label store saved to %s", path)


# -- views ---------------------------------------------------------------------------------------------
def overview_levels(store: LabelStore) -> list[Any]:
    """The store as a lazy multiscale pyramid (dask arrays, level 0 first) for a read-only overview.
    Each call returns fresh dask arrays (new names), so a viewer never shows cached stale tiles."""
    import dask.array as da

    token = uuid.uuid4().hex[:12]
    return [da.from_array(LevelArray(store.io, k), chunks=store.chunks, name=f"labelstore-{token}-{k}",
                          asarray=True, fancy=False, lock=False, meta=np.zeros((0,) * store.ndim, np.uint8))
            for k in range(len(store.level_shapes))]


def to_image_source(store: LabelStore, name: str = "labels") -> ImageSource:
    """The store as a ``kind="labels"`` ImageSource (overview levels, pixel size, axes)."""
    return ImageSource(levels=overview_levels(store), axes=store.axes, pixel_size=store.pixel_size,
                       unit=store.unit, name=name, path=str(store.path) if store.path else None,
                       kind="labels", metadata={"classes": store.classes.to_dict()})
