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

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import GeometryMismatchError, MedsegError, UnreadableInputError
from napari_medseg.core.files import read_json, write_json_atomic
from napari_medseg.core.source import ImageSource
from napari_medseg.io.ngff_meta import image_label_attrs, multiscales_attrs
from napari_medseg.labels import index as ix
from napari_medseg.labels.chunks import (
    LabelStoreRWMixin,
    LabelValueError,
    LevelArray,
    StoreNotWritableError,
    _normalize_key,
)
from napari_medseg.labels.lock import StoreLock
from napari_medseg.labels.ops import LabelStoreOpsMixin

log = logging.getLogger(__name__)

META_KEY = "napari_medseg"
STORE_FORMAT = 1
DEFAULT_CHUNKS = {2: (512, 512), 3: (32, 128, 128)}
OVERVIEW_COARSEST = 1024  # the overview pyramid stops when its largest axis is at most this many pixels


def _compressor() -> Any:
    return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


def is_label_store(path: str | os.PathLike) -> bool:
    """True if ``path`` is a napari-medseg label store (a quick look at its metadata; never raises)."""
    try:
        LabelStore._read_meta(Path(path))
    except (MedsegError, OSError):
        return False
    return True


def _writable_dir(path: Path) -> bool:
    """Whether new files can be created in ``path`` (or, if it does not exist, in its nearest parent)."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def _safe_name(name: str) -> str:
    """``name`` as a plain file name: path separators, '..' and odd characters become '_'."""
    base = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in str(name).replace("\\", "/").split("/")[-1])
    return base.lstrip(". ") or "image"


class LabelStore(LabelStoreRWMixin, LabelStoreOpsMixin):
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
            probe = StoreLock(path)  # never delete a store another editor has open
            probe.acquire()
            probe.release()
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
            write_json_atomic(path / ix.INDEX_NAME, ix.index_to_json({}))
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
        # a name from a file (no path) must never steer the store out of the folder: keep a plain file name
        stem = (src.name if src else _safe_name(image.name)) or "image"
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
        if mode == "r" and not is_label_store(path):
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
        shape, chunks = meta.get("shape"), meta.get("chunks")
        for key, val in (("shape", shape), ("chunks", chunks)):
            if (not isinstance(val, list) or len(val) not in (2, 3)
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in val)):
                raise UnreadableInputError(f"{path}: the label store's metadata is damaged (missing or invalid "
                                           f"{key!r}).")
        if len(shape) != len(chunks) or not isinstance(meta.get("classes"), dict):
            raise UnreadableInputError(f"{path}: the label store's metadata is damaged (shape, chunks and "
                                       "classes do not fit together).")
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
        counts = ix.index_from_json(read_json(idx_path)) or {}
        self._index_mtime = idx_path.stat().st_mtime if idx_path.exists() else None
        listed = ix.list_chunk_files(self.path / "0", self.ndim)
        journal = read_json(self.path / ix.JOURNAL_NAME)
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
            try:
                blk = self._read_disk(0, c)
            except UnreadableInputError as e:  # a damaged chunk: the store still opens, the chunk is named
                log.warning("%s", e)
                continue
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
        write_json_atomic(self.path / ix.INDEX_NAME, obj)
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




__all__ = ["LabelStore", "LabelValueError", "LevelArray", "StoreNotWritableError", "is_label_store",
           "_normalize_key"]
