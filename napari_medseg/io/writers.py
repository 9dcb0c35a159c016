"""Write label images (``YX`` or ``ZYX`` integer arrays, numpy or dask) to disk, block by block.

- ``write_labels_ngff``: an NGFF 0.4 ``labels/<name>`` multiscale group, inside an existing NGFF image
  zarr (shapes must match) or in a new zarr that holds just labels; colors as NGFF ``image-label``.
  The new group is written under a temporary name and swapped in when complete, so an existing group of
  the same name is only replaced by a complete one.
- ``write_labels_tiff``: a tiled, zlib-compressed TIFF with resolution tags (2D) or an OME-TIFF with
  physical sizes (3D).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from napari_medseg.core.compute import compute
from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.io.lazy import convert_length
from napari_medseg.io.ngff_meta import ome_attrs, parse_multiscales
from napari_medseg.io.ngff_write import build_pyramid, create_labels_group, write_blocks

logger = logging.getLogger(__name__)

TIFF_TILE = 256


def _label_dtype(data: Any) -> np.dtype:
    dt = np.dtype(data.dtype)
    if dt == np.bool_:
        return np.dtype(np.uint8)
    if dt.kind not in "iu":
        raise MedsegError(f"labels must be integers, got {dt}; round or threshold them first.")
    return dt


def _read(data: Any, region: tuple[slice, ...], dtype: np.dtype) -> np.ndarray:
    part = data[region]
    if hasattr(part, "compute"):
        part = compute(part)
    return np.asarray(part).astype(dtype, copy=False)


def _defaults(ndim: int, pixel_size: Any, unit: str | None) -> tuple[tuple[float, ...], str]:
    if ndim not in (2, 3):
        raise MedsegError(f"labels must be 2D (YX) or 3D (ZYX), got {ndim} dimensions.")
    if pixel_size is None:
        return (1.0,) * ndim, unit or "pixel"
    px = tuple(float(v) for v in (pixel_size if np.ndim(pixel_size) else [pixel_size] * ndim))
    if len(px) != ndim:
        raise MedsegError(f"pixel_size {px} needs one value per axis of the {ndim}-D labels.")
    return px, unit or ("millimeter" if ndim == 3 else "micrometer")


def safe_name(name: str) -> str:
    """A zarr-safe group name from a layer name (letters, digits, ``._-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "labels"
    return s


def write_labels_ngff(path: str | os.PathLike, data: Any, *, pixel_size: Any = None, unit: str | None = None,
                      colors: dict[int, tuple[float, float, float, float]] | None = None, name: str = "labels",
                      chunks: tuple[int, ...] | None = None, n_levels: int | None = None) -> Path:
    """Write ``data`` (``YX``/``ZYX``) as ``labels/<name>`` in the zarr at ``path`` and return ``path``.

    If ``path`` holds an NGFF image, its level-0 spatial shape must equal ``data.shape``
    (``GeometryMismatchError`` otherwise). ``pixel_size`` per axis in ``unit`` (default 1 "pixel")."""
    p = Path(path)
    dtype = _label_dtype(data)
    px, unit = _defaults(data.ndim, pixel_size, unit)
    name = safe_name(name)
    if p.exists():
        try:
            root = zarr.open_group(str(p), mode="r")
        except Exception as e:
            raise MedsegError(f"{p}: exists and is not a zarr group; choose a new path for the labels.") from e
        ms = parse_multiscales(dict(root.attrs))
        if ms is not None:
            img_shape = root[ms["paths"][0]].shape
            axes = ms["axes"] or "TCZYX"[-len(img_shape):]
            spatial = tuple(int(s) for s, a in zip(img_shape, axes) if a in "ZYX")
            if spatial != tuple(data.shape):
                raise GeometryMismatchError(
                    f"{p}: its image is {spatial} px but the labels are {tuple(data.shape)}; "
                    "save the labels to a new .zarr instead.")
    if chunks is None:
        chunks = (512, 512) if data.ndim == 2 else (64, 128, 128)
    tmp = f"{name}.partial"
    arrays = create_labels_group(p, tmp, data.shape, chunks, px, unit, colors=colors, n_levels=n_levels,
                                 dtype=dtype, overwrite=True)
    write_blocks(arrays[0], lambda r: _read(data, r, dtype))
    build_pyramid(arrays, "YX" if data.ndim == 2 else "ZYX", "labels")
    _swap_in(p, tmp, name)
    return p


def _swap_in(root_path: Path, tmp: str, name: str) -> None:
    """Replace ``labels/<name>`` by the complete ``labels/<tmp>`` and fix the group's list and names."""
    labels_dir = root_path / "labels"
    final = labels_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(labels_dir / tmp, final)
    labels = zarr.open_group(str(labels_dir), mode="a")
    attrs = dict(labels.attrs)
    inner = ome_attrs(attrs)
    listed = [n for n in (inner.get("labels") or []) if n not in (tmp, name)] + [name]
    if "ome" in attrs:
        attrs["ome"] = {**attrs["ome"], "labels": listed}
    else:
        attrs["labels"] = listed
    labels.attrs.put(attrs)
    g = zarr.open_group(str(final), mode="a")
    ga = dict(g.attrs)
    for ms in ome_attrs(ga).get("multiscales", []):
        ms["name"] = name
    g.attrs.update(ga)


def _tiles(data: Any, dtype: np.dtype, tile: int):
    """Tiles of ``data`` (``YX`` or ``ZYX``) in TIFF order, edge tiles zero-padded; reads one row band
    of ``tile`` rows at a time."""
    pages = [None] if data.ndim == 2 else range(data.shape[0])
    h, w = data.shape[-2:]
    for z in pages:
        for y0 in range(0, h, tile):
            region = (slice(y0, min(y0 + tile, h)), slice(None))
            band = _read(data, region if z is None else (z, *region), dtype)
            for x0 in range(0, w, tile):
                t = band[:, x0:x0 + tile]
                if t.shape != (tile, tile):
                    t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1])))
                yield np.ascontiguousarray(t)


