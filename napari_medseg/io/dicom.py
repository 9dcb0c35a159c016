"""DICOM series folders opened lazily: every CT/MR image series as a ``ZYX`` ``ImageSource`` in LPS+ order.

Files are scanned by header only (``stop_before_pixels``) and grouped by series; each series keeps the files of
its most common size and orientation, sorted by position along the slice normal (duplicates dropped, uneven
gaps reported). Pixels are read later, one ``dask.delayed`` read per file, with ``RescaleSlope``/
``RescaleIntercept`` applied. Files that cannot be used (reports, multi-frame, colour, truncated) are
skipped and listed in a per-folder report. Orientation, spacing and contrast follow ``io/volume.py``.
See docs/volumes.md.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.core.source import ImageSource
from napari_medseg.io.volume import (
    image_contrast,
    int_dtype_for,
    lower_levels,
    reorient,
    spacing_of,
    window_limits,
)

logger = logging.getLogger(__name__)

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
        dtype = int_dtype_for(min(ends), max(ends))
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
    files_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff_lps  # voxel (file k, row, column) -> RAS+ mm
    arr, affine = reorient(arr, files_ras)
    spacing = spacing_of(affine)
    modality = str(first.get("Modality", "") or "unknown")
    if modality == "CT":
        limits: tuple[float, float] | None = window_limits("soft tissue")
    else:
        wc, ww = _first_float(first.get("WindowCenter")), _first_float(first.get("WindowWidth"))
        if wc is not None and ww is not None and ww > 0:
            limits = (wc - ww / 2, wc + ww / 2)
        else:
            sample = arr[sorted({0, len(uniq) // 2, len(uniq) - 1})].compute()
            limits = image_contrast(np.asarray(sample), dtype.kind in "iu")[1]
    return ImageSource(
        levels=lower_levels(arr, spacing, 0), axes="ZYX", pixel_size=spacing, unit="millimeter", name=name,
        path=str(folder), modality=modality, contrast_limits=limits,
        metadata={"format": "dicom", "affine_ras": affine.tolist(), "affine_ras_files": files_ras.tolist(),
                  "series_uid": str(first.SeriesInstanceUID), "files": [rel(t[2]) for t in uniq]},
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
