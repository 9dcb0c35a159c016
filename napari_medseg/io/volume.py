"""CT/MRI volumes: NIfTI (``.nii``, ``.nii.gz``) and DICOM series folders, opened lazily as ``ImageSource``.

Every volume comes out in the package convention (see ``core/source.py``): LPS+ voxel order, axes ``ZYX``
(Z inferior -> superior, Y anterior -> posterior, X patient right -> patient left), or ``CZYX`` for a 4D
NIfTI holding several sequences. The reorientation is flips and transposes only (the nearest axis-aligned
orientation, never a resampling), applied lazily on dask arrays. ``pixel_size`` is the voxel spacing in mm
per ``ZYX`` axis; ``metadata["affine_ras"]`` maps (z, y, x) voxel indices of level 0 to RAS+ mm, so a
prediction can be saved as NIfTI in the right place.

Pixels are never read whole: NIfTI goes through nibabel's lazy ``img.dataobj`` in chunks of a few slices,
DICOM through one ``dask.delayed`` read per file. Only a small subsample is read at open time, to guess the
modality and the default contrast:

- integer data with values below -500 (after ``scl_slope``/``scl_inter`` or ``RescaleSlope``/
  ``RescaleIntercept``) is CT in Hounsfield units, shown with the soft-tissue window W400/L40, i.e.
  ``contrast_limits`` (-160, 240) (``CT_WINDOWS`` lists others);
- anything else gets the 1 - 99.5 percentile range of the subsample ("MR" when non-negative).

Whether a NIfTI holds an image or labels (``kind="labels"``, a napari Labels layer) is decided by
``io/kind.py`` from the header (the label intent), the names and the value structure of the same subsample
(few values and large constant regions), unless the caller passes ``kind="image"`` or ``kind="labels"``.

Volumes above ``LARGE_VOXELS`` get lazy lower levels (2x mean-downsampling of the finest axes) so napari
stays fluid in 2D and 3D. See docs/volumes.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.core.source import ImageSource
from napari_medseg.io.kind import check_kind, guess_kind, nifti_evidence

logger = logging.getLogger(__name__)

#: Axis codes (nibabel: the direction each array axis increases towards) of the package convention, ZYX.
TARGET_AXCODES = ("S", "P", "L")
#: Common CT windows as (level, width) in HU; ``window_limits`` turns one into contrast limits.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0), "liver": (60.0, 160.0), "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0), "brain": (40.0, 80.0),
}
CT_MIN_HU = -500.0          # integer data going below this is taken as CT (air is -1000 HU)
LARGE_VOXELS = 512 ** 3     # above this many voxels, lazy lower levels are added
CHUNK_BYTES = 8 << 20       # NIfTI dask chunks: as many whole slices as fit in about this many bytes
GZ_CACHE_BYTES = 1 << 30    # a .nii.gz up to this size (decoded) is decompressed once and kept, see _ScaledProxy


def window_limits(name: str = "soft tissue") -> tuple[float, float]:
    """Contrast limits ``(level - width/2, level + width/2)`` of a named CT window."""
    level, width = CT_WINDOWS[name]
    return (level - width / 2, level + width / 2)


# --------------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------------
def reorient(arr: Any, affine_ras: np.ndarray) -> tuple[Any, np.ndarray]:
    """Flip/transpose the first three axes of ``arr`` (lazy for dask) to ``TARGET_AXCODES`` (ZYX, LPS+).

    ``affine_ras`` maps the voxel indices of those axes to RAS+ mm. Returns the reoriented array (extra
    trailing axes untouched) and the affine of its first three axes.
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine_ras)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(TARGET_AXCODES))
    for ax, flip in enumerate(transform[:, 1]):
        if flip == -1:
            arr = da.flip(arr, axis=ax) if isinstance(arr, da.Array) else np.flip(arr, axis=ax)
    order = list(np.argsort(transform[:, 0])) + list(range(3, arr.ndim))
    arr = arr.transpose(order)
    new_affine = affine_ras @ nib.orientations.inv_ornt_aff(transform, tuple(arr.shape[i] for i in np.argsort(order)[:3]))
    return arr, new_affine


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def _int_dtype_for(lo: float, hi: float) -> np.dtype:
    for dt in (np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.float32)


