"""The label store's on-disk format (pure: no napari, no Qt): what a store folder holds and how it is read.

A store is an NGFF 0.4 labels group (zarr format 2): ``.zattrs`` (multiscales, image-label, and the
``napari_medseg`` metadata: shape, chunks, classes, pixel size, the image it was made for), level arrays
``0``, ``1``, ... whose chunk files exist only where something is painted. Here: reading and validating
that metadata, checking it against an image, writing the attributes, creating and opening the level
arrays, where a store goes by default, the store values (0 = not annotated, 1 = background, 2.. = classes)
and the errors of writing, and ``ChunkFiles``, which reads and writes whole chunk files directly (atomic).
Every function takes plain values; nothing here knows the ``LabelStore`` class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import GeometryMismatchError, MedsegError, UnreadableInputError
from napari_medseg.core.files import atomic_write
from napari_medseg.core.grid import Chunk
from napari_medseg.core.source import ImageSource
from napari_medseg.io.ngff_meta import image_label_attrs, multiscales_attrs

log = logging.getLogger(__name__)

META_KEY = "napari_medseg"
STORE_FORMAT = 1
DEFAULT_CHUNKS = {2: (512, 512), 3: (32, 128, 128)}
OVERVIEW_COARSEST = 1024  # the overview pyramid stops when its largest axis is at most this many pixels


class StoreNotWritableError(MedsegError):
    """The store's folder cannot be written; the labels stay in memory until saved elsewhere."""


class LabelValueError(MedsegError):
    """Labels with a dtype or values the store cannot hold (float data, values beyond the class schema)."""


def check_values(data: np.ndarray, classes: ClassSchema, what: str = "labels") -> None:
    """Raise ``LabelValueError`` unless ``data`` holds integer store values of ``classes`` (0 .. max)."""
    if data.dtype.kind == "f" or data.dtype.kind not in "uib":
        raise LabelValueError(f"{what} must be integers, got {data.dtype}; convert them (e.g. round and "
                              "cast to uint8) before writing.")
    if data.size == 0 or data.dtype.kind == "b":
        return
    lo, hi = int(data.min()), int(data.max())
    top = classes.max_store_value
    if lo < 0 or hi > top:
        bad = sorted({int(v) for v in np.unique(data) if v < 0 or v > top})[:8]
        raise LabelValueError(
            f"{what} hold value(s) {bad} beyond the class schema ({len(classes.names)} classes: store "
            f"values 0 = not annotated, 1 = background up to {top}); add classes first or fix the labels.")


# -- folders and names ---------------------------------------------------------------------------------
def writable_dir(path: Path) -> bool:
    """Whether new files can be created in ``path`` (or, if it does not exist, in its nearest parent)."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def safe_name(name: str) -> str:
    """``name`` as a plain file name: path separators, '..' and odd characters become '_'."""
    base = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in str(name).replace("\\", "/").split("/")[-1])
    return base.lstrip(". ") or "image"


def default_path(image: ImageSource, folder: str | os.PathLike | None = None) -> Path:
    """Where an image's store goes: ``<folder>/<name>.labels.zarr``, or beside the image
    (``<image>.zarr/labels/medseg`` for an NGFF zarr v2 image, ``<stem>.labels.zarr`` otherwise)."""
    src = Path(image.path) if image.path else None
    # a name from a file (no path) must never steer the store out of the folder: keep a plain file name
    stem = (src.name if src else safe_name(image.name)) or "image"
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


# -- metadata ------------------------------------------------------------------------------------------
def read_meta(path: Path) -> dict[str, Any]:
    """The store's ``napari_medseg`` metadata, validated (``UnreadableInputError`` naming what is wrong)."""
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


def is_label_store(path: str | os.PathLike) -> bool:
    """True if ``path`` is a napari-medseg label store (a quick look at its metadata; never raises)."""
    try:
        read_meta(Path(path))
    except (MedsegError, OSError):
        return False
    return True


def check_geometry(path: Path, shape: Sequence[int], level: int, image_shape: Any, image: ImageSource) -> None:
    """Raise ``GeometryMismatchError`` (naming both shapes) unless the store was made for ``image``."""
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


def store_meta(*, shape: Sequence[int], chunks: Sequence[int], level: int, pixel_size: Sequence[float],
               unit: str, image_path: str | None, image_shape: Sequence[int] | None, classes: ClassSchema,
               coarsest: int) -> dict[str, Any]:
    """The ``napari_medseg`` metadata of a store."""
    return {"label_store": STORE_FORMAT, "shape": list(shape), "chunks": list(chunks),
            "axes": "ZYX" if len(shape) == 3 else "YX", "level": level, "pixel_size": list(pixel_size),
            "unit": unit, "image_path": image_path, "image_shape": list(image_shape) if image_shape else None,
            "classes": classes.to_dict(), "overview_coarsest": coarsest,
            "values": {"0": "not annotated", "1": "background", "2..": "classes"}}


def write_attrs(path: Path, meta: dict[str, Any], classes: ClassSchema,
                cumulative: Sequence[Sequence[int]]) -> None:
    """Write the group attributes: NGFF multiscales (one scale per level, ``cumulative`` downsampling
    factors), image-label (class colours and names) and ``meta``."""
    px = meta["pixel_size"]
    scales = [[p * f for p, f in zip(px, cum)] for cum in cumulative]
    trans = [[(f - 1) / 2 * p for p, f in zip(px, cum)] for cum in cumulative]
    attrs = multiscales_attrs(meta["axes"], scales, meta["unit"], name=path.name, level_translations=trans)
    il = image_label_attrs({k: v for k, v in classes.store_colors().items() if k is not None},
                           source_image=meta["image_path"] or "../../")
    il["image-label"]["properties"] = [{"label-value": i + 1, "class": n} for i, n in enumerate(classes.names)]
    attrs.update(il)
    attrs[META_KEY] = meta
    group = zarr.open_group(store=LocalStore(path), mode="r+", zarr_format=2)
    group.attrs.update(attrs)


