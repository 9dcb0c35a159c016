"""Reading zarr and OME-Zarr (NGFF 0.4 and 0.5) lazily: ``open_zarr`` -> ``ImageSource`` list.

A store holds a plain zarr array (v2 or v3), an NGFF multiscale image and its ``labels/`` groups, or a
bioformats2raw layout (the image in group ``0``). NGFF stores channels first (``CYX``); an RGB(A) uint8
image is shown as RGB through a lazy transpose to ``YXC``. Pixel sizes come from the level-0 ``scale`` and
the axis units (micrometer for 2D, millimeter for volumes; ``unit="pixel"`` when nothing says). Nothing a
file says is trusted blindly: absurd shapes (``MAX_SIDE``) are refused and label names never lead outside
the labels group. Writing NGFF is ``io/ngff_write.py``; the metadata dialect is ``io/ngff_meta.py``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

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
from napari_medseg.io.ngff_meta import ome_attrs, parse_multiscales

logger = logging.getLogger(__name__)

VIRTUAL_PYRAMID_MIN_SIDE = 4096
#: A zarr whose metadata claims an axis longer than this is refused as corrupt: no slide or volume is that
#: large (the biggest slides are ~2e5 px), and even a lazy view of, say, 2^40 px would need gigabytes of
#: chunk bookkeeping before reading a byte.
MAX_SIDE = 2**24


def _token(path: Path, sub: str) -> str:
    return hashlib.sha1(f"{path.resolve()}:{sub}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:16]


def _check_claimed_size(arr: zarr.Array, path: Path) -> None:
    shape = tuple(int(s) for s in arr.shape)
    if any(s > MAX_SIDE for s in shape) or any(int(c) < 1 for c in arr.chunks):
        raise UnreadableInputError(
            f"{path}: its metadata claims an array of shape {shape} with chunks {tuple(arr.chunks)}, beyond any "
            f"image ({MAX_SIDE} px per axis at most); the metadata is corrupt, nothing was read.")


def _dask_level(arr: zarr.Array, axes: str, name: str, where: str | None = None) -> da.Array:
    spatial = [i for i, a in enumerate(axes) if a in "YX"]
    chunks = tile_multiple_chunks(arr.chunks, arr.shape, spatial, np.dtype(arr.dtype).itemsize)
    return as_dask(arr, chunks, name, where=where, axes=axes)


def _shown_axes(axes: str, shape: Sequence[int], dtype: np.dtype) -> tuple[tuple[Any, ...], str, bool]:
    """Selection (index 0 on axes we do not show, e.g. T), our axes after moving C last in 2D, and rgb."""
    sel: list[Any] = []
    kept = ""
    for a, n in zip(axes, shape):
        if a in "ZYX" or (a == "C" and n > 1):
            sel.append(slice(None))
            kept += a
        else:
            sel.append(0)
            if n > 1:
                logger.info("showing index 0 of axis %s (size %d)", a, n)
    if "Z" in kept:
        target = "CZYX" if "C" in kept else "ZYX"
    else:
        target = "YXC" if "C" in kept else "YX"
    rgb = target == "YXC" and np.dtype(dtype) == np.uint8 and shape[axes.index("C")] in (3, 4)
    return tuple(sel), target, rgb


def _arrange(levels: list[Any], axes: str, sel: tuple[Any, ...], target: str) -> list[da.Array]:
    kept = "".join(a for a, s in zip(axes, sel) if isinstance(s, slice))
    perm = [kept.index(a) for a in target]
    out = []
    for lvl in levels:
        v = lvl[sel]
        out.append(v.transpose(perm) if perm != list(range(len(perm))) else v)
    return out


def _label_colors(attrs: dict[str, Any]) -> dict[int, tuple[float, float, float, float]]:
    il = ome_attrs(attrs).get("image-label") or {}
    colors = {}
    for c in il.get("colors") or []:
        try:
            colors[int(c["label-value"])] = tuple(float(v) / 255 for v in c["rgba"])
        except (KeyError, TypeError, ValueError):
            continue
    return colors


def _multiscale_source(group: zarr.Group, ms: dict[str, Any], path: Path, sub: str, kind: str,
                       default_name: str) -> ImageSource:
    arrays = []
    for pth in ms["paths"]:
        try:
            a = group[pth]
        except KeyError as e:
            raise UnreadableInputError(f"{path}: the multiscales metadata names level {pth!r}, which is missing.") from e
        if not isinstance(a, zarr.Array):
            raise UnreadableInputError(f"{path}: the multiscales metadata names level {pth!r}, which is a group, "
                                       "not an array.")
        _check_claimed_size(a, path)
        arrays.append(a)
    if not arrays:
        raise UnreadableInputError(f"{path}: the multiscales metadata lists no levels.")
    ndim = arrays[0].ndim
    axes = ms["axes"] or "TCZYX"[-ndim:]
    if len(axes) != ndim:
        raise UnreadableInputError(f"{path}: multiscales axes {axes!r} do not match the {ndim}-D arrays.")
    sel, target, rgb = _shown_axes(axes, arrays[0].shape, arrays[0].dtype)
    token = _token(path, sub)
    lazy = [_dask_level(a, axes, f"medseg-zarr-{token}-{i}", f"{path}, level {'/'.join(filter(None, (sub, pth)))}")
            for i, (a, pth) in enumerate(zip(arrays, ms["paths"]))]
    levels = _arrange(lazy, axes, sel, target)
    spatial_shapes = [tuple(s for s, a in zip(lvl.shape, target) if a in "ZYX") for lvl in levels]
    levels = [levels[i] for i in keep_shrinking(spatial_shapes)]
    # physical size from level 0
    want = "millimeter" if "Z" in target else "micrometer"
    scale0 = ms["scales"][0] or [1.0] * ndim
    units = ms["units"] or [None] * ndim
    sizes, unit, source = [], want, "NGFF scale"
    for a in target:
        if a not in "ZYX":
            continue
        i = axes.index(a)
        u = units[i]
        if u is None:
            u = "micrometer" if any(scale0[axes.index(b)] != 1.0 for b in "YX" if b in axes) else None
        v = convert_length(scale0[i], u, want) if u else None
        sizes.append(v)
    if any(v is None for v in sizes):
        sizes, unit, source = [float(scale0[axes.index(a)]) for a in target if a in "ZYX"], "pixel", "NGFF scale (no unit)"
    if not all(math.isfinite(v) and v > 0 for v in sizes):
        logger.warning("%s: the NGFF scale %s is not a positive size; showing it in pixels", path, scale0)
        sizes, unit, source = [1.0] * len(sizes), "pixel", f"unknown (invalid NGFF scale {scale0})"
    contrast = None
    if kind == "image" and not rgb:
        contrast = subsample_limits(levels[0] if "Z" in target else levels[-1], target)
    meta: dict[str, Any] = {"format": f"ngff {ms['version']}", "pixel_size_source": source, "ngff_path": sub,
                            "levels": [list(lvl.shape) for lvl in levels]}
    if kind == "labels":
        meta["colors"] = _label_colors(dict(group.attrs))
    return ImageSource(levels=levels, axes=target, pixel_size=tuple(sizes), unit=unit,
                       name=ms.get("name") or default_name, path=str(path), rgb=rgb and kind == "image",
                       modality="brightfield" if rgb and kind == "image" else "unknown",
                       contrast_limits=contrast, metadata=meta, kind=kind)


def _plain_source(arr: zarr.Array, path: Path, name: str) -> ImageSource:
    _check_claimed_size(arr, path)
    shape, dtype = arr.shape, np.dtype(arr.dtype)
    if arr.ndim == 2:
        axes = "YX"
    elif arr.ndim == 3 and shape[-1] in (3, 4) and dtype == np.uint8:
        axes = "YXC"
    elif arr.ndim == 3:
        axes = "ZYX"
    elif arr.ndim == 4:
        axes = "CZYX"
    elif arr.ndim == 5:
        axes = "TCZYX"
    else:
        raise UnreadableInputError(f"{path}: a {arr.ndim}-D zarr array has no image layout napari-medseg knows.")
    where = f"{path}" + (f", array {name.split('/', 1)[1]}" if "/" in name else "")
    lazy = _dask_level(arr, axes, f"medseg-zarr-{_token(path, name)}", where)
    sel = tuple(0 if a == "T" else slice(None) for a in axes)
    target = axes.replace("T", "")
    level0 = lazy[sel]
    levels = [level0]
    meta: dict[str, Any] = {"format": f"zarr v{arr.metadata.zarr_format} array", "pixel_size_source": "unknown"}
    if "Z" not in target and max(shape[:2]) > VIRTUAL_PYRAMID_MIN_SIDE:
        levels += virtual_levels(arr, level0, [0, 1], f"medseg-zarr-{_token(path, name)}", where=where, axes=axes)
        meta["hint"] = (f"{path.name}: a plain zarr array without a pyramid is slow to view; run "
                        f"`napari-medseg convert {path} {path.stem}-ngff.zarr` once for fast viewing.")
        logger.warning(meta["hint"])
    rgb = axes == "YXC"
    contrast = None if rgb else subsample_limits(levels[-1] if "Z" not in target else level0, target)
    return ImageSource(levels=levels, axes=target, pixel_size=(1.0,) * sum(a in "ZYX" for a in target), unit="pixel",
                       name=name, path=str(path), rgb=rgb, modality="brightfield" if rgb else "unknown",
                       contrast_limits=contrast, metadata=meta)


def _plain_name(name: Any) -> bool:
    """A single path segment: no separators, not ``.`` or ``..``, not empty."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _image_and_labels(group: zarr.Group, path: Path, sub: str, name: str) -> list[ImageSource]:
    out: list[ImageSource] = []
    ms = parse_multiscales(dict(group.attrs))
    if ms is not None:
        kind = "labels" if "image-label" in ome_attrs(dict(group.attrs)) else "image"
        out.append(_multiscale_source(group, ms, path, sub, kind, name))
    labels = group.get("labels") if "labels" in set(group.group_keys()) else None
    if labels is not None:
        listed = ome_attrs(dict(labels.attrs)).get("labels") or sorted(labels.group_keys())
        for lname in listed if isinstance(listed, list) else []:
            if not _plain_name(lname):  # a name from the file never leads outside the labels group
                logger.warning("%s: labels entry %r is not a plain group name; skipped", path, lname)
                continue
            lg = labels.get(str(lname))
            lms = parse_multiscales(dict(lg.attrs)) if isinstance(lg, zarr.Group) else None
            if lms is None:
                logger.warning("%s: labels group %r has no multiscales metadata; skipped", path, lname)
                continue
            try:
                out.append(_multiscale_source(lg, lms, path, f"{sub}/labels/{lname}", "labels", str(lname)))
            except UnreadableInputError as e:  # the image is still worth showing
                logger.warning("%s: labels %r skipped: %s", path, lname, e)
    return out


def open_zarr(path: str | os.PathLike) -> list[ImageSource]:
    """Open a zarr store lazily: images first, then labels. Raises ``UnreadableInputError``."""
    p = Path(path)
    name = p.name[:-5] if p.name.lower().endswith(".zarr") else p.name
    try:
        node = zarr.open(store=str(p), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as e:
        raise UnreadableInputError(f"{p}: is not a zarr store (no .zgroup, .zarray or zarr.json found).") from e
    if isinstance(node, zarr.Array):
        return [_plain_source(node, p, name)]
    out = _image_and_labels(node, p, "", name)
    if not out:
        groups = set(node.group_keys())
        # bioformats2raw layout: the image is the group "0"
        if "0" in groups and parse_multiscales(dict(node["0"].attrs)) is not None:
            out = _image_and_labels(node["0"], p, "0", name)
    if not out:
        arrays = sorted(node.array_keys())
        if not arrays:
            raise UnreadableInputError(f"{p}: is an empty zarr group (no arrays and no NGFF multiscales); "
                                       "open the zarr that holds the image.")
        out = [_plain_source(node[arrays[0]], p, f"{name}/{arrays[0]}")]
    return out

