"""``LabelStore``: sparse, chunked, crash-safe labels in an image's geometry (pure: no napari, no Qt).

A label store is an NGFF 0.4 labels group (zarr format 2) holding uint8 labels in the level-0 geometry of
an image (or of a declared level), axes ``YX`` (slides) or ``ZYX`` (volumes); see ``format`` for the
folder. Store values: 0 = not annotated (ignored by training), 1 = background, 2.. = classes.

Every write replaces whole chunks (one writer per chunk: one editing process, writes serialised inside
it); a chunk that becomes empty is deleted, never written. Each chunk file and the index are replaced
atomically, and a journal names the chunks of a batch in flight, so a store killed mid-write reopens
consistent. A store in a folder that cannot be written keeps its new labels in memory
(``unsaved_chunks``) until ``ops.save_as`` puts them somewhere else: nothing painted is lost.

``LabelStore`` composes parts that know nothing of it: ``format`` (metadata, level arrays), ``store.index``
(``index.LabelIndex``: what is painted where, the write ``version``) and ``store.io`` (``chunks.ChunkIO``:
cached, unsaved and on-disk chunks, the pyramid). Whole-store edits (importing a mask, classes, save-as)
are functions of a store in ``ops``. Readers use ``store[region]`` / ``read``, ``painted_chunks()`` and
``chunk_classes()``: answered from the index, never by scanning empty space.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import GeometryMismatchError, MedsegError, UnreadableInputError
from napari_medseg.core.files import write_json_atomic
from napari_medseg.core.grid import Chunk, chunk_slices, normalize_key
from napari_medseg.core.source import ImageSource
from napari_medseg.labels import format as fmt
from napari_medseg.labels.chunks import ChunkIO, LevelArray, pyramid_geometry
from napari_medseg.labels.index import INDEX_NAME, LabelIndex, index_to_json, value_counts
from napari_medseg.labels.lock import StoreLock

log = logging.getLogger(__name__)

Listener = Callable[[list[Chunk], Any], None]


class LabelStore:
    """Sparse uint8 labels over an image: spatial axes ``YX`` or ``ZYX``, values 0 / 1 / 2.. (see module).

    Build one with ``create``, ``open``, ``for_image`` or ``in_memory``; do not call the constructor.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, *, shape: Sequence[int], chunks: Sequence[int], classes: ClassSchema,
                 pixel_size: Sequence[float] | None, unit: str | None, level: int,
                 image_path: str | None, image_shape: Sequence[int] | None, path: Path | None,
                 mode: str, arrays: list[Any] | None, lock: StoreLock | None,
                 coarsest: int = fmt.OVERVIEW_COARSEST) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(c) for c in chunks)
        self.classes = classes
        self.pixel_size = tuple(float(p) for p in pixel_size) if pixel_size else tuple(1.0 for _ in shape)
        self.unit = unit or ("millimeter" if self.ndim == 3 else "micrometer")
        self.level = int(level)
        self.image_path = image_path
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape else None
        self.path = path
        self.mode = mode
        self.intended_path: Path | None = None  # where an in-memory store was meant to be saved
        self.coarsest = int(coarsest)
        self.level_shapes, self.level_factors = pyramid_geometry(self.shape, self.chunks, self.coarsest)
        self.index = LabelIndex(self.level_factors)
        self.io = ChunkIO(self.level_shapes, self.chunks, self.index, arrays=arrays, path=path,
                          disk_ok=mode == "r+")
        self.stats = self.io.stats
        self._filelock = lock
        self._closed = False
        self.write_lock = threading.RLock()  # one writer at a time: hold it to keep others out of a batch
        self._listeners: list[Listener] = []

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike | None, shape: Sequence[int], *, classes: ClassSchema | None = None,
               chunks: Sequence[int] | None = None, pixel_size: Sequence[float] | None = None,
               unit: str | None = None, image_path: str | None = None, level: int = 0,
               overwrite: bool = False, image_shape: Sequence[int] | None = None,
               on_readonly: str = "raise", coarsest: int = fmt.OVERVIEW_COARSEST) -> LabelStore:
        """A new empty store at ``path`` (``None``: in memory only). ``shape`` is spatial (YX or ZYX).

        ``on_readonly="memory"`` keeps a store whose folder cannot be written in memory (see
        ``not_saved_reason`` and ``ops.save_as``) instead of raising ``StoreNotWritableError``.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise GeometryMismatchError(f"a label store is 2D (YX) or 3D (ZYX) with positive sizes, got {shape}")
        chunks = tuple(int(c) for c in (chunks or fmt.DEFAULT_CHUNKS[len(shape)]))
        if len(chunks) != len(shape) or min(chunks) < 1:
            raise GeometryMismatchError(f"chunks {chunks} do not fit a store of shape {shape}")
        chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
        classes = classes or ClassSchema()
        kw = dict(shape=shape, chunks=chunks, classes=classes, pixel_size=pixel_size, unit=unit, level=level,
                  image_path=str(image_path) if image_path else None, image_shape=image_shape,
                  coarsest=coarsest)
        if path is None:
            return cls(path=None, mode="r+", arrays=None, lock=None, **kw)
        path = Path(path)
        if not fmt.writable_dir(path) or (path.exists() and not os.access(path, os.W_OK)):
            msg = (f"cannot create a label store in {path}: the folder is not writable; choose another "
                   "folder (your labels are kept in memory until you do).")
            if on_readonly == "memory":
                store = cls(path=None, mode="r+", arrays=None, lock=None, **kw)
                store.not_saved_reason = msg
                store.intended_path = path
                log.warning(msg)
                return store
            raise fmt.StoreNotWritableError(msg)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise MedsegError(f"{path} already exists; open it with LabelStore.open, or pass overwrite=True.")
            probe = StoreLock(path)  # never delete a store another editor has open
            probe.acquire()
            probe.release()
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        lock = StoreLock(path)
        lock.acquire()
        try:
            store = cls(path=path, mode="r+", arrays=None, lock=lock, **kw)
            store.io.attach(fmt.create_arrays(path, store.level_shapes, chunks), path, disk_ok=True)
            store.write_attrs()
            write_json_atomic(path / INDEX_NAME, index_to_json({}))
        except BaseException:
            lock.release()
            raise
        log.info("created label store %s shape %s chunks %s", path, shape, chunks)
        return store

    @classmethod
    def in_memory(cls, shape: Sequence[int], **kwargs: Any) -> LabelStore:
        """A store that lives in memory only (``ops.save_as`` writes it to disk later)."""
        return cls.create(None, shape, **kwargs)

    @classmethod
    def open(cls, path: str | os.PathLike, *, image: ImageSource | None = None, mode: str = "r+",
             on_readonly: str = "raise", break_lock: bool = False) -> LabelStore:
        """Open an existing store (``mode`` "r" reads only and takes no lock; "r+" edits and locks it).

        With ``image`` the geometry is checked: a store made for another image raises
        ``GeometryMismatchError`` naming both shapes. A second editor gets ``StoreLockedError``.
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        path = Path(path)
        meta = fmt.read_meta(path)
        shape = tuple(meta["shape"])
        level = int(meta.get("level", 0))
        if image is not None:
            fmt.check_geometry(path, shape, level, meta.get("image_shape"), image)
        writable = mode == "r+" and os.access(path, os.W_OK) and os.access(path / "0", os.W_OK)
        reason = None
        if mode == "r+" and not writable:
            reason = (f"label store {path} is in a folder that cannot be written; your new labels are kept in "
                      "memory: choose another folder to save them.")
            if on_readonly != "memory":
                raise fmt.StoreNotWritableError(reason)
            log.warning(reason)
        lock = None
        if mode == "r+" and writable:
            lock = StoreLock(path)
            lock.acquire(break_lock=break_lock)
        try:
            coarsest = int(meta.get("overview_coarsest", fmt.OVERVIEW_COARSEST))
            n_levels = len(pyramid_geometry(shape, meta["chunks"], coarsest)[0])
            arrays = fmt.open_arrays(path, n_levels, writable)
            store = cls(shape=shape, chunks=meta["chunks"], classes=ClassSchema.from_dict(meta["classes"]),
                        pixel_size=meta.get("pixel_size"), unit=meta.get("unit"), level=level,
                        image_path=meta.get("image_path"), image_shape=meta.get("image_shape"), path=path,
                        mode="r+" if mode == "r+" else "r", arrays=arrays, lock=lock, coarsest=coarsest)
            if reason:
                store.io.disk_ok = False
                store.not_saved_reason = reason
            store._load_index()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    @classmethod
    def for_image(cls, image: ImageSource, *, folder: str | os.PathLike | None = None,
                  classes: ClassSchema | None = None, level: int = 0, chunks: Sequence[int] | None = None,
                  on_readonly: str = "raise", mode: str = "r+") -> LabelStore:
        """Open the image's store (``format.default_path``: beside it, or in a project ``folder``), or
        create it if there is none."""
        path = fmt.default_path(image, folder)
        if mode == "r" and not fmt.is_label_store(path):
            raise UnreadableInputError(f"{path}: no label store for image {image.name!r} yet; open it for editing "
                                       "to create one.")
        if path.exists() and any(path.iterdir()):
            store = cls.open(path, image=image, mode=mode, on_readonly=on_readonly)
            if classes is not None and classes != store.classes:
                log.info("label store %s keeps its own classes %s", path, store.classes.names)
            return store
        store = cls.create(path, image.level_shape(level), classes=classes, chunks=chunks,
                           pixel_size=image.level_pixel_size(level), unit=image.unit, image_path=image.path,
                           level=level, image_shape=image.shape, on_readonly=on_readonly)
        if store.path is not None and path.parent.name == "labels":
            fmt.register_ngff_label(path)
        return store

    def write_attrs(self) -> None:
        """Write the metadata (classes, geometry) to the store's attributes (``OSError`` if the disk fails)."""
        if not self.io.disk_ok or self.path is None:
            return
        meta = fmt.store_meta(shape=self.shape, chunks=self.chunks, level=self.level, pixel_size=self.pixel_size,
                              unit=self.unit, image_path=self.image_path, image_shape=self.image_shape,
                              classes=self.classes, coarsest=self.coarsest)
        fmt.write_attrs(self.path, meta, self.classes, self.io.cumulative)

    def _load_index(self) -> None:
        """Load the index and repair what a leftover journal says was in flight when a process died."""
        assert self.path is not None
        repaired = self.index.load(self.path, self.ndim, lambda c: self.io.read_disk(0, c))
        if repaired and self.io.disk_ok:
            with self.write_lock:
                self.io.update_overview(set(repaired))
                self._persist_index()
                LabelIndex.end_journal(self.path)

    def _persist_index(self) -> None:
        if self.io.disk_ok and self.path is not None:
            self.index.persist(self.path)

    # -- properties ---------------------------------------------------------------------------------
    @property
    def axes(self) -> str:
        return "ZYX" if self.ndim == 3 else "YX"

    @property
    def writable(self) -> bool:
        """True when edits are allowed (in memory for a store that cannot be saved where it is)."""
        return self.mode == "r+" and not self._closed

    @property
    def persistent(self) -> bool:
        """True when writes reach the disk now (False: in memory, or a folder that cannot be written)."""
        return self.io.disk_ok

    @property
    def not_saved_reason(self) -> str | None:
        """Why new labels are kept in memory only (None while they are saved)."""
        return self.io.not_saved_reason

    @not_saved_reason.setter
    def not_saved_reason(self, reason: str | None) -> None:
        self.io.not_saved_reason = reason

    @property
    def unsaved_chunks(self) -> int:
        return self.io.unsaved_count()

    @property
    def version(self) -> int:
        """Counts write batches (and reloads): unchanged means the labels are as they were."""
        return self.index.version

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return (f"LabelStore({where}, shape={self.shape}, chunks={self.chunks}, classes={list(self.classes.names)}, "
                f"painted_chunks={len(self.index.counts)}, mode={self.mode!r})")

    # -- the index ----------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Reload the index if another process changed it (for read-only openers). True if reloaded."""
        if self.path is None or self.mode == "r+" or not self.index.changed_on_disk(self.path):
            return False
        with self.index.lock:
            self.io.clear_cache()
            self._load_index()
        return True

    def painted_chunks(self) -> list[Chunk]:
        """Grid indices of the level-0 chunks holding paint, sorted; from the index (no scan)."""
        return self.index.painted_chunks()

    def chunk_classes(self) -> dict[Chunk, frozenset[int]]:
        """Store values (1 = background, 2.. = classes) present in each painted chunk."""
        return self.index.chunk_classes()

    def chunk_region(self, chunk: Sequence[int], level: int = 0) -> tuple[slice, ...]:
        """The pixel region (at ``level``) of the chunk with grid index ``chunk``."""
        return chunk_slices(tuple(chunk), self.level_shapes[level], self.chunks)

    def class_counts(self) -> dict[int, int]:
        """Painted pixels per store value: every value of the schema (1..n), zeros included."""
        return self.index.class_counts(self.classes.max_store_value)

    def painted_blocks(self, reuse: dict[Chunk, np.ndarray] | None = None, since: int = -1
                       ) -> tuple[int, dict[Chunk, np.ndarray], dict[Chunk, dict[int, int]]]:
        """``(version, blocks, counts)`` of every painted level-0 chunk at one version: the blocks are the
        store's own read-only arrays (never copied; a write replaces a chunk, never changes it), the
        counts come from the index. Blocks in ``reuse`` of chunks not changed after version ``since`` are
        taken as they are, so only the chunks changed since are looked up."""
        with self.write_lock:  # no batch in flight; readers go on (chunks are read one lock at a time)
            with self.index.lock:
                version, counts, changed_at = self.index.version, self.index.chunk_counts(), dict(self.index.changed_at)
            blocks = {}
            for c in sorted(counts):
                blk = reuse.get(c) if reuse is not None and changed_at.get(c, 0) <= since else None
                blocks[c] = blk if blk is not None else self.io.get_chunk(0, c)
            return version, blocks, counts

    # -- reading ------------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> np.ndarray:
        """Numpy basic indexing (ints, slices with positive steps, Ellipsis); zeros where nothing is painted."""
        return self.io.read_level(0, key)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The labels of ``region`` (a tuple of slices, spatial axes) as a new uint8 array."""
        return self.io.read_level(0, region)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.io.read_level(0, ())
        return out if dtype is None else out.astype(dtype)

    def level_array(self, level: int, blank: Callable[[], tuple[slice, ...] | None] | None = None) -> LevelArray:
        """An array-like view (shape, dtype, ndim, ``__getitem__``) of overview level ``level``; with ``blank``,
        zeros where the level-0 box ``blank()`` returns covers a level pixel (see ``chunks.LevelArray``)."""
        return LevelArray(self.io, level, blank)

    # -- writing ------------------------------------------------------------------------------------
    def require_writable(self) -> None:
        """Raise ``MedsegError`` unless the store takes edits (open ``r+`` and not closed)."""
        if self._closed:
            raise MedsegError("this label store is closed; open it again to edit.")
        if self.mode != "r+":
            raise MedsegError(f"label store {self.path} is open read-only; open it with mode='r+' to edit.")

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(changed_chunks, origin)`` after every write batch that changed level-0 chunks
        (in the writing thread; ``origin`` is what the writer passed, e.g. a painting controller)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def write(self, region: tuple[slice, ...], data: np.ndarray | int, *, overview: bool = True,
              origin: Any = None) -> list[Chunk]:
        """Write ``data`` into ``region`` (slices, step 1). Merged into whole chunks; each chunk is written
        once, whole; chunks left empty are deleted. Raises ``LabelValueError`` before writing anything if
        values are beyond the schema, ``StoreNotWritableError`` (labels kept in memory) if the disk fails.
        Returns the level-0 chunks that changed."""
        self.require_writable()
        ranges, squeeze = normalize_key(region, self.shape)
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
        fmt.check_values(arr, self.classes)
        with self.write_lock:
            blocks = self.io.merge_region(lo, hi, arr)
            return self.write_chunks(blocks, overview=overview, validated=True, origin=origin)

    def write_chunks(self, blocks: dict[Chunk, np.ndarray], *, overview: bool = True,
                     validated: bool = False, origin: Any = None) -> list[Chunk]:
        """Replace whole level-0 chunks (grid index -> full chunk content). Unchanged chunks are skipped;
        returns the chunks that changed. The batch is journaled so a crash leaves a repairable store."""
        self.require_writable()
        self.io.check_blocks(blocks)
        for blk in () if validated else blocks.values():
            fmt.check_values(blk, self.classes)
        t0 = time.perf_counter()
        failed: OSError | None = None
        io = self.io
        with self.write_lock:
            changed = {}
            for c, blk in blocks.items():
                cur = io.get_chunk(0, c)
                if (blk.any() if cur is None else not np.array_equal(cur, blk)):
                    changed[c] = blk
            if not changed:
                return []
            journaled = io.disk_ok and self.path is not None
            if journaled:
                try:
                    LabelIndex.begin_journal(self.path, changed)
                except OSError as e:
                    io.go_memory(e)
                    failed = e
            was_ok = io.disk_ok
            for c, blk in changed.items():
                io.put_chunk(0, c, blk)
                self.index.set_chunk(c, value_counts(blk))
            if overview:
                io.update_overview(set(changed))
            if io.disk_ok:
                try:
                    self._persist_index()
                    if journaled:
                        LabelIndex.end_journal(self.path)
                except OSError as e:
                    io.go_memory(e)
            if was_ok and not io.disk_ok and failed is None:
                failed = OSError(self.not_saved_reason)
            self.index.bump()
            self.stats["batches"] += 1
            self.stats["write_s"] += time.perf_counter() - t0
        done = sorted(changed)
        for cb in list(self._listeners):
            try:
                cb(done, origin)
            except Exception:  # a listener must never break a write
                log.exception("label store listener failed")
        if failed is not None:
            raise fmt.StoreNotWritableError(self.not_saved_reason or str(failed))
        return done

    def rebuild_overview(self, chunks: Sequence[Chunk] | set[Chunk] | None = None) -> None:
        """Recompute the overview pyramid above ``chunks`` (default: every painted chunk)."""
        with self.write_lock:
            dirty = set(chunks) if chunks is not None else set(self.painted_chunks())
            if dirty:
                self.io.update_overview(dirty)
            self._persist_index()

    def take_over(self, new: LabelStore) -> None:
        """Continue as ``new`` (this store's labels just written elsewhere, ``ops.save_as``): its path,
        files, index and lock; this store's lock is released; listeners stay; ``version`` counts on."""
        with self.write_lock:
            old_lock, version = self._filelock, self.index.version
            keep = {"write_lock": self.write_lock, "_listeners": self._listeners}  # we are inside the lock
            self.__dict__.update(new.__dict__)
            self.__dict__.update(keep)
            self.index.restamp(max(version, self.index.version) + 1)
            new._filelock = None
        if old_lock is not None:
            old_lock.release()

    # -- flush / close ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Persist what is pending (writes go to disk as they happen; this retries in-memory chunks when
        the folder became writable again and rewrites the index)."""
        io = self.io
        if self.mode != "r+" or self._closed or io.arrays is None:
            return
        with self.write_lock:
            if not io.disk_ok and self.path is not None and os.access(self.path, os.W_OK) \
                    and self._filelock is not None and self._filelock.held:
                io.disk_ok = True
                io.save_unsaved()
                if io.disk_ok:
                    io.not_saved_reason = None
            if io.disk_ok:
                try:
                    self._persist_index()
                except OSError as e:
                    io.go_memory(e)

    def close(self) -> None:
        """Flush and release the edit lock. In-memory labels are dropped: ``ops.save_as`` them first."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            if self.unsaved_chunks:
                log.warning("label store %s closed with %d chunk(s) never saved", self.path, self.unsaved_chunks)
            if self._filelock is not None:
                self._filelock.release()
            self._closed = True

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        if self.path is None or self.unsaved_chunks:
            raise TypeError("an in-memory label store (or one with unsaved chunks) cannot be pickled; save it first")
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = LabelStore.open(state["path"], mode="r")
        self.__dict__.update(other.__dict__)
