"""``LabelStore``: sparse, chunked, crash-safe labels in an image's geometry (pure: no napari, no Qt).

A label store is an NGFF 0.4 labels group (zarr format 2) holding uint8 labels in the level-0 geometry of
an image (or of a declared level), axes ``YX`` (slides) or ``ZYX`` (volumes)::

    <store>/.zattrs            multiscales + image-label (class names and colors) + napari_medseg metadata
    <store>/0/<iy>/<ix>        level 0: only chunks that hold paint exist on disk
    <store>/1, 2, ...          a read-only overview pyramid (max-pooled, so no stroke vanishes at low zoom)
    <store>/medseg_index.json  per painted chunk, the pixel count of every store value in it
    <store>/.medseg.lock       the edit lock (pid, host, time) while a viewer or process edits it

Store values: 0 = not annotated (ignored by training), 1 = background, 2.. = classes (``ClassSchema``).
Every write replaces whole chunks (one writer per chunk: one editing process, writes serialised inside
it); a chunk that becomes empty is deleted, never written. zarr writes each chunk file atomically; the
index is JSON replaced atomically, and a small journal names the chunks of a batch in flight, so a store
killed mid-write reopens consistent. A store in a folder that cannot be written keeps its new labels in
memory (``unsaved_chunks``) until ``save_as`` puts them somewhere else: nothing painted is lost.

Readers (the training engine) use ``store[region]`` / ``read``, ``painted_chunks()`` and
``chunk_classes()``: all answered from the index, never by scanning empty space.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.storage import LocalStore

from . import label_store_index as ix
from .classes import ClassSchema
from .errors import GeometryMismatchError, MedsegError, UnreadableInputError
from .label_store_lock import StoreLock
from .label_store_ops import LabelStoreOpsMixin
from .ngff_meta import image_label_attrs, multiscales_attrs
from .source import ImageSource

log = logging.getLogger(__name__)

META_KEY = "napari_medseg"
STORE_FORMAT = 1
DEFAULT_CHUNKS = {2: (512, 512), 3: (32, 128, 128)}
CACHE_BYTES = 96 * 2**20
OVERVIEW_COARSEST = 1024  # the overview pyramid stops when its largest axis is at most this many pixels


class StoreNotWritableError(MedsegError):
    """The store's folder cannot be written; the labels stay in memory until saved elsewhere."""


class LabelValueError(MedsegError):
    """Labels with a dtype or values the store cannot hold (float data, values beyond the class schema)."""


def _compressor() -> Any:
    return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