def write_labels_tiff(path: str | os.PathLike, data: Any, *, pixel_size: Any = None,
                      unit: str | None = None) -> Path:
    """Write ``data`` (``YX`` or ``ZYX``) as a tiled, zlib-compressed TIFF. 2D: resolution tags
    (centimeter) from ``pixel_size``; 3D: an OME-TIFF with PhysicalSizeZ/Y/X. Returns the path."""
    p = Path(path)
    dtype = _label_dtype(data)
    px, unit = _defaults(data.ndim, pixel_size, unit)
    kw: dict[str, Any] = {}
    if unit != "pixel":
        cm = [convert_length(v, unit, "cm") for v in px[-2:]]
        if all(cm):
            kw.update(resolution=(1.0 / cm[1], 1.0 / cm[0]), resolutionunit="CENTIMETER")
    ome = data.ndim == 3
    metadata: dict[str, Any] | None = None
    if ome:
        short = {"micrometer": "µm", "millimeter": "mm", "nanometer": "nm", "centimeter": "cm"}.get(unit)
        metadata = {"axes": "ZYX"}
        if short:
            for a, v in zip("ZYX", px):
                metadata[f"PhysicalSize{a}"] = v
                metadata[f"PhysicalSize{a}Unit"] = short
    nbytes = int(np.prod(data.shape)) * dtype.itemsize
    tifffile.imwrite(p, _tiles(data, dtype, TIFF_TILE), shape=tuple(data.shape), dtype=dtype,
                     tile=(TIFF_TILE, TIFF_TILE), compression="zlib", photometric="minisblack",
                     bigtiff=nbytes > 2**31, ome=ome, metadata=metadata, **kw)
    return p