def register_ngff_label(path: Path) -> None:
    """List the store in ``<image>.zarr/labels/.zattrs`` so NGFF viewers find it (a warning if that fails)."""
    try:
        g = zarr.open_group(store=LocalStore(path.parent), mode="a", zarr_format=2)
        names = list(g.attrs.get("labels", []))
        if path.name not in names:
            g.attrs.update({"labels": names + [path.name]})
    except Exception as e:  # the store works without it
        log.warning("could not list %s in %s/.zattrs: %s", path.name, path.parent, e)


# -- level arrays --------------------------------------------------------------------------------------
def compressor() -> Any:
    return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


def create_arrays(path: Path, level_shapes: Sequence[Sequence[int]], chunks: Sequence[int]) -> list[Any]:
    """Create the empty level arrays ``0``, ``1``, ... (uint8, ``/`` chunk keys, empty chunks not written)."""
    group = zarr.open_group(store=LocalStore(path), mode="a", zarr_format=2)
    return [group.create_array(str(k), shape=tuple(lshape), chunks=tuple(chunks), dtype="uint8", fill_value=0,
                               compressors=compressor(), chunk_key_encoding={"name": "v2", "separator": "/"},
                               config={"write_empty_chunks": False})
            for k, lshape in enumerate(level_shapes)]


def open_arrays(path: Path, n_levels: int, writable: bool) -> list[Any]:
    """Open the level arrays of an existing store."""
    zmode = "r+" if writable else "r"
    return [zarr.open_array(store=LocalStore(path, read_only=not writable), path=str(k), mode=zmode, zarr_format=2)
            for k in range(n_levels)]


def chunk_files(arrays: list[Any] | None, path: Path | None) -> list[ChunkFiles | None]:
    """A ``ChunkFiles`` per level array (None where zarr must do the IO itself)."""
    if arrays is None or path is None:
        return []
    return [ChunkFiles(a, path / str(k)) if ChunkFiles.supports(a) else None for k, a in enumerate(arrays)]


def list_chunk_files(array_dir: str | os.PathLike, ndim: int) -> set[Chunk]:
    """Chunk indices present on disk for a zarr v2 array with ``/`` separators (only painted chunks
    exist, so this lists painted space, never empty space)."""
    root = Path(array_dir)
    out: set[Chunk] = set()
    if not root.is_dir():
        return out
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        if len(rel) != ndim - 1:
            continue
        for fn in filenames:
            if fn.startswith(".") or not fn.isdigit():
                continue
            try:
                out.add(tuple(int(p) for p in rel) + (int(fn),))
            except ValueError:
                continue
    return out


class ChunkFiles:
    """Read and write whole chunks of one zarr v2 array (``/`` chunk keys, C order, no filters, uint8)
    directly as the files zarr reads: the array's own compressor, edge chunks padded to the full chunk
    shape, each file written to a temporary name and renamed (atomic). About 5x faster than going
    through zarr's asynchronous pipeline for one chunk, which matters on a busy GUI thread."""

    def __init__(self, array: Any, array_dir: str | os.PathLike) -> None:
        md = array.metadata
        self.dir = Path(array_dir)
        self.chunks = tuple(int(c) for c in md.chunks)
        self.codec = md.compressor
        self.array = array

    @staticmethod
    def supports(array: Any) -> bool:
        md = array.metadata
        return (getattr(md, "zarr_format", None) == 2 and not md.filters and md.order == "C"
                and getattr(md, "dimension_separator", ".") == "/" and np.dtype(array.dtype) == np.uint8
                and (md.compressor is None or hasattr(md.compressor, "encode")))

    def path(self, c: Chunk) -> Path:
        return self.dir.joinpath(*[str(i) for i in c])

    def read(self, c: Chunk, shape: Sequence[int]) -> np.ndarray | None:
        """The chunk cropped to ``shape`` (its extent inside the array), or None if it has no file."""
        try:
            raw = self.path(c).read_bytes()
        except FileNotFoundError:
            return None
        try:
            if self.codec is not None:
                raw = self.codec.decode(raw)
            full = np.frombuffer(raw, np.uint8).reshape(self.chunks)
        except Exception as e:  # a truncated or overwritten chunk file: name it, never decode garbage
            raise UnreadableInputError(
                f"{self.path(c)}: label store chunk {'/'.join(map(str, c))} is damaged ({type(e).__name__}); "
                "move that file aside to continue without it.") from e
        return full[tuple(slice(0, s) for s in shape)]

    def write(self, c: Chunk, block: np.ndarray) -> None:
        if block.shape != self.chunks:
            pad = np.zeros(self.chunks, np.uint8)
            pad[tuple(slice(0, s) for s in block.shape)] = block
            block = pad
        data = np.ascontiguousarray(block)
        buf = self.codec.encode(data) if self.codec is not None else data.tobytes()
        p = self.path(c)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, lambda f: f.write(buf), suffix=".partial")

    def delete(self, c: Chunk) -> bool:
        try:
            self.path(c).unlink()
        except FileNotFoundError:
            return False
        return True
