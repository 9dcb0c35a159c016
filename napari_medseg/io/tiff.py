"""Open TIFF-based slides and stacks lazily through tifffile's zarr interface.

Formats: Aperio SVS, OME-TIFF (SubIFD pyramids), NDPI, generic tiled pyramidal TIFF, ImageJ hyperstacks
and plain multi-page stacks (as ``ZYX`` volumes), and big untiled/strip TIFFs without a pyramid (virtual
lower levels, plus a hint to convert). Every level is a dask array chunked on whole multiples of the
file's tiles; nothing is decoded until napari (or an engine) asks for a region.

Axes: slides ``YXC`` (RGB, ``rgb=True``) or ``YX``; volumes ``ZYX`` / ``CZYX``. Pixel size: micrometer for
2D images, millimeter for volumes; ``unit="pixel"`` (size 1) when the file does not say.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from tifffile.tifffile import svs_description_metadata

from napari_medseg.core.errors import UnreadableInputError
from napari_medseg.core.source import ImageSource
from napari_medseg.io.lazy import (
    as_dask,
    convert_length,
    keep_shrinking,
    subsample_limits,
    tile_multiple_chunks,
    virtual_levels,
)

logger = logging.getLogger(__name__)

#: Threads tifffile uses to decode the tiles of one zarr request (2 cores on the target machines).
MAXWORKERS = 2
#: A 2D image without a pyramid gets virtual lower levels above this side length (napari would load
#: a non-multiscale layer whole).
VIRTUAL_PYRAMID_MIN_SIDE = 4096
#: File chunks (strips, NDPI stripes) larger than this on a side make viewing slow: hint to convert.
HINT_CHUNK_SIDE = 4096
#: A compressed non-tiled image stored as one block larger than this (decoded) cannot be read lazily.
MAX_SINGLE_CHUNK_BYTES = 512 * 2**20
#: A tile or strip may overhang its image (tiles are padded) but not by more than this (or 2x the image):
#: a header claiming, say, 16M x 32 px tiles for a 96 px image would make every read decode gigabytes.
MAX_CHUNK_OVERHANG_BYTES = 64 * 2**20
#: Resolutions (dots per inch) that are software defaults, not a measured pixel size.
DEFAULT_DPI = (1.0, 72.0, 96.0)

CONVERT_HINT = ("{name}: the file is not stored as a tiled pyramid, so viewing it is slow; "
                "run `napari-medseg convert {path} {stem}.zarr` once for fast viewing.")

_AXIS_MAP = {"Y": "Y", "X": "X", "S": "C", "C": "C", "Z": "Z", "I": "Z", "Q": "Z"}


# -- tifffile compat ---------------------------------------------------------------------------------
def zarr_read_kwargs() -> dict[str, Any]:
    """The imread keyword that returns a zarr store: ``aszarr=True`` (tifffile <= 2026.3) or
    ``return_as='zarr'`` (newer tifffile)."""
    params = inspect.signature(tifffile.imread).parameters
    if "return_as" in params:
        return {"return_as": "zarr"}
    return {"aszarr": True}


def open_tiff_zarr(path: str | os.PathLike, *, series: int = 0, maxworkers: int = MAXWORKERS) -> list[zarr.Array]:
    """The pyramid levels (level 0 first) of ``series`` of a TIFF as read-only zarr arrays.

    All levels share one tifffile store (it holds the file's lock and cannot be pickled: open one per
    process). Tiles of one request are decoded by ``maxworkers`` threads."""
    res = tifffile.imread(os.fspath(path), series=series, level=None, maxworkers=maxworkers,
                          multiscales=True, **zarr_read_kwargs())
    node = res if isinstance(res, (zarr.Group, zarr.Array)) else zarr.open(res, mode="r")
    if isinstance(node, zarr.Array):
        return [node]
    return [node[k] for k in sorted(node.array_keys(), key=int)]


# -- metadata -----------------------------------------------------------------------------------------
def _rational(tag: Any) -> float | None:
    if tag is None:
        return None
    v = tag.value
    if isinstance(v, tuple) and len(v) == 2:
        return v[0] / v[1] if v[1] else None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _resolution_size(page: Any, target: str) -> tuple[float, float] | None:
    """(Y, X) pixel size in ``target`` from XResolution/YResolution/ResolutionUnit, None if absent."""
    xr, yr = _rational(page.tags.get("XResolution")), _rational(page.tags.get("YResolution"))
    unit = page.tags.valueof("ResolutionUnit", default=2)
    unit_name = {2: "inch", 3: "cm", 4: "mm", 5: "um"}.get(int(unit))
    if not xr or not yr or unit_name is None:
        return None
    if unit_name == "inch" and xr in DEFAULT_DPI:
        return None
    sy, sx = convert_length(1 / yr, unit_name, target), convert_length(1 / xr, unit_name, target)
    return (sy, sx) if sy and sx else None


def _ome_pixels(tif: tifffile.TiffFile, image: int = 0) -> dict[str, Any]:
    """Attributes of the ``Pixels`` element of OME ``Image`` number ``image`` (and its channels)."""
    xml = tif.ome_metadata
    if not xml:
        return {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = [el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"]
    if not pixels:
        return {}
    el = pixels[image] if image < len(pixels) else pixels[0]
    out: dict[str, Any] = dict(el.attrib)
    out["channels"] = [dict(c.attrib) for c in el if c.tag.endswith("Channel")]
    return out


def _ome_size(px: dict[str, Any], axis: str, target: str) -> float | None:
    v = px.get(f"PhysicalSize{axis}")
    if v is None:
        return None
    return convert_length(float(v), px.get(f"PhysicalSize{axis}Unit", "µm"), target)


def _imagej_size(tif: tifffile.TiffFile, page: Any, target: str) -> tuple[float | None, float | None, float | None]:
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit", "pixel")
    xr, yr = _rational(page.tags.get("XResolution")), _rational(page.tags.get("YResolution"))
    sy = convert_length(1 / yr, unit, target) if yr else None
    sx = convert_length(1 / xr, unit, target) if xr else None
    sz = convert_length(float(ij["spacing"]), unit, target) if "spacing" in ij else None
    return sz, sy, sx


def _physical_size(tif: tifffile.TiffFile, page: Any, fmt: str, volume: bool,
                   image: int = 0) -> tuple[dict[str, float], str, str]:
    """Pixel size per axis name (``Z``/``Y``/``X``) in the target unit, the unit, and its source."""
    target = "millimeter" if volume else "micrometer"
    size: dict[str, float | None] = {"Z": None, "Y": None, "X": None}
    source = "unknown"
    if fmt == "svs":
        try:
            mpp = svs_description_metadata(page.description).get("MPP")
        except ValueError:
            mpp = None
        if mpp:
            size["Y"] = size["X"] = convert_length(float(mpp), "um", target)
            source = "svs ImageDescription MPP"
    if fmt == "ome" and size["X"] is None:
        px = _ome_pixels(tif, image)
        size = {a: _ome_size(px, a, target) for a in "ZYX"}
        if size["X"]:
            source = "OME PhysicalSize"
    if tif.is_imagej and size["X"] is None:
        size["Z"], size["Y"], size["X"] = _imagej_size(tif, page, target)
        if size["X"]:
            source = "ImageJ resolution/unit"
    if size["X"] is None:
        res = _resolution_size(page, target)
        if res:
            size["Y"], size["X"] = res
            source = "XResolution/ResolutionUnit"
    if any(v is not None and not (math.isfinite(v) and v > 0) for v in size.values()):
        logger.warning("ignoring a pixel size that is not a positive number (%s, from %s)", size, source)
        size = {"Z": None, "Y": None, "X": None}
    if size["X"] is None or size["Y"] is None:
        return {"Z": 1.0, "Y": 1.0, "X": 1.0}, "pixel", "unknown"
    if size["Z"] is None:
        size["Z"] = size["X"]  # in-plane size stands in for an unknown slice spacing
    return {k: float(f"{v:.12g}") for k, v in size.items() if v is not None}, target, source


def _format_name(tif: tifffile.TiffFile) -> str:
    for fmt in ("svs", "ndpi", "ome", "imagej", "scn", "qpi", "bif", "philips"):
        if getattr(tif, f"is_{fmt}", False):
            return fmt
    return "generic"


def _token(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()[:16]


# -- validation ---------------------------------------------------------------------------------------
def _check_data_offsets(path: Path, levels: list[Any]) -> None:
    """Refuse files whose header claims more image data than the file holds (truncated or corrupt):
    a tile/strip table shorter than the claimed size needs, or data past the end of the file.
    Nothing is allocated for the claimed size."""
    filesize = path.stat().st_size
    for lvl in levels:
        kf = lvl.keyframe
        expected = math.prod(kf.chunked)
        h, w = kf.imagelength, kf.imagewidth
        chunk_bytes = math.prod(int(c) for c in kf.chunks) * np.dtype(kf.dtype or np.uint8).itemsize
        if chunk_bytes > max(MAX_CHUNK_OVERHANG_BYTES, 2 * int(kf.nbytes)):
            raise UnreadableInputError(
                f"{path}: its header claims {'tiles' if kf.is_tiled else 'strips'} of "
                f"{' x '.join(str(int(c)) for c in kf.chunks)} px for a {w} x {h} px image "
                f"({chunk_bytes / 2**20:.0f} MiB each); the file is corrupt.")
        for page in lvl.pages:
            if page is None:
                raise UnreadableInputError(f"{path}: a page of the image is missing; the file is probably truncated.")
            offs = np.asarray(page.dataoffsets, dtype=np.uint64)
            counts = np.asarray(page.databytecounts, dtype=np.uint64)
            if offs.size < expected:
                raise UnreadableInputError(
                    f"{path}: its header claims {w} x {h} px but lists only {offs.size} of the "
                    f"{expected} tiles/strips that size needs; the file is corrupt or truncated.")
            ends = offs + counts
            if offs.size and int(ends.max()) > filesize:
                past = np.flatnonzero(ends > filesize)
                where = _chunk_position(kf, int(past[0]), h, w)
                raise UnreadableInputError(
                    f"{path}: image data is missing: the {'tile' if kf.is_tiled else 'strip'} at level "
                    f"{list(levels).index(lvl)}, {where} (and {past.size - 1} more) would end at byte "
                    f"{int(ends[past[0]])} but the file has {filesize} bytes; the file is truncated or corrupt, "
                    "copy it again.")


def _chunk_position(kf: Any, index: int, h: int, w: int) -> str:
    """``"y=a:b, x=c:d"`` (plus the sample plane) of tile/strip number ``index`` of a page."""
    th = int(kf.tilelength) if kf.is_tiled else int(kf.rowsperstrip or h)
    tw = int(kf.tilewidth) if kf.is_tiled else w
    th, tw = max(1, min(th, h)), max(1, min(tw, w))
    ny, nx = -(-h // th), -(-w // tw)
    plane, r = divmod(index, ny * nx)
    ty, tx = divmod(r, nx)
    txt = f"y={ty * th}:{min(h, (ty + 1) * th)}, x={tx * tw}:{min(w, (tx + 1) * tw)}"
    return txt + (f", sample plane {plane}" if plane else "")


# -- axes ---------------------------------------------------------------------------------------------
def _plan_axes(tiff_axes: str, shape: tuple[int, ...]) -> tuple[tuple[Any, ...], str, list[str]]:
    """Selection for ``tiff_axes`` (index 0 on axes we do not show) and our resulting axis letters
    (before transposition), plus notes on what was dropped."""
    sel: list[Any] = []
    kept: list[str] = []
    notes: list[str] = []
    chans = [i for i, a in enumerate(tiff_axes) if _AXIS_MAP.get(a) == "C" and shape[i] > 1]
    keep_c = next((i for i in chans if tiff_axes[i] == "S"), chans[0] if chans else None)
    for i, (a, n) in enumerate(zip(tiff_axes, shape)):
        ours = _AXIS_MAP.get(a)
        if ours in ("Y", "X") or (ours == "C" and i == keep_c) or (ours == "Z" and n > 1 and "Z" not in kept):
            sel.append(slice(None))
            kept.append(ours)
        else:
            sel.append(0)
            if n > 1:
                notes.append(f"showing index 0 of axis {a} (size {n})")
    return tuple(sel), "".join(kept), notes


def _target_axes(kept: str) -> str:
    if "Z" in kept:
        return "CZYX" if "C" in kept else "ZYX"
    return "YXC" if "C" in kept else "YX"


# -- open ---------------------------------------------------------------------------------------------
def open_tiff(path: str | os.PathLike) -> ImageSource:
    """Open a TIFF-based slide or stack lazily. Raises ``UnreadableInputError`` with a clear message."""
    p = Path(path)
    try:
        tif = tifffile.TiffFile(p)
    except (PermissionError, MemoryError):
        raise
    except Exception as e:  # TiffFileError, struct.error, ValueError...: the header is not a TIFF's
        raise UnreadableInputError(f"{p}: is not a readable TIFF file ({e}); it may be misnamed, "
                                   "damaged or truncated.") from e
    with tif:
        try:
            series = tif.series
        except Exception as e:
            raise UnreadableInputError(f"{p}: the TIFF structure is damaged ({e}).") from e
        if not series or not any(s.shape and 0 not in s.shape for s in series):
            raise UnreadableInputError(f"{p}: holds no image data.")
        # the main image: the largest series (series 0 in SVS/NDPI; some OME files put a label first)
        index = max(range(len(series)), key=lambda i: (math.prod(series[i].shape or (0,)), -i))
        s0 = series[index]
        fmt = _format_name(tif)
        _check_data_offsets(p, list(s0.levels))
        sel, kept, notes = _plan_axes(s0.axes, s0.shape)
        axes = _target_axes(kept)
        volume = "Z" in axes
        kf = s0.keyframe
        sizes, unit, size_source = _physical_size(tif, kf, fmt, volume, index)
        rgb = ("S" in s0.axes and axes == "YXC" and np.dtype(s0.dtype) == np.uint8
               and s0.shape[s0.axes.index("S")] in (3, 4))
        modality = "brightfield" if rgb else "unknown"
        ome_px = _ome_pixels(tif, index) if fmt == "ome" else {}
        if any("EmissionWavelength" in c or "ExcitationWavelength" in c for c in ome_px.get("channels", [])):
            modality = "fluorescence"
        channel_names: tuple[str, ...] = ()
        if not rgb and "C" in axes and ome_px.get("channels"):
            names = [c.get("Name", f"C{i}") for i, c in enumerate(ome_px["channels"])]
            channel_names = tuple(names)
        meta: dict[str, Any] = {
            "format": fmt,
            "pixel_size_source": size_source,
            "other_series": [{"name": s.name, "shape": list(s.shape), "axes": s.axes}
                             for i, s in enumerate(series) if i != index],
        }
        if notes:
            meta["notes"] = notes
        if fmt == "svs":
            try:
                mag = svs_description_metadata(kf.description).get("AppMag")
                if mag:
                    meta["objective_power"] = float(mag)
            except ValueError:
                pass
        if fmt == "ndpi" and kf.tags.valueof(65421):
            meta["objective_power"] = float(kf.tags.valueof(65421))
        memmappable = len(s0.levels) == 1 and kf.is_memmappable and s0.dataoffset is not None
        file_chunks = tuple(int(c) for c in kf.chunks)
        compressed = kf.compression != 1

    token = _token(p)
    stored_axes = "".join(_AXIS_MAP.get(a, a) for a in s0.axes)
    spatial_idx = [i for i, a in enumerate(s0.axes) if isinstance(sel[i], slice) and _AXIS_MAP.get(a) in "YX"]
    level_arrays: list[Any] = []
    base: Any = None
    big_2d = not volume and len(s0.levels) == 1 and max(s0.shape[i] for i in spatial_idx) > VIRTUAL_PYRAMID_MIN_SIDE
    if big_2d and memmappable:
        try:
            base = tifffile.memmap(p, series=index, mode="r")
            if tuple(base.shape) != tuple(s0.shape):
                base = None
        except Exception as e:  # fall back to the zarr store
            logger.debug("memmap of %s failed: %s", p, e)
            base = None
    zlevels: list[Any] = [base] if base is not None else open_tiff_zarr(p, series=index)
    if big_2d and base is None and compressed:
        chunk_bytes = math.prod(zlevels[0].chunks) * np.dtype(zlevels[0].dtype).itemsize
        if chunk_bytes > MAX_SINGLE_CHUNK_BYTES:
            raise UnreadableInputError(
                f"{p}: stores its {s0.shape[spatial_idx[1]]} x {s0.shape[spatial_idx[0]]} px image as compressed "
                f"blocks of {chunk_bytes / 2**30:.1f} GiB that cannot be read piecewise; re-save it as a tiled "
                "pyramidal TIFF (e.g. `vips tiffsave in out.tif --tile --pyramid`).")
    for i, z in enumerate(zlevels):
        zc = tuple(getattr(z, "chunks", None) or file_chunks)
        if base is not None:
            zc = tuple(1 if j not in spatial_idx else min(s, 512) for j, s in enumerate(z.shape))
        chunks = tile_multiple_chunks(zc, z.shape, spatial_idx, np.dtype(z.dtype).itemsize)
        level_arrays.append(as_dask(z, chunks, f"medseg-tiff-{token}-L{i}", where=f"{p}, level {i}",
                                    axes=stored_axes))
    hint = None
    if big_2d:
        base_for_virtual = base if base is not None else zlevels[0]
        level_arrays += virtual_levels(base_for_virtual, level_arrays[0], spatial_idx, f"medseg-tiff-{token}",
                                       where=f"{p}, level 0", axes=stored_axes)
        hint = CONVERT_HINT.format(name=p.name, path=p, stem=_stem(p))
    elif not volume and max(file_chunks[i] for i in spatial_idx) > HINT_CHUNK_SIDE:
        hint = CONVERT_HINT.format(name=p.name, path=p, stem=_stem(p))
    if hint:
        logger.info(hint)
        meta["hint"] = hint

    perm = [kept.index(a) for a in axes]
    levels = [lvl[sel].transpose(perm) if perm != sorted(perm) else lvl[sel] for lvl in level_arrays]
    spatial_shapes = [tuple(int(s) for s, a in zip(lvl.shape, axes) if a in "ZYX") for lvl in levels]
    levels = [levels[i] for i in keep_shrinking(spatial_shapes)]
    pixel_size = tuple(sizes[a] for a in axes if a in "ZYX")
    contrast = None
    if not rgb:
        contrast = subsample_limits(levels[0] if volume else levels[-1], axes)
    meta["levels"] = [list(lvl.shape) for lvl in levels]
    return ImageSource(levels=levels, axes=axes, pixel_size=pixel_size, unit=unit, name=_stem(p), path=str(p),
                       modality=modality, rgb=rgb, channel_names=channel_names, contrast_limits=contrast,
                       metadata=meta)


def _stem(p: Path) -> str:
    name = p.name
    for suf in (".ome.tiff", ".ome.tif", ".ome.btf"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem
