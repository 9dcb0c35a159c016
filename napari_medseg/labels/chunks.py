"""Chunk IO, reading and writing of ``LabelStore`` (a mixin, kept apart to keep modules short).

Reads go through the per-level painted-chunk sets, so empty space is never touched; writes replace whole
chunks (validated first, journaled, index and overview updated, listeners told). See ``label_store``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.files import write_json_atomic
from napari_medseg.core.source import ImageSource
from napari_medseg.labels import index as ix

if TYPE_CHECKING:  # pragma: no cover
    from napari_medseg.labels.store import LabelStore

log = logging.getLogger(__name__)

CACHE_BYTES = 96 * 2**20  # decoded chunks kept in memory (LRU), per store


class StoreNotWritableError(MedsegError):
    """The store's folder cannot be written; the labels stay in memory until saved elsewhere."""


class LabelValueError(MedsegError):
    """Labels with a dtype or values the store cannot hold (float data, values beyond the class schema)."""


class LabelStoreRWMixin:
    """Chunk IO, reads and writes; see ``LabelStore`` for the data model."""

    # -- chunk IO -----------------------------------------------------------------------------------
    def _get_chunk(self: LabelStore, level: int, c: ix.Chunk) -> np.ndarray | None:
        """The current content of a chunk (read-only array) or None when nothing is painted in it."""
        key = (level, c)
        with self._lock:
            if key in self._unsaved:
                return self._unsaved[key]
            if c not in self._painted[level]:
                return None
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            if self._arrays is None:
                return None
            blk = self._read_disk(level, c)
            if blk is not None:
                self._cache_put(key, blk)
            return blk

    @staticmethod
    def _chunk_files(arrays: list[Any] | None, path: Path | None) -> list[ix.ChunkFiles | None]:
        if arrays is None or path is None:
            return []
        return [ix.ChunkFiles(a, path / str(k)) if ix.ChunkFiles.supports(a) else None
                for k, a in enumerate(arrays)]

    def _read_disk(self: LabelStore, level: int, c: ix.Chunk) -> np.ndarray | None:
        sl = ix.chunk_slices(c, self.level_shapes[level], self.chunks)
        files = self._files[level] if self._files else None
        if files is not None:
            return files.read(c, [s.stop - s.start for s in sl])
        return np.asarray(self._arrays[level][sl])  # type: ignore[index]

    def _cache_put(self: LabelStore, key: tuple[int, ix.Chunk], blk: np.ndarray | None) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= old.nbytes
        if blk is None:
            return
        blk.flags.writeable = False
        self._cache[key] = blk
        self._cache_bytes += blk.nbytes
        while self._cache_bytes > CACHE_BYTES and self._cache:
            _k, v = self._cache.popitem(last=False)
            self._cache_bytes -= v.nbytes

    def _put_chunk(self: LabelStore, level: int, c: ix.Chunk, blk: np.ndarray | None) -> None:
        """Store one whole chunk (``None`` or all zeros: delete it). Never writes an empty chunk."""
        empty = blk is None or not blk.any()
        blk = None if empty else np.array(blk, dtype=np.uint8, order="C")  # our own copy: it is cached
        key = (level, c)
        on_disk = False
        if self._disk_ok:
            try:
                if empty:
                    self._delete_chunk_file(level, c)
                else:
                    files = self._files[level] if self._files else None
                    if files is not None:
                        files.write(c, blk)
                    else:
                        self._arrays[level][ix.chunk_slices(c, self.level_shapes[level], self.chunks)] = blk  # type: ignore[index]
                    self.stats["chunks_written"] += 1
                on_disk = True
            except OSError as e:
                self._go_memory(e)
        with self._lock:
            if on_disk:
                self._unsaved.pop(key, None)
            else:
                self._unsaved[key] = blk
            self._cache_put(key, blk)
            if empty:
                self._painted[level].discard(c)
            else:
                self._painted[level].add(c)

    def _delete_chunk_file(self: LabelStore, level: int, c: ix.Chunk) -> None:
        assert self.path is not None
        f = self.path / str(level) / Path(*[str(i) for i in c])
        try:
            f.unlink()
            self.stats["chunks_deleted"] += 1
        except FileNotFoundError:
            pass

    def _go_memory(self: LabelStore, err: OSError) -> None:
        self._disk_ok = False
        self.not_saved_reason = (
            f"label store {self.path} cannot be written ({err.strerror or err}); your labels are kept in "
            "memory: choose another folder to save them.")
        log.error(self.not_saved_reason)

    # -- reading ------------------------------------------------------------------------------------
    def __getitem__(self: LabelStore, key: Any) -> np.ndarray:
        """Numpy basic indexing (ints, slices with positive steps, Ellipsis); zeros where nothing is painted."""
        return self._read_level(0, key)

    def read(self: LabelStore, region: tuple[slice, ...]) -> np.ndarray:
        """The labels of ``region`` (a tuple of slices, spatial axes) as a new uint8 array."""
        return self._read_level(0, region)

    def __array__(self: LabelStore, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read_level(0, ())
        return out if dtype is None else out.astype(dtype)

    def _read_level(self: LabelStore, level: int, key: Any) -> np.ndarray:
        shape = self.level_shapes[level]
        ranges, squeeze = _normalize_key(key, shape)
        out_shape = tuple(len(range(*r)) for r in ranges)
        out = np.zeros(out_shape, dtype=np.uint8)
        if 0 in out_shape:
            return out.squeeze(axis=tuple(squeeze)) if squeeze else out
        lo = [r[0] for r in ranges]
        hi = [r[0] + (n - 1) * r[2] + 1 for r, n in zip(ranges, out_shape)]
        with self._lock:
            painted = self._painted[level]
            n_box = int(np.prod([(h - 1) // c - lo_ // c + 1 for lo_, h, c in zip(lo, hi, self.chunks)]))
            if len(painted) < n_box:
                cand = [c for c in painted
                        if all(lo_ // ch <= i <= (h - 1) // ch for i, lo_, h, ch in zip(c, lo, hi, self.chunks))]
            else:
                cand = [c for c in ix.chunks_in_box(lo, hi, self.chunks) if c in painted]
        for c in cand:
            dst, src = [], []
            for (start, _stop, step), n, i, ch in zip(ranges, out_shape, c, self.chunks):
                c0, c1 = i * ch, (i + 1) * ch
                i_lo = max(0, -(-(c0 - start) // step))
                i_hi = min(n, -(-(c1 - start) // step))
                if i_lo >= i_hi:
                    break
                g0 = start + i_lo * step - c0
                dst.append(slice(i_lo, i_hi))
                src.append(slice(g0, g0 + (i_hi - i_lo - 1) * step + 1, step))
            else:
                blk = self._get_chunk(level, c)
                if blk is not None:
                    out[tuple(dst)] = blk[tuple(src)]
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out

    def level_array(self: LabelStore, level: int) -> LevelArray:
        """An array-like view (shape, dtype, ndim, ``__getitem__``) of overview level ``level``."""
        return LevelArray(self, level)

    def overview_levels(self: LabelStore) -> list[Any]:
        """The store as a lazy multiscale pyramid (dask arrays, level 0 first) for a read-only overview.
        Each call returns fresh dask arrays (new names), so a viewer never shows cached stale tiles."""
        import uuid

        import dask.array as da
        token = uuid.uuid4().hex[:12]
        return [da.from_array(LevelArray(self, k), chunks=self.chunks, name=f"labelstore-{token}-{k}",
                              asarray=True, fancy=False, lock=False, meta=np.zeros((0,) * self.ndim, np.uint8))
                for k in range(len(self.level_shapes))]

    def to_image_source(self: LabelStore, name: str = "labels") -> ImageSource:
        """The store as a ``kind="labels"`` ImageSource (overview levels, pixel size, axes)."""
        return ImageSource(levels=self.overview_levels(), axes=self.axes, pixel_size=self.pixel_size,
                           unit=self.unit, name=name, path=str(self.path) if self.path else None,
                           kind="labels", metadata={"classes": self.classes.to_dict()})

    # -- writing ------------------------------------------------------------------------------------
    def _check_values(self: LabelStore, data: np.ndarray, what: str = "labels") -> None:
        if data.dtype.kind == "f" or data.dtype.kind not in "uib":
            raise LabelValueError(f"{what} must be integers, got {data.dtype}; convert them (e.g. round and "
                                  "cast to uint8) before writing.")
        if data.size == 0 or data.dtype.kind == "b":
            return
        lo, hi = int(data.min()), int(data.max())
        top = self.classes.max_store_value
        if lo < 0 or hi > top:
            bad = sorted({int(v) for v in np.unique(data) if v < 0 or v > top})[:8]
            raise LabelValueError(
                f"{what} hold value(s) {bad} beyond the class schema ({len(self.classes.names)} classes: store "
                f"values 0 = not annotated, 1 = background up to {top}); add classes first or fix the labels.")

    def _require_writable(self: LabelStore) -> None:
        if self._closed:
            raise MedsegError("this label store is closed; open it again to edit.")
        if self.mode != "r+":
            raise MedsegError(f"label store {self.path} is open read-only; open it with mode='r+' to edit.")

    def add_listener(self: LabelStore, callback: Callable[[list[ix.Chunk], Any], None]) -> None:
        """Call ``callback(changed_chunks, origin)`` after every write batch that changed level-0 chunks
        (in the writing thread; ``origin`` is what the writer passed, e.g. a painting controller)."""
        self._listeners.append(callback)

    def remove_listener(self: LabelStore, callback: Callable[[list[ix.Chunk], Any], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def write(self: LabelStore, region: tuple[slice, ...], data: np.ndarray | int, *, overview: bool = True,
              origin: Any = None) -> list[ix.Chunk]:
        """Write ``data`` into ``region`` (slices, step 1). Merged into whole chunks; each chunk is written
        once, whole; chunks left empty are deleted. Raises ``LabelValueError`` before writing anything if
        values are beyond the schema, ``StoreNotWritableError`` (labels kept in memory) if the disk fails.
        Returns the level-0 chunks that changed."""
        self._require_writable()
        ranges, squeeze = _normalize_key(region, self.shape)
        if squeeze or any(r[2] != 1 for r in ranges):
            raise ValueError("write takes a region of slices with step 1 (one per spatial axis)")
        lo = [r[0] for r in ranges]
        hi = [r[1] for r in ranges]
        rshape = tuple(h - lo_ for lo_, h in zip(lo, hi))
        arr = np.asarray(data)
        if arr.ndim == 0:
            arr = np.broadcast_to(arr, rshape)
        if arr.shape != rshape:
            raise GeometryMismatchError(f"data of shape {arr.shape} does not fit region {rshape} of the store")
        self._check_values(arr)
        with self._write_lock:
            blocks: dict[ix.Chunk, np.ndarray] = {}
            for c in ix.chunks_in_box(lo, hi, self.chunks):
                cs = ix.chunk_slices(c, self.shape, self.chunks)
                a = [max(s.start, lo_) for s, lo_ in zip(cs, lo)]
                b = [min(s.stop, h) for s, h in zip(cs, hi)]
                src = tuple(slice(x - lo_, y - lo_) for x, y, lo_ in zip(a, b, lo))
                if all(x == s.start and y == s.stop for x, y, s in zip(a, b, cs)):
                    blocks[c] = np.array(arr[src], dtype=np.uint8)
                    continue
                cur = self._get_chunk(0, c)
                blk = np.zeros([s.stop - s.start for s in cs], np.uint8) if cur is None else cur.copy()
                blk[tuple(slice(x - s.start, y - s.start) for x, y, s in zip(a, b, cs))] = arr[src]
                blocks[c] = blk
            return self.write_chunks(blocks, overview=overview, validated=True, origin=origin)

    def write_chunks(self: LabelStore, blocks: dict[ix.Chunk, np.ndarray], *, overview: bool = True,
                     validated: bool = False, origin: Any = None) -> list[ix.Chunk]:
        """Replace whole level-0 chunks (grid index -> full chunk content). Unchanged chunks are skipped;
        returns the chunks that changed. The batch is journaled so a crash leaves a repairable store."""
        self._require_writable()
        for c, blk in blocks.items():
            want = tuple(s.stop - s.start for s in ix.chunk_slices(c, self.shape, self.chunks))
            if any(i < 0 or i >= g for i, g in zip(c, ix.grid_shape(self.shape, self.chunks))) or blk.shape != want:
                raise GeometryMismatchError(f"chunk {c}: block of shape {blk.shape} does not match {want}")
            if not validated:
                self._check_values(blk)
        t0 = time.perf_counter()
        failed: OSError | None = None
        with self._write_lock:
            changed = {}
            for c, blk in blocks.items():
                cur = self._get_chunk(0, c)
                if cur is None:
                    if blk.any():
                        changed[c] = blk
                elif not np.array_equal(cur, blk):
                    changed[c] = blk
            if not changed:
                return []
            journal = self.path / ix.JOURNAL_NAME if self.path is not None else None
            if self._disk_ok and journal is not None:
                try:
                    write_json_atomic(journal, {"chunks": [ix.chunk_key(c) for c in changed], "time": time.time()})
                except OSError as e:
                    self._go_memory(e)
                    failed = e
            was_ok = self._disk_ok
            for c, blk in changed.items():
                self._put_chunk(0, c, blk)
                cnt = ix.value_counts(blk)
                with self._lock:
                    if cnt:
                        self._counts[c] = cnt
                    else:
                        self._counts.pop(c, None)
            if overview:
                self._update_overview(set(changed))
            if self._disk_ok:
                try:
                    self._persist_index()
                    if journal is not None:
                        journal.unlink(missing_ok=True)
                except OSError as e:
                    self._go_memory(e)
            if was_ok and not self._disk_ok and failed is None:
                failed = OSError(self.not_saved_reason)
            self.stats["batches"] += 1
            self.stats["write_s"] += time.perf_counter() - t0
        done = sorted(changed)
        for cb in list(self._listeners):
            try:
                cb(done, origin)
            except Exception:  # a listener must never break a write
                log.exception("label store listener failed")
        if failed is not None:
            raise StoreNotWritableError(self.not_saved_reason or str(failed))
        return done

    def _update_overview(self: LabelStore, dirty: set[ix.Chunk]) -> None:
        """Recompute the overview chunks above ``dirty`` level-0 chunks, level by level (whole chunks)."""
        for k in range(1, len(self.level_shapes)):
            f = self.level_factors[k]
            dirty = ix.parents(dirty, f)
            prev_shape = self.level_shapes[k - 1]
            for j in sorted(dirty):
                src = tuple(slice(i * c * ff, min((i + 1) * c * ff, s))
                            for i, c, ff, s in zip(j, self.chunks, f, prev_shape))
                block = self._read_level(k - 1, src)
                self._put_chunk(k, j, ix.pool_max(block, f))


class LevelArray:
    """Array-like view of one overview level of a ``LabelStore`` (reads painted chunks only)."""

    def __init__(self, store: LabelStore, level: int) -> None:
        self.store = store
        self.level = level
        self.shape = store.level_shapes[level]
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self.chunks = store.chunks

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.store._read_level(self.level, key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.store._read_level(self.level, ())
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


def _normalize_key(key: Any, shape: Sequence[int]) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Numpy basic indexing -> (start, stop, step) per axis and the axes to squeeze (integer indices)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    if len(key) > len(shape):
        raise IndexError(f"too many indices for a label store with {len(shape)} axes")
    key = tuple(key) + (slice(None),) * (len(shape) - len(key))
    ranges, squeeze = [], []
    for ax, (k, s) in enumerate(zip(key, shape)):
        if isinstance(k, (int, np.integer)):
            i = int(k) + s if k < 0 else int(k)
            if not 0 <= i < s:
                raise IndexError(f"index {k} is out of bounds for axis {ax} with size {s}")
            ranges.append((i, i + 1, 1))
            squeeze.append(ax)
        elif isinstance(k, slice):
            start, stop, step = k.indices(s)
            if step < 1:
                raise IndexError("a label store is read with positive slice steps only")
            ranges.append((start, max(stop, start), step))
        else:
            raise TypeError(f"a label store is read with integers and slices (numpy basic indexing), got {type(k).__name__}")
    return ranges, squeeze
