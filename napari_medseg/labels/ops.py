"""Whole-store operations of ``LabelStore`` (a mixin, kept apart to keep modules short): importing dense
masks, finding annotated regions, editing the class schema, saving to another place, rebuilding the
overview. All of them work from the per-chunk index: only painted chunks are read or rewritten.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.labels import index as ix

if TYPE_CHECKING:  # pragma: no cover
    from napari_medseg.labels.store import LabelStore

log = logging.getLogger(__name__)

IMPORT_BLOCK_CHUNKS = 4  # dense masks are converted in blocks of 4 x 4 (x 4) store chunks


class LabelStoreOpsMixin:
    """Operations over the whole store; see ``LabelStore`` for the data model."""

    # -- dense masks --------------------------------------------------------------------------------
    def import_dense_mask(self: LabelStore, mask: Any, *, background_value: int = 0,
                          ignore_value: int | None = None, region: tuple[slice, ...] | None = None) -> int:
        """Import a dense mask (model convention: ``background_value`` = background, 1.. = classes).

        The conversion is explicit: ``background_value`` -> store value 1 (background), every other value
        ``v`` -> ``v + 1`` (class ``v``), ``ignore_value`` (if given) -> left as it is in the store (not
        annotated unless painted before). ``mask`` is any array-like in the store's geometry (or of
        ``region``'s shape), read block by block; it is checked whole before anything is written, so a bad
        mask changes nothing. Returns the number of chunks written.
        """
        from napari_medseg.labels.store import LabelValueError

        self._require_writable()
        if region is None:
            region = tuple(slice(0, s) for s in self.shape)
        region = tuple(slice(*sl.indices(s)[:2]) for sl, s in zip(region, self.shape))
        rshape = tuple(sl.stop - sl.start for sl in region)
        mshape = tuple(int(s) for s in getattr(mask, "shape", ()))
        if mshape != rshape:
            raise GeometryMismatchError(
                f"dense mask has shape {mshape} but the label store region is {rshape} ({self.axes}); resample "
                "or crop the mask to the image's geometry (a colour mask must be converted to class indices).")
        kind = np.dtype(mask.dtype).kind
        if kind not in "uib":
            raise LabelValueError(
                f"dense mask has dtype {np.dtype(mask.dtype)}; a mask holds integer class indices (0 = "
                "background): threshold or round it and cast to an integer type first.")
        n_cls = len(self.classes.names)
        seen: set[int] = set()
        for sub in self._import_blocks(region):
            blk = np.asarray(mask[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(sub, region))])
            vals = np.unique(blk)
            seen.update(int(v) for v in vals)
        classes_used = {v for v in seen if v != background_value and v != ignore_value}
        bad = sorted(v for v in classes_used if v < 0 or v + 1 > self.classes.max_store_value)
        if bad:
            raise LabelValueError(
                f"dense mask holds class value(s) {bad[:8]} but the schema has {n_cls} classes (0 = background up "
                f"to {n_cls - 1}); add classes with set_classes first.")
        written: set[ix.Chunk] = set()
        for sub in self._import_blocks(region):
            rel = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(sub, region))
            blk = np.asarray(mask[rel])
            out = blk.astype(np.int16) + 1
            out[blk == background_value] = 1
            if ignore_value is not None:
                keep = blk == ignore_value
                if keep.any():
                    out[keep] = self.read(sub)[keep]
            written.update(self.write(sub, out.astype(np.uint8), overview=False) or [])
        self.rebuild_overview(written)
        log.info("imported a dense mask into %s: %d chunks", self.path or "memory", len(written))
        return len(written)

    def _import_blocks(self: LabelStore, region: tuple[slice, ...]) -> Iterator[tuple[slice, ...]]:
        step = [c * IMPORT_BLOCK_CHUNKS for c in self.chunks]
        starts = [range((r.start // st) * st, r.stop, st) for r, st in zip(region, step)]
        for origin in np.ndindex(*[len(s) for s in starts]):
            lo = [max(s[i], r.start) for s, i, r in zip(starts, origin, region)]
            hi = [min(s[i] + st, r.stop) for s, i, r, st in zip(starts, origin, region, step)]
            if all(h > lo_ for lo_, h in zip(lo, hi)):
                yield tuple(slice(a, b) for a, b in zip(lo, hi))

    # -- annotated regions --------------------------------------------------------------------------
    def painted_bbox(self: LabelStore) -> tuple[slice, ...] | None:
        """Bounding box (pixels, chunk precision) of everything painted, or None."""
        pc = self.painted_chunks()
        if not pc:
            return None
        arr = np.asarray(pc)
        lo, hi = arr.min(0), arr.max(0) + 1
        return tuple(slice(int(a) * c, min(int(b) * c, s)) for a, b, c, s in zip(lo, hi, self.chunks, self.shape))

    def painted_regions(self: LabelStore) -> list[tuple[slice, ...]]:
        """Groups of touching painted chunks as pixel boxes (chunk precision), in reading order (rows,
        then columns; slices first for volumes). For "jump to the next annotated region"."""
        from scipy import ndimage

        pc = self.painted_chunks()
        if not pc:
            return []
        arr = np.asarray(pc)
        lo = arr.min(0)
        grid = np.zeros(tuple(arr.max(0) - lo + 1), bool)
        grid[tuple((arr - lo).T)] = True
        lab, _n = ndimage.label(grid, structure=np.ones((3,) * self.ndim))
        out = []
        for obj in ndimage.find_objects(lab):
            out.append(tuple(slice(int(o.start + b) * c, min(int(o.stop + b) * c, s))
                             for o, b, c, s in zip(obj, lo, self.chunks, self.shape)))
        return sorted(out, key=lambda reg: tuple(s.start for s in reg))

    # -- class schema -------------------------------------------------------------------------------
    def set_classes(self: LabelStore, classes: ClassSchema) -> None:
        """Rename, recolour or add classes. Refused (``LabelValueError``) if painted values would fall
        outside the new schema: remove classes with ``remove_class``, which relabels the paint."""
        from napari_medseg.labels.store import LabelValueError

        if not isinstance(classes, ClassSchema):
            raise MedsegError("set_classes takes a ClassSchema")
        self._require_writable()
        counts = self.class_counts()
        lost = {v: n for v, n in counts.items() if v > classes.max_store_value and n}
        if lost:
            raise LabelValueError(
                f"{sum(lost.values())} painted pixels have store values {sorted(lost)} beyond the new schema of "
                f"{len(classes.names)} classes; use remove_class to relabel them first.")
        with self._write_lock:
            self.classes = classes
            self._try_write_attrs()

    def remove_class(self: LabelStore, value: int, *, merge_into: int = 0) -> None:
        """Remove the class with store value ``value`` (>= 2). Its pixels become ``merge_into`` (0 = not
        annotated, 1 = background); classes above it move down by one. Only chunks holding a value >=
        ``value`` are rewritten."""
        if value < 2 or value > self.classes.max_store_value:
            raise MedsegError(f"store value {value} is not a removable class (2..{self.classes.max_store_value})")
        if merge_into not in (0, 1):
            raise MedsegError("merge_into must be 0 (not annotated) or 1 (background)")
        self._require_writable()
        names = list(self.classes.names)
        colors = list(self.classes.colors)
        del names[value - 1]
        del colors[value - 1]
        new = ClassSchema(names=tuple(names), colors=tuple(colors))
        with self._write_lock:
            affected = [c for c, vals in self.chunk_classes().items() if any(v >= value for v in vals)]
            self.classes = new
            for i in range(0, len(affected), 64):
                batch = {}
                for c in affected[i:i + 64]:
                    blk = self._get_chunk(0, c).copy()
                    hit = blk == value
                    blk[blk > value] -= 1
                    blk[hit] = merge_into
                    batch[c] = blk
                self.write_chunks(batch, validated=True)
            self._try_write_attrs()

    def _try_write_attrs(self: LabelStore) -> None:
        try:
            self._write_attrs()
        except OSError as e:
            self._go_memory(e)

    # -- overview / save-as ------------------------------------------------------------------------
    def rebuild_overview(self: LabelStore, chunks: Sequence[ix.Chunk] | set[ix.Chunk] | None = None) -> None:
        """Recompute the overview pyramid above ``chunks`` (default: every painted chunk)."""
        with self._write_lock:
            dirty = set(chunks) if chunks is not None else set(self.painted_chunks())
            if dirty:
                self._update_overview(dirty)
            if self._disk_ok:
                self._persist_index()

    def save_as(self: LabelStore, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the whole store (saved and in-memory chunks) to a new ``path`` and continue there. The
        old location keeps what it had; its lock is released."""
        from napari_medseg.labels.store import LabelStore as _LS

        with self._write_lock:
            new = _LS.create(path, self.shape, classes=self.classes, chunks=self.chunks,
                             pixel_size=self.pixel_size, unit=self.unit, image_path=self.image_path,
                             level=self.level, overwrite=overwrite, image_shape=self.image_shape,
                             coarsest=self.coarsest)
            try:
                pc = self.painted_chunks()
                for i in range(0, len(pc), 64):
                    batch = {c: np.array(self._get_chunk(0, c)) for c in pc[i:i + 64]}
                    new.write_chunks(batch, overview=False, validated=True)
                new.rebuild_overview()
            except BaseException:
                new.close()
                raise
            old_lock = self._filelock
            old_write_lock = self._write_lock
            self.__dict__.update(new.__dict__)
            self._write_lock = old_write_lock  # we are inside it; keep one writer lock object
            new._filelock = None
        if old_lock is not None:
            old_lock.release()
        log.info("label store saved to %s", path)
