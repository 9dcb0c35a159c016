"""NIfTI volumes (``.nii``, ``.nii.gz``) opened lazily as a ``ZYX`` / ``CZYX`` ``ImageSource`` in LPS+ order.

Pixels are never read whole: nibabel's lazy ``img.dataobj`` is read in dask chunks of a few slices
(``CHUNK_BYTES``), with ``scl_slope``/``scl_inter`` applied; a ``.nii.gz`` without indexed_gzip is
decompressed once and kept (``GZ_CACHE_BYTES``). A truncated file is refused at open time. Only a small
subsample is read to decide the rest: the modality and contrast (``io/volume.py``), and whether the file
holds an image or labels (``kind="labels"``, a napari Labels layer), decided by ``io/kind.py`` from the header
(the label intent), the names and the value structure of the subsample (few values and large constant
regions), unless the caller passes ``kind="image"`` or ``kind="labels"``. See docs/volumes.md.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from napari_medseg.core.errors import UnreadableInputError
from napari_medseg.core.source import ImageSource
from napari_medseg.io.kind import check_kind, guess_kind, nifti_evidence
from napari_medseg.io.volume import image_contrast, int_dtype_for, lower_levels, reorient, spacing_of

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20       # NIfTI dask chunks: as many whole slices as fit in about this many bytes
GZ_CACHE_BYTES = 1 << 30    # a .nii.gz up to this size (decoded) is decompressed once and kept, see _ScaledProxy


class _ScaledProxy:
    """Array-like view of a nibabel ``ArrayProxy``: scl_slope/inter applied, cast to ``dtype``, no reads
    until sliced. Read errors (a truncated ``.nii.gz``) become ``UnreadableInputError``.

    With ``cache_whole`` (a ``.nii.gz`` without indexed_gzip, see ``GZ_CACHE_BYTES``) the first read
    decompresses the whole array once and keeps it: gzip cannot seek backwards without restarting."""

    def __init__(self, proxy: Any, dtype: np.dtype, path: Path, cache_whole: bool = False) -> None:
        self._proxy = proxy
        self.shape = tuple(int(s) for s in proxy.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(dtype)
        self._path = path
        self._cache_whole = cache_whole
        self._cache: np.ndarray | None = None
        self._lock = threading.Lock()

    def _read(self, key: Any) -> np.ndarray:
        try:
            block = np.asarray(self._proxy[key])
        except (EOFError, OSError, ValueError) as e:
            raise UnreadableInputError(
                f"{self._path}: the voxel data ends early or is damaged ({e}); re-export or re-download the file."
            ) from e
        if self.dtype.kind in "iu" and block.dtype.kind == "f":
            block = np.rint(block)
        return block.astype(self.dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not self._cache_whole:
            return self._read(key)
        with self._lock:
            if self._cache is None:
                logger.info("%s: decompressing the whole .nii.gz once (gzip has no random access)", self._path.name)
                self._cache = self._read((slice(None),) * self.ndim)
        return self._cache[key]


def _check_nifti_size(path: Path, img: Any) -> None:
    """Cheap truncation check: file size for ``.nii``, the gzip ISIZE trailer (then a real read) for ``.gz``."""
    hdr = img.header
    offset = int(getattr(img.dataobj, "offset", hdr.get_data_offset()))  # the loaded header's offset is reset
    expected = offset + int(np.prod(img.shape)) * np.dtype(hdr.get_data_dtype()).itemsize
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        if size < expected:
            raise UnreadableInputError(
                f"{path}: the file is truncated ({size} of {expected} bytes); re-export or re-download it.")
        return
    with open(path, "rb") as f:
        f.seek(max(0, size - 4))
        isize = int.from_bytes(f.read(4), "little")
    if isize == expected % (1 << 32):
        return
    try:  # the trailer does not match: decompress to the end to be sure (multi-member gzip files exist)
        np.asarray(img.dataobj[(slice(None),) * (len(img.shape) - 1) + (-1,)])
    except (EOFError, OSError, ValueError) as e:
        raise UnreadableInputError(
            f"{path}: the compressed data ends early or is damaged ({e}); re-export or re-download the file."
        ) from e


def open_nifti(path: str | os.PathLike, kind: str = "auto") -> ImageSource:
    """Open a ``.nii``/``.nii.gz`` lazily as a ``ZYX`` (3D) or ``CZYX`` (4D) ``ImageSource`` in LPS+ order.

    ``kind``: ``"auto"`` decides image or labels from the header, the names and the values (``io/kind.py``;
    the reason is kept in ``metadata["kind_reason"]``); ``"image"`` or ``"labels"`` says it outright.
    """
    import nibabel as nib

    check_kind(kind)
    p = Path(path)
    try:
        img = nib.load(str(p), keep_file_open=True)
    except Exception as e:  # nibabel raises many types for a foreign or damaged header
        raise UnreadableInputError(f"{p}: not a readable NIfTI file ({type(e).__name__}: {e}).") from e
    if not np.isfinite(np.asarray(img.affine, dtype=float)).all():
        raise UnreadableInputError(f"{p}: its orientation (sform/qform) holds non-finite numbers; the header is "
                                   "damaged.")
    shape = tuple(int(s) for s in img.shape)
    if any(s == 0 for s in shape):
        raise UnreadableInputError(f"{p}: the image has a zero-length axis (shape {shape}), so it holds no voxels.")
    if len(shape) > 4 and all(s == 1 for s in shape[4:]):
        shape = shape[:4]
    if len(shape) > 4:
        raise UnreadableInputError(f"{p}: {len(shape)}D NIfTI (shape {shape}) is not supported; split it into 3D/4D files.")
    _check_nifti_size(p, img)

    proxy = img.dataobj
    raw = np.dtype(img.get_data_dtype())
    # the proxy holds the file's scl_slope/scl_inter (the loaded header has them reset)
    slope, inter = (float(v) if v is not None and np.isfinite(v) else d
                    for v, d in ((getattr(proxy, "slope", 1.0), 1.0), (getattr(proxy, "inter", 0.0), 0.0)))
    if raw.kind in "iu" and (slope, inter) == (1.0, 0.0):
        dtype = raw
    elif raw.kind in "iu" and slope.is_integer() and inter.is_integer():
        ends = (np.iinfo(raw).min * slope + inter, np.iinfo(raw).max * slope + inter)
        dtype = int_dtype_for(min(ends), max(ends))
    else:
        dtype = np.dtype(np.float32)
    from nibabel._compression import HAVE_INDEXED_GZIP

    gz_whole = (p.name.lower().endswith(".gz") and not HAVE_INDEXED_GZIP
                and int(np.prod(shape)) * dtype.itemsize <= GZ_CACHE_BYTES)
    wrapped = _ScaledProxy(proxy, dtype, p, cache_whole=gz_whole)
    full = shape + (1,) * (3 - len(shape)) if len(shape) < 3 else shape

    # a few slices (strided in-plane) along the storage's slowest spatial axis decide kind, modality, contrast
    k_idx = np.unique(np.linspace(0, full[2] - 1, num=min(full[2], 5)).round().astype(int))
    step = max(1, max(full[0], full[1]) // 128)
    extra = (slice(0, min(full[3], 4)),) if len(full) == 4 else ()
    if len(shape) < 3:
        sample = wrapped[::step, ::step][..., None] if len(shape) == 2 else wrapped[::step]
        pair_axes: tuple[int, ...] = (0, 1) if len(shape) == 2 else (0,)
    else:  # straight from the proxy: reads only these slices, not the dask chunks around them
        sample = np.stack([wrapped[(slice(None, None, step), slice(None, None, step), int(k)) + extra] for k in k_idx])
        pair_axes = (1, 2)  # in-plane neighbours (the sampled slices are not adjacent)
    guess = guess_kind(sample, pair_axes=pair_axes, integer=dtype.kind in "iu", path=p,
                       several_volumes=len(full) == 4 and full[3] > 1, requested=kind,
                       **nifti_evidence(img.header, slope, inter))
    if guess.kind == "labels":
        if dtype.kind not in "iu":  # labels by request or by the header: napari's labels are integers
            if np.any(np.isfinite(sample) & (sample != np.round(sample))):
                logger.warning("%s: opened as labels but holds non-integer values; they are rounded", p.name)
            dtype = np.dtype(np.int32)
            wrapped = _ScaledProxy(proxy, dtype, p, cache_whole=gz_whole)
        modality, limits = "unknown", None
    else:
        modality, limits = image_contrast(sample, dtype.kind in "iu")
    (logger.info if guess.evidence != "user" else logger.debug)("%s: %s: %s", p.name, guess.kind, guess.reason)

    slice_bytes = full[0] * full[1] * dtype.itemsize
    per_chunk = int(max(1, min(full[2], CHUNK_BYTES // max(1, slice_bytes))))
    chunks = (full[0], full[1], per_chunk) + ((1,) if len(full) == 4 else ())
    token = dask.base.tokenize(str(p.resolve()), p.stat().st_mtime_ns, shape, str(dtype))
    arr = da.from_array(wrapped, chunks=chunks if len(shape) >= 3 else chunks[: len(shape)], name=f"nifti-{token}",
                        meta=np.empty((0,) * len(shape), dtype=dtype))
    if len(shape) < 3:
        arr = arr.reshape(full)

    arr, affine = reorient(arr, img.affine)
    axes = "ZYX"
    if arr.ndim == 4:
        if arr.shape[3] == 1:
            arr = arr[..., 0]
        else:
            arr = arr.transpose(3, 0, 1, 2)
            axes = "CZYX"
    spacing = spacing_of(affine)
    levels = lower_levels(arr, spacing, 1 if axes == "CZYX" else 0)
    name = p.name[:-7] if p.name.lower().endswith(".nii.gz") else p.stem
    codes = "".join(nib.orientations.aff2axcodes(img.affine))
    logger.info("%s: NIfTI %s stored %s, opened as %s %s, spacing %s mm, %s", p.name, shape, codes, axes,
                arr.shape, tuple(round(s, 3) for s in spacing), modality)
    return ImageSource(
        levels=levels, axes=axes, pixel_size=spacing, unit="millimeter", name=name, path=str(p),
        modality=modality, contrast_limits=limits, kind=guess.kind,
        channel_names=tuple(f"volume {i}" for i in range(arr.shape[0])) if axes == "CZYX" else (),
        metadata={"format": "nifti", "affine_ras": affine.tolist(), "stored_axcodes": codes,
                  "scl_slope": slope, "scl_inter": inter, "kind_reason": guess.reason,
                  "kind_evidence": guess.evidence},
    )
