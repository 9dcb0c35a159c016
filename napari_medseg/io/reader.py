"""Dispatch a path to the reader for its format.

``sniff(path)`` is cheap and never raises: it returns the format name or ``None`` for a path no reader
here handles. ``open_path(path)`` returns a list of ``ImageSource`` (images first, then labels) or raises
``UnreadableInputError`` with a message that names the file and says what is wrong.

``kind="auto"`` (the default) lets each reader decide image or labels: zarr from its NGFF metadata, NIfTI
from its header, names and values (``io/kind.py``), TIFF and DICOM are images. ``kind="image"`` or
``kind="labels"`` opens the path's own array(s) as that (a zarr's nested ``labels/`` groups stay labels).
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.core.source import ImageSource
from napari_medseg.io.kind import check_kind
from napari_medseg.io.lazy import guard_blosc_decode

guard_blosc_decode()  # a truncated Blosc chunk is an error, never garbage (see io/lazy.py)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".scn", ".bif", ".qptiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _head(path: Path, n: int = 132) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zarray", ".zattrs"))


def _is_dicom_file(path: Path) -> bool:
    return path.suffix.lower() in (".dcm", ".dicom") or _head(path)[128:132] == b"DICM"


def sniff(path: str | os.PathLike) -> str | None:
    """Name the format of ``path`` ("tiff", "zarr", "nifti", "dicom") or None. Never raises."""
    try:
        p = Path(path)
        name = p.name.lower()
        if p.is_dir():
            if _is_zarr_dir(p) or name.endswith(".zarr"):
                return "zarr"
            # a DICOM series folder: any DICOM file among the first few entries
            children = sorted(p.iterdir())[:64]
            if any(c.is_file() and _is_dicom_file(c) for c in children):
                return "dicom"
            # exports often put the series one folder down (e.g. DICOM/<series>/IM0001)
            for sub in [c for c in children if c.is_dir()][:8]:
                if any(c.is_file() and _is_dicom_file(c) for c in sorted(sub.iterdir())[:16]):
                    return "dicom"
            return None
        if name.endswith(NIFTI_SUFFIXES):
            return "nifti"
        if name.endswith(TIFF_SUFFIXES) or _head(p, 4) in TIFF_MAGIC:
            return "tiff"
        if _is_dicom_file(p):
            return "dicom"
        if name.endswith(".zarr"):
            return "zarr"
        return None
    except Exception:  # a foreign or unreadable path is simply not ours
        return None


def open_path(path: str | os.PathLike, kind: str = "auto") -> list[ImageSource]:
    """Open ``path`` lazily. Raises ``UnreadableInputError`` (clear message) if it cannot be read.

    ``kind``: ``"auto"``, ``"image"`` or ``"labels"`` (see the module docstring)."""
    check_kind(kind)
    p = Path(path)
    fmt = sniff(p)
    if fmt is None:
        raise UnreadableInputError(f"{p}: not a format napari-medseg reads (TIFF/SVS/NDPI/OME-TIFF, zarr/OME-Zarr, NIfTI, DICOM).")
    if not p.exists():
        raise UnreadableInputError(f"{p}: no such file or folder.")
    if not os.access(p, os.R_OK):
        raise UnreadableInputError(f"{p}: no permission to read it; check the file's permissions.")
    try:
        if fmt == "nifti":
            from napari_medseg.io.nifti import open_nifti
            return [open_nifti(p, kind=kind)]
        if fmt == "tiff":
            from napari_medseg.io.tiff import open_tiff
            sources = [open_tiff(p)]
        elif fmt == "zarr":
            from napari_medseg.io.ngff_read import open_zarr
            sources = open_zarr(p)
        else:
            from napari_medseg.io.dicom import open_dicom
            sources = open_dicom(p)
        return _as_kind(sources, kind, p)
    except MedsegError:
        raise
    except PermissionError as e:
        raise UnreadableInputError(f"{p}: no permission to read it ({e.strerror}).") from e
    except MemoryError as e:
        raise UnreadableInputError(f"{p}: its header claims a size that cannot be allocated; the file is probably corrupt.") from e
    except Exception as e:
        raise UnreadableInputError(f"{p}: could not be read as {fmt.upper()} ({type(e).__name__}: {e}).") from e


def _as_kind(sources: list[ImageSource], kind: str, path: Path) -> list[ImageSource]:
    """``sources`` with the path's own arrays opened as ``kind`` (not "auto"); nested NGFF labels stay labels."""
    if kind == "auto":
        return sources
    for src in sources:
        if "/labels/" in f"{src.metadata.get('ngff_path', '')}/" or src.kind == kind:
            continue
        if kind == "labels" and (src.rgb or src.dtype.kind not in "iub"):
            what = "RGB" if src.rgb else f"{src.dtype} (not integer)"
            raise UnreadableInputError(f"{path}: cannot be opened as labels: its values are {what}.")
        src.kind = kind
        src.metadata["kind_reason"] = f"opened as {kind} on request (kind={kind!r})"
        src.metadata["kind_evidence"] = "user"
        if kind == "labels":
            src.contrast_limits = None
    return sources


def open_image(path: str | os.PathLike, kind: str = "auto") -> ImageSource:
    """The first image (not labels) in ``path``.

    ``kind="image"`` opens the path's own array as an image even where the reader would take it for labels
    (a NIfTI whose values look like a label map); ``"auto"`` refuses a file that holds only labels."""
    if check_kind(kind) == "labels":
        raise ValueError("open_image reads images: kind must be 'auto' or 'image'")
    sources = open_path(path, kind=kind)
    for src in sources:
        if src.kind == "image":
            return src
    why = sources[0].metadata.get("kind_reason") if sources else None
    raise UnreadableInputError(
        f"{path}: holds labels but no image" + (f" (read as labels: {why})" if why else "") + ". If it is an "
        "image, open it with kind='image' (napari-medseg predict --input-kind image).")