def _image_contrast(sample: np.ndarray, is_int: bool) -> tuple[str, tuple[float, float] | None]:
    """(modality, contrast_limits) of an image, guessed from a subsample of the (scaled) voxels."""
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()
    if finite.size == 0:
        return "unknown", None
    lo = float(finite.min())
    if is_int and lo < CT_MIN_HU:
        return "CT", window_limits("soft tissue")
    p1, p99 = (float(v) for v in np.percentile(finite, [1.0, 99.5]))
    if p99 <= p1:
        p1, p99 = float(finite.min()), float(finite.max())
    if p99 <= p1:
        p99 = p1 + 1.0
    return "MR" if lo >= 0 else "unknown", (p1, p99)


def _lower_levels(level0: Any, spacing: tuple[float, ...], spatial_offset: int) -> list[Any]:
    """Lazy 2x mean-downsampled levels of a large volume, halving its finest axes (in-plane for CT)."""
    levels = [level0]
    if int(np.prod(level0.shape)) <= LARGE_VOXELS:
        return levels
    sp, arr = list(spacing), level0
    while int(np.prod(arr.shape)) > LARGE_VOXELS // 8 and len(levels) < 6:
        finest = min(sp)
        axes = {spatial_offset + i: 2 for i, s in enumerate(sp)
                if s <= 1.5 * finest and arr.shape[spatial_offset + i] >= 64}
        if not axes:
            break
        arr = da.coarsen(np.mean, arr, axes, trim_excess=True)
        arr = (arr.round() if level0.dtype.kind in "iu" else arr).astype(level0.dtype)
        for ax in axes:
            sp[ax - spatial_offset] *= 2
        levels.append(arr)
    return levels


# --------------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------------
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
        dtype = _int_dtype_for(min(ends), max(ends))
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
        modality, limits = _image_contrast(sample, dtype.kind in "iu")
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
    spacing = _spacing(affine)
    levels = _lower_levels(arr, spacing, 1 if axes == "CZYX" else 0)
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