def _writable_dir(path: Path) -> bool:
    """Whether new files can be created in ``path`` (or, if it does not exist, in its nearest parent)."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


class LabelStore(LabelStoreOpsMixin):
    """Sparse uint8 labels over an image: spatial axes ``YX`` or ``ZYX``, values 0 / 1 / 2.. (see module).

    Build one with ``create``, ``open``, ``for_image`` or ``in_memory``; do not call the constructor.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, *, shape: Sequence[int], chunks: Sequence[int], classes: ClassSchema,
                 pixel_size: Sequence[float] | None, unit: str | None, level: int,
                 image_path: str | None, image_shape: Sequence[int] | None, path: Path | None,
                 mode: str, arrays: list[Any] | None, lock: StoreLock | None,
                 coarsest: int = OVERVIEW_COARSEST) -> None:
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
        self.not_saved_reason: str | None = None
        self.intended_path: Path | None = None  # where an in-memory store was meant to be saved
        self.stats = {"chunks_written": 0, "chunks_deleted": 0, "empty_chunk_writes": 0, "batches": 0,
                      "write_s": 0.0}
        self._arrays = arrays
        self._files = self._chunk_files(arrays, path)
        self._filelock = lock
        self._disk_ok = arrays is not None and mode == "r+"
        self._closed = False
        self.coarsest = int(coarsest)
        self.level_shapes, self.level_factors = ix.pyramid_geometry(self.shape, self.chunks, self.coarsest)
        self._cum = ix.cumulative_factors(self.level_factors)
        self._counts: dict[ix.Chunk, ix.Counts] = {}
        self._painted: list[set[ix.Chunk]] = [set() for _ in self.level_shapes]
        self._unsaved: dict[tuple[int, ix.Chunk], np.ndarray | None] = {}
        self._cache: OrderedDict[tuple[int, ix.Chunk], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.RLock()        # in-memory state (index, cache, unsaved) and disk reads
        self._write_lock = threading.RLock()  # one writer at a time: whole batches are serialised
        self._index_mtime: float | None = None
        self._listeners: list[Callable[[list[ix.Chunk], Any], None]] = []

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike | None, shape: Sequence[int], *, classes: ClassSchema | None = None,
               chunks: Sequence[int] | None = None, pixel_size: Sequence[float] | None = None,
               unit: str | None = None, image_path: str | None = None, level: int = 0,
               overwrite: bool = False, image_shape: Sequence[int] | None = None,
               on_readonly: str = "raise", coarsest: int = OVERVIEW_COARSEST) -> LabelStore:
        """A new empty store at ``path`` (``None``: in memory only). ``shape`` is spatial (YX or ZYX).

        ``on_readonly="memory"`` keeps a store whose folder cannot be written in memory (see
        ``not_saved_reason`` and ``save_as``) instead of raising ``StoreNotWritableError``.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise GeometryMismatchError(f"a label store is 2D (YX) or 3D (ZYX) with positive sizes, got {shape}")
        chunks = tuple(int(c) for c in (chunks or DEFAULT_CHUNKS[len(shape)]))
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
        if not _writable_dir(path) or (path.exists() and not os.access(path, os.W_OK)):
            msg = (f"cannot create a label store in {path}: the folder is not writable; choose another "
                   "folder (your labels are kept in memory until you do).")
            if on_readonly == "memory":
                store = cls(path=None, mode="r+", arrays=None, lock=None, **kw)
                store.not_saved_reason = msg
                store.intended_path = path
                log.warning(msg)
                return store
            raise StoreNotWritableError(msg)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise MedsegError(f"{path} already exists; open it with LabelStore.open, or pass overwrite=True.")
            import shutil
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        lock = StoreLock(path)
        lock.acquire()
        try:
            group = zarr.open_group(store=LocalStore(path), mode="a", zarr_format=2)
            store = cls(path=path, mode="r+", arrays=None, lock=lock, **kw)
            arrays = []
            for k, lshape in enumerate(store.level_shapes):
                arrays.append(group.create_array(
                    str(k), shape=lshape, chunks=chunks, dtype="uint8", fill_value=0, compressors=_compressor(),
                    chunk_key_encoding={"name": "v2", "separator": "/"}, config={"write_empty_chunks": False}))
            store._arrays = arrays
            store._files = store._chunk_files(arrays, path)
            store._disk_ok = True
            store._write_attrs()
            ix.write_json_atomic(path / ix.INDEX_NAME, ix.index_to_json({}))
        except BaseException:
            lock.release()
            raise
        log.info("created label store %s shape %s chunks %s", path, shape, chunks)
        return store

    @classmethod
    def in_memory(cls, shape: Sequence[int], **kwargs: Any) -> LabelStore:
        """A store that lives in memory only (``save_as`` writes it to disk later)."""
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
        meta = cls._read_meta(path)
        shape = tuple(meta["shape"])
        level = int(meta.get("level", 0))
        if image is not None:
            cls._check_geometry(path, shape, level, meta.get("image_shape"), image)
        writable = mode == "r+" and os.access(path, os.W_OK) and os.access(path / "0", os.W_OK)
        reason = None
        if mode == "r+" and not writable:
            reason = (f"label store {path} is in a folder that cannot be written; your new labels are kept in "
                      "memory: choose another folder to save them.")
            if on_readonly != "memory":
                raise StoreNotWritableError(reason)
            log.warning(reason)
        lock = None
        if mode == "r+" and writable:
            lock = StoreLock(path)
            lock.acquire(break_lock=break_lock)
        try:
            zmode = "r+" if (mode == "r+" and writable) else "r"
            arrays = []
            coarsest = int(meta.get("overview_coarsest", OVERVIEW_COARSEST))
            n_levels = len(ix.pyramid_geometry(shape, meta["chunks"], coarsest)[0])
            for k in range(n_levels):
                arrays.append(zarr.open_array(store=LocalStore(path, read_only=zmode == "r"), path=str(k),
                                              mode=zmode, zarr_format=2))
            store = cls(shape=shape, chunks=meta["chunks"], classes=ClassSchema.from_dict(meta["classes"]),
                        pixel_size=meta.get("pixel_size"), unit=meta.get("unit"), level=level,
                        image_path=meta.get("image_path"), image_shape=meta.get("image_shape"), path=path,
                        mode="r+" if mode == "r+" else "r", arrays=arrays, lock=lock, coarsest=coarsest)
            if reason:
                store._disk_ok = False
                store.not_saved_reason = reason
                store.intended_path = None
            store._load_index()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    @classmethod
    def default_path(cls, image: ImageSource, folder: str | os.PathLike | None = None) -> Path:
        """Where ``for_image`` keeps the store: ``<folder>/<name>.labels.zarr``, or beside the image
        (``<image>.zarr/labels/medseg`` for an NGFF zarr v2 image, ``<stem>.labels.zarr`` otherwise)."""
        src = Path(image.path) if image.path else None
        stem = (src.name if src else image.name) or "image"
        for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", ".zarr", ".tiff", ".tif", ".svs", ".ndpi",
                       ".nii.gz", ".nii", ".dcm"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if folder is not None:
            return Path(folder) / f"{stem}.labels.zarr"
        if src is None:
            raise MedsegError(f"image {image.name!r} has no file: choose a project folder for its label store.")
        if src.is_dir() and (src / ".zgroup").exists():
            return src / "labels" / "medseg"
        return src.parent / f"{stem}.labels.zarr"

    @classmethod
    def for_image(cls, image: ImageSource, *, folder: str | os.PathLike | None = None,
                  classes: ClassSchema | None = None, level: int = 0, chunks: Sequence[int] | None = None,
                  on_readonly: str = "raise", mode: str = "r+") -> LabelStore:
        """Open the image's store (beside it, or in a project ``folder``), or create it if there is none."""
        path = cls.default_path(image, folder)
        if path.exists() and any(path.iterdir()):
            store = cls.open(path, image=image, mode=mode, on_readonly=on_readonly)
            if classes is not None and classes != store.classes:
                log.info("label store %s keeps its own classes %s", path, store.classes.names)
            return store
        store = cls.create(path, image.level_shape(level), classes=classes, chunks=chunks,
                           pixel_size=image.level_pixel_size(level), unit=image.unit, image_path=image.path,
                           level=level, image_shape=image.shape, on_readonly=on_readonly)
        if store.path is not None and path.parent.name == "labels":
            cls._register_ngff_label(path)
        return store

    # -- metadata -----------------------------------------------------------------------------------
    @staticmethod
    def _read_meta(path: Path) -> dict[str, Any]:
        if not path.is_dir():
            raise UnreadableInputError(f"{path}: no label store here (not a folder).")
        try:
            attrs = dict(zarr.open_group(store=LocalStore(path, read_only=True), mode="r", zarr_format=2).attrs)
        except Exception as e:
            raise UnreadableInputError(f"{path}: not a zarr label store ({type(e).__name__}: {e}).") from e
        meta = attrs.get(META_KEY)
        if not isinstance(meta, dict) or meta.get("label_store") != STORE_FORMAT:
            raise UnreadableInputError(f"{path}: a zarr group but not a napari-medseg label store.")
        return meta

    @staticmethod
    def _check_geometry(path: Path, shape: tuple[int, ...], level: int, image_shape: Any,
                        image: ImageSource) -> None:
        axes = "ZYX" if len(shape) == 3 else "YX"
        if level >= len(image.levels):
            raise GeometryMismatchError(
                f"label store {path} is for pyramid level {level} but image {image.name!r} has "
                f"{len(image.levels)} levels; open the store made for this image or create a new one.")
        want = image.level_shape(level)
        if tuple(shape) != tuple(want) or (image_shape and tuple(image_shape) != tuple(image.shape)):
            made_for = tuple(image_shape) if image_shape else tuple(shape)
            raise GeometryMismatchError(
                f"label store {path} was made for an image of shape {made_for} ({axes}) but image "
                f"{image.name!r} has shape {tuple(image.shape)} ({axes}); open the store made for this image "
                "or create a new one.")

    def _meta(self) -> dict[str, Any]:
        return {"label_store": STORE_FORMAT, "shape": list(self.shape), "chunks": list(self.chunks),
                "axes": self.axes, "level": self.level, "pixel_size": list(self.pixel_size), "unit": self.unit,
                "image_path": self.image_path, "image_shape": list(self.image_shape) if self.image_shape else None,
                "classes": self.classes.to_dict(), "overview_coarsest": self.coarsest,
                "values": {"0": "not annotated", "1": "background", "2..": "classes"}}

    def _write_attrs(self) -> None:
        if not self._disk_ok or self.path is None:
            return
        scales = [[p * f for p, f in zip(self.pixel_size, cum)] for cum in self._cum]
        trans = [[(f - 1) / 2 * p for p, f in zip(self.pixel_size, cum)] for cum in self._cum]
        attrs = multiscales_attrs(self.axes, scales, self.unit, name=self.path.name, level_translations=trans)
        il = image_label_attrs({k: v for k, v in self.classes.store_colors().items() if k is not None},
                               source_image=self.image_path or "../../")
        il["image-label"]["properties"] = [{"label-value": i + 1, "class": n}
                                           for i, n in enumerate(self.classes.names)]
        attrs.update(il)
        attrs[META_KEY] = self._meta()
        group = zarr.open_group(store=LocalStore(self.path), mode="r+", zarr_format=2)
        group.attrs.update(attrs)

    @staticmethod
    def _register_ngff_label(path: Path) -> None:
        """List the store in ``<image>.zarr/labels/.zattrs`` so NGFF viewers find it."""
        try:
            g = zarr.open_group(store=LocalStore(path.parent), mode="a", zarr_format=2)
            names = list(g.attrs.get("labels", []))
            if path.name not in names:
                g.attrs.update({"labels": names + [path.name]})
        except Exception as e:  # the store works without it
            log.warning("could not list %s in %s/.zattrs: %s", path.name, path.parent, e)

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
        return self._disk_ok

    @property
    def unsaved_chunks(self) -> int:
        with self._lock:
            return sum(1 for (lvl, _c) in self._unsaved if lvl == 0)

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return (f"LabelStore({where}, shape={self.shape}, chunks={self.chunks}, classes={list(self.classes.names)}, "
                f"painted_chunks={len(self._counts)}, mode={self.mode!r})")

    # -- index --------------------------------------------------------------------------------------
    def _load_index(self) -> None:
        """Load the index, then make it agree with the chunks on disk (listing painted chunks only) and
        repair what a journal says was in flight when a process died."""
        assert self.path is not None
        idx_path = self.path / ix.INDEX_NAME
        counts = ix.index_from_json(ix.read_json(idx_path)) or {}
        self._index_mtime = idx_path.stat().st_mtime if idx_path.exists() else None
        listed = ix.list_chunk_files(self.path / "0", self.ndim)
        journal = ix.read_json(self.path / ix.JOURNAL_NAME)
        suspects = {ix.parse_chunk_key(k) for k in (journal or {}).get("chunks", [])} if journal else set()
        suspects |= listed.symmetric_difference(counts.keys())
        for c in suspects:
            counts.pop(c, None)
        self._counts = counts
        self._rebuild_painted_sets()
        repaired = []
        for c in sorted(suspects):
            if c not in listed:
                continue
            blk = self._read_disk(0, c)
            if blk is None:
                continue
            cnt = ix.value_counts(blk)
            if cnt:
                self._counts[c] = cnt
                repaired.append(c)
        if suspects:
            self._rebuild_painted_sets()
            log.warning("label store %s: index repaired for %d chunk(s) (a previous session was interrupted)",
                        self.path, len(suspects))
            if self._disk_ok:
                with self._write_lock:
                    self._update_overview(set(suspects))
                    self._persist_index()
                    (self.path / ix.JOURNAL_NAME).unlink(missing_ok=True)

    def _rebuild_painted_sets(self) -> None:
        with self._lock:
            self._painted[0] = set(self._counts)
            for k in range(1, len(self.level_shapes)):
                self._painted[k] = ix.parents(self._painted[k - 1], self.level_factors[k])

    def _persist_index(self) -> None:
        if not self._disk_ok or self.path is None:
            return
        with self._lock:
            obj = ix.index_to_json(self._counts)
        ix.write_json_atomic(self.path / ix.INDEX_NAME, obj)
        self._index_mtime = (self.path / ix.INDEX_NAME).stat().st_mtime

    def refresh(self) -> bool:
        """Reload the index if another process changed it (for read-only openers). True if reloaded."""
        if self.path is None or self.mode == "r+":
            return False
        p = self.path / ix.INDEX_NAME
        try:
            mtime = p.stat().st_mtime
        except OSError:
            return False
        if mtime == self._index_mtime:
            return False
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0
            self._load_index()
        return True

    def painted_chunks(self) -> list[ix.Chunk]:
        """Grid indices of the level-0 chunks holding paint, sorted; from the index (no scan)."""
        with self._lock:
            return sorted(self._counts)

    def chunk_classes(self) -> dict[ix.Chunk, frozenset[int]]:
        """Store values (1 = background, 2.. = classes) present in each painted chunk."""
        with self._lock:
            return {c: frozenset(cnt) for c, cnt in self._counts.items()}

    def chunk_counts(self) -> dict[ix.Chunk, dict[int, int]]:
        """Pixel count of every store value in each painted chunk."""
        with self._lock:
            return {c: dict(cnt) for c, cnt in self._counts.items()}

    def chunk_region(self, chunk: Sequence[int], level: int = 0) -> tuple[slice, ...]:
        """The pixel region (at ``level``) of the chunk with grid index ``chunk``."""
        return ix.chunk_slices(tuple(chunk), self.level_shapes[level], self.chunks)

    def class_counts(self) -> dict[int, int]:
        """Painted pixels per store value: every value of the schema (1..n), zeros included."""
        total = {v: 0 for v in range(1, self.classes.max_store_value + 1)}
        with self._lock:
            for cnt in self._counts.values():
                for v, n in cnt.items():
                    total[v] = total.get(v, 0) + n
        return total

    # -- chunk IO -----------------------------------------------------------------------------------
    def _get_chunk(self, level: int, c: ix.Chunk) -> np.ndarray | None:
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

    def _read_disk(self, level: int, c: ix.Chunk) -> np.ndarray | None:
        sl = ix.chunk_slices(c, self.level_shapes[level], self.chunks)
        files = self._files[level] if self._files else None
        if files is not None:
            return files.read(c, [s.stop - s.start for s in sl])
        return np.asarray(self._arrays[level][sl])  # type: ignore[index]

    def _cache_put(self, key: tuple[int, ix.Chunk], blk: np.ndarray | None) -> None:
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

    def _put_chunk(self, level: int, c: ix.Chunk, blk: np.ndarray | None) -> None:
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

    def _delete_chunk_file(self, level: int, c: ix.Chunk) -> None:
        assert self.path is not None
        f = self.path / str(level) / Path(*[str(i) for i in c])
        try:
            f.unlink()
            self.stats["chunks_deleted"] += 1
        except FileNotFoundError:
            pass

    def _go_memory(self, err: OSError) -> None:
        self._disk_ok = False
        self.not_saved_reason = (
            f"label store {self.path} cannot be written ({err.strerror or err}); your labels are kept in "
            "memory: choose another folder to save them.")
        log.error(self.not_saved_reason)

    # -- reading ------------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> np.ndarray:
        """Numpy basic indexing (ints, slices with positive steps, Ellipsis); zeros where nothing is painted."""
        return self._read_level(0, key)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The labels of ``region`` (a tuple of slices, spatial axes) as a new uint8 array."""
        return self._read_level(0, region)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read_level(0, ())
        return out if dtype is None else out.astype(dtype)

    def _read_level(self, level: int, key: Any) -> np.ndarray:
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

    def level_array(self, level: int) -> LevelArray:
        """An array-like view (shape, dtype, ndim, ``__getitem__``) of overview level ``level``."""
        return LevelArray(self, level)

    def overview_levels(self) -> list[Any]:
        """The store as a lazy multiscale pyramid (dask arrays, level 0 first) for a read-only overview.
        Each call returns fresh dask arrays (new names), so a viewer never shows cached stale tiles."""
        import uuid

        import dask.array as da
        token = uuid.uuid4().hex[:12]
        return [da.from_array(LevelArray(self, k), chunks=self.chunks, name=f"labelstore-{token}-{k}",
                              asarray=True, fancy=False, lock=False, meta=np.zeros((0,) * self.ndim, np.uint8))
                for k in range(len(self.level_shapes))]

    def to_image_source(self, name: str = "labels") -> ImageSource:
        """The store as a ``kind="labels"`` ImageSource (overview levels, pixel size, axes)."""
        return ImageSource(levels=self.overview_levels(), axes=self.axes, pixel_size=self.pixel_size,
                           unit=self.unit, name=name, path=str(self.path) if self.path else None,
                           kind="labels", metadata={"classes": self.classes.to_dict()})

    # -- writing ------------------------------------------------------------------------------------
    def _check_values(self, data: np.ndarray, what: str = "labels") -> None:
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

    def _require_writable(self) -> None:
        if self._closed:
            raise MedsegError("this label store is closed; open it again to edit.")
        if self.mode != "r+":
            raise MedsegError(f"label store {self.path} is open read-only; open it with mode='r+' to edit.")

    def add_listener(self, callback: Callable[[list[ix.Chunk], Any], None]) -> None:
        """Call ``callback(changed_chunks, origin)`` after every write batch that changed level-0 chunks
        (in the writing thread; ``origin`` is what the writer passed, e.g. a painting controller)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[list[ix.Chunk], Any], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def write(self, region: tuple[slice, ...], data: np.ndarray | int, *, overview: bool = True,
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

    def write_chunks(self, blocks: dict[ix.Chunk, np.ndarray], *, overview: bool = True,
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
                    ix.write_json_atomic(journal, {"chunks": [ix.chunk_key(c) for c in changed], "time": time.time()})
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

    def _update_overview(self, dirty: set[ix.Chunk]) -> None:
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

    def flush(self) -> None:
        """Persist what is pending (writes go to disk as they happen; this retries in-memory chunks when
        the folder became writable again and rewrites the index)."""
        if self.mode != "r+" or self._closed or self._arrays is None:
            return
        with self._write_lock:
            if not self._disk_ok and self.path is not None and os.access(self.path, os.W_OK) \
                    and self._filelock is not None and self._filelock.held:
                self._disk_ok = True
                pending = dict(self._unsaved)
                for (lvl, c), blk in sorted(pending.items(), key=lambda kv: kv[0][0]):
                    self._put_chunk(lvl, c, blk)
                if self._disk_ok:
                    self.not_saved_reason = None
            if self._disk_ok:
                try:
                    self._persist_index()
                except OSError as e:
                    self._go_memory(e)

    def close(self) -> None:
        """Flush and release the edit lock. In-memory labels are dropped: ``save_as`` them first."""
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