# --------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _scan_dicom(path: Path) -> tuple[Any | None, str]:
    """(header, "") for a DICOM image file, or (None, reason) for anything else."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except InvalidDicomError:
                if path.suffix.lower() not in (".dcm", ".dicom", ".ima", ""):
                    return None, "not a DICOM file"
                f.seek(0)
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            pixel_offset = f.tell()
    except Exception as e:
        return None, f"unreadable header ({type(e).__name__}: {e})"
    if "SeriesInstanceUID" not in ds or "Rows" not in ds or "Columns" not in ds:
        return None, "no image (no series UID or no rows/columns: a report, structure set or other object)"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return None, f"multi-frame (enhanced) DICOM with {frames} frames is not supported; convert it (e.g. dcm2niix)"
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return None, "colour DICOM is not a CT/MR volume slice"
    remaining = size - pixel_offset
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))
    need = int(ds.Rows) * int(ds.Columns) * ((int(ds.get("BitsAllocated", 16)) + 7) // 8)
    if remaining < 12 or (ts in _NATIVE_SYNTAXES and remaining < need):
        return None, f"no pixel data or truncated pixel data ({max(0, remaining)} bytes left, {need} needed)"
    return ds, ""


def _read_dicom_slice(path: str, slope: float, inter: float, dtype: np.dtype) -> np.ndarray:
    """One slice (YX as stored: rows, columns) in output units (HU for CT)."""
    import pydicom

    try:
        px = pydicom.dcmread(path).pixel_array
    except Exception as e:
        raise UnreadableInputError(f"{path}: its pixels could not be decoded ({type(e).__name__}: {e}).") from e
    out = px.astype(np.float64) * slope + inter if (slope, inter) != (1.0, 0.0) else px
    if np.dtype(dtype).kind in "iu":
        out = np.rint(out) if out.dtype.kind == "f" else out
    return np.asarray(out).astype(dtype, copy=False)


def _first_float(v: Any) -> float | None:
    """A DICOM DS value or the first of a multi-valued one (WindowCenter may hold several)."""
    if v is None or isinstance(v, str | bytes):
        return None
    try:
        return float(v[0]) if isinstance(v, Sequence) else float(v)
    except (TypeError, ValueError, IndexError):
        return None


def _series_name(ds: Any) -> str:
    desc = str(ds.get("SeriesDescription", "") or "").strip()
    num = ds.get("SeriesNumber", None)
    num_txt = f"series {num}" if num not in (None, "") else f"series ...{str(ds.SeriesInstanceUID)[-6:]}"
    return f"{desc} ({num_txt})" if desc else num_txt


def _build_series(items: list[tuple[Path, Any]], folder: Path, skipped: list[dict[str, str]],
                  notes: list[str]) -> ImageSource | None:
    """One series -> ImageSource; drops (into ``skipped``) files of another size/orientation or duplicates."""
    def rel(p: Path) -> str:
        return str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p)

    geo = Counter((int(ds.Rows), int(ds.Columns), tuple(np.round(np.asarray(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float), 3)))
                  for _, ds in items)
    (rows, cols, iop), _ = geo.most_common(1)[0]
    kept = []
    for p, ds in items:
        key = (int(ds.Rows), int(ds.Columns), tuple(np.round(np.asarray(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float), 3)))
        if key == (rows, cols, iop):
            kept.append((p, ds))
        elif key[:2] != (rows, cols):
            skipped.append({"file": rel(p), "reason": f"image size {key[0]}x{key[1]} differs from the series' {rows}x{cols}"})
        else:
            skipped.append({"file": rel(p), "reason": "slice orientation differs from the rest of the series"})
    first = kept[0][1]
    name = _series_name(first)
    row_cos, col_cos = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row_cos, col_cos)
    has_pos = all("ImagePositionPatient" in ds for _, ds in kept) and "ImageOrientationPatient" in first
    if has_pos:
        keyed = [(float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)), int(ds.get("InstanceNumber", 0) or 0), p, ds)
                 for p, ds in kept]
    else:
        notes.append(f"{name}: no ImagePositionPatient/ImageOrientationPatient; slices ordered by InstanceNumber, "
                     "orientation assumed axial")
        keyed = [(float(ds.get("InstanceNumber", 0) or 0), int(ds.get("InstanceNumber", 0) or 0), p, ds) for p, ds in kept]
    keyed.sort(key=lambda t: (t[0], t[1], str(t[2])))
    uniq = []
    for t in keyed:
        if uniq and abs(t[0] - uniq[-1][0]) < 1e-3:
            skipped.append({"file": rel(t[2]), "reason": f"same slice position as {rel(uniq[-1][2])} (duplicate slice)"})
            continue
        uniq.append(t)
    ps = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]
    if len(uniq) > 1 and has_pos:
        gaps = np.diff([t[0] for t in uniq])
        dz = float(np.median(gaps))
        if gaps.max() - gaps.min() > 0.01 * dz + 1e-3:
            notes.append(f"{name}: slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm (missing slices?); "
                         f"the volume uses the median {dz:.3g} mm")
    else:
        dz = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
    slopes = [(float(t[3].get("RescaleSlope", 1) or 1), float(t[3].get("RescaleIntercept", 0) or 0)) for t in uniq]
    bits = int(first.get("BitsStored", first.get("BitsAllocated", 16)))
    signed = int(first.get("PixelRepresentation", 0)) == 1
    raw_lo, raw_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    if all(s.is_integer() and i.is_integer() for s, i in slopes):
        ends = [v for s, i in slopes for v in (raw_lo * s + i, raw_hi * s + i)]
        dtype = _int_dtype_for(min(ends), max(ends))
    else:
        dtype = np.dtype(np.float32)
    # fail early (with the file's name) if this series' pixels cannot be decoded at all
    _read_dicom_slice(str(uniq[0][2]), *slopes[0], dtype)
    slices = [da.from_delayed(dask.delayed(_read_dicom_slice, pure=True)(str(t[2]), s, i, dtype), (rows, cols), dtype)
              for t, (s, i) in zip(uniq, slopes)]
    arr = da.stack(slices) if len(slices) > 1 else slices[0][None]
    origin = np.asarray(uniq[0][3].get("ImagePositionPatient", [0.0, 0.0, 0.0]), float)
    aff_lps = np.eye(4)
    aff_lps[:3, 0], aff_lps[:3, 1], aff_lps[:3, 2] = normal * dz, col_cos * ps[0], row_cos * ps[1]
    aff_lps[:3, 3] = origin
    arr, affine = reorient(arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff_lps)
    spacing = _spacing(affine)
    modality = str(first.get("Modality", "") or "unknown")
    if modality == "CT":
        limits: tuple[float, float] | None = window_limits("soft tissue")
    else:
        wc, ww = _first_float(first.get("WindowCenter")), _first_float(first.get("WindowWidth"))
        if wc is not None and ww is not None and ww > 0:
            limits = (wc - ww / 2, wc + ww / 2)
        else:
            sample = arr[sorted({0, len(uniq) // 2, len(uniq) - 1})].compute()
            limits = _image_contrast(np.asarray(sample), dtype.kind in "iu")[1]
    return ImageSource(
        levels=_lower_levels(arr, spacing, 0), axes="ZYX", pixel_size=spacing, unit="millimeter", name=name,
        path=str(folder), modality=modality, contrast_limits=limits,
        metadata={"format": "dicom", "affine_ras": affine.tolist(), "series_uid": str(first.SeriesInstanceUID),
                  "files": [rel(t[2]) for t in uniq]},
    )


def open_dicom(folder: str | os.PathLike) -> list[ImageSource]:
    """Every image series in a DICOM folder (searched recursively), largest first, as lazy ``ZYX`` sources.

    A single file opens its whole folder (its own series first). Files that cannot be used are skipped,
    listed in each source's ``metadata["skipped_files"]`` (``{"file", "reason"}``) and in the text
    ``metadata["series_report"]``; a folder without any readable series raises ``UnreadableInputError``.
    """
    p = Path(folder)
    chosen = p if p.is_file() else None
    root = p.parent if p.is_file() else p
    files = sorted(f for f in root.rglob("*") if f.is_file() and not f.name.startswith(".") and f.name.upper() != "DICOMDIR")
    skipped: list[dict[str, str]] = []
    notes: list[str] = []
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for f in files:
        ds, reason = _scan_dicom(f)
        if ds is None:
            skipped.append({"file": str(f.relative_to(root)), "reason": reason})
        else:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    sources: list[ImageSource] = []
    for uid, items in groups.items():
        try:
            src = _build_series(items, root, skipped, notes)
        except MedsegError as e:
            notes.append(f"series {uid}: skipped: {e}")
            continue
        if src is not None:
            sources.append(src)
    if not sources:
        why = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5]) or "the folder holds no files"
        raise UnreadableInputError(f"{root}: no readable DICOM image series ({why}). Pick a folder of CT/MR slices.")
    sources.sort(key=lambda s: -int(np.prod(s.shape)))
    if chosen is not None:
        rel = str(chosen.relative_to(root))
        sources.sort(key=lambda s: rel not in s.metadata["files"])
    lines = [f"{root.name}: {len(sources)} series"]
    lines += [f"  {s.name}: {s.modality}, {s.shape[0]} slices of {s.shape[1]}x{s.shape[2]}, spacing "
              f"{' x '.join(f'{v:.3g}' for v in s.pixel_size)} mm (ZYX)" for s in sources]
    lines += [f"  note: {n}" for n in notes]
    if skipped:
        lines.append(f"  skipped {len(skipped)} file(s):")
        lines += [f"    {s['file']}: {s['reason']}" for s in skipped]
    report = "\n".join(lines)
    (logger.warning if skipped or notes or len(sources) > 1 else logger.info)("%s", report)
    for s in sources:
        s.metadata["series_report"] = report
        s.metadata["skipped_files"] = list(skipped)
        s.metadata["n_series"] = len(sources)
    return sources
