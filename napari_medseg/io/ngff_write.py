"""Writing NGFF 0.4 zarr pyramids, block by block (used by convert, the labels writer, the label store and
the predictor).

``create_multiscale`` makes the empty arrays of a pyramid with NGFF 0.4 metadata (zarr format 2, ``/`` chunk
keys; 0.5 attributes when writing into a zarr v3 group); ``create_labels_group`` adds a labels image to an
image zarr; ``write_blocks`` copies an array into a level block by block (each output chunk written by one
writer); ``build_pyramid`` fills levels 1.. from the level above; ``downsample_block`` is the per-block
reduction (mean for images, mode for labels). ``remove_zarr`` deletes a zarr and nothing else. Reading is
``io/ngff_read.py``.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from skimage.measure import block_reduce

from napari_medseg.core.errors import MedsegError
from napari_medseg.io.ngff_meta import (
    SPACE_UNITS,
    image_label_attrs,
    multiscales_attrs,
    ngff_axes_order,
    ome_attrs,
)

DEFAULT_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
#: Above this many distinct values a labels block is downsampled by nearest neighbour, not by mode.
MODE_MAX_VALUES = 32
#: Bytes of one block read/written at a time by ``write_blocks`` / ``build_pyramid``.
BLOCK_BYTES = 64 * 2**20


# ===================================================================================== arrays and metadata
def pyramid_shapes(shape: Sequence[int], axes: str, chunks: Sequence[int], n_levels: int | None = None,
                   downsample_axes: str | None = None) -> list[tuple[int, ...]]:
    """Level shapes halving (ceil) along ``downsample_axes`` (default: all spatial axes). With
    ``n_levels=None``: until the downsampled axes fit in one chunk."""
    ds = [i for i, a in enumerate(axes) if a in (downsample_axes or "ZYX") and a in "ZYX"]
    shapes = [tuple(int(s) for s in shape)]
    while n_levels is None or len(shapes) < n_levels:
        prev = shapes[-1]
        if n_levels is None and all(prev[i] <= chunks[i] for i in ds):
            break
        nxt = tuple(math.ceil(s / 2) if i in ds else s for i, s in enumerate(prev))
        if nxt == prev:
            break
        shapes.append(nxt)
    return shapes


def _group_for_write(path_or_group: str | os.PathLike | zarr.Group, overwrite: bool) -> zarr.Group:
    if isinstance(path_or_group, zarr.Group):
        return path_or_group
    p = Path(path_or_group)
    if p.exists() and not overwrite:
        raise MedsegError(f"{p}: already exists; choose another output or allow overwriting it.")
    if p.exists():
        remove_zarr(p)
    return zarr.open_group(str(p), mode="w", zarr_format=2)


def remove_zarr(p: Path) -> None:
    """Delete an existing zarr at ``p``; refuses anything that is not a zarr (never loses other data)."""
    if p.is_dir() and not any((p / m).exists() for m in (".zgroup", ".zarray", ".zattrs", "zarr.json")) \
            and any(p.iterdir()):
        raise MedsegError(f"{p}: exists and is not a zarr; refusing to overwrite it.")
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        raise MedsegError(f"{p}: exists and is a file, not a zarr; refusing to overwrite it.")


def _format_attrs(attrs: dict[str, Any], zarr_format: int) -> dict[str, Any]:
    """NGFF 0.4 attrs as written (zarr v2), or nested under ``"ome"`` as 0.5 for a zarr v3 group."""
    if zarr_format == 2:
        return attrs

    def strip(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k != "version"}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    return {"ome": {"version": "0.5", **strip(attrs)}}


def create_multiscale(path_or_group: str | os.PathLike | zarr.Group, shape: Sequence[int], dtype: Any, axes: str,
                      pixel_size: Sequence[float], unit: str, chunks: Sequence[int], n_levels: int | None = None,
                      name: str = "image", downsample_axes: str | None = None, *, overwrite: bool = False,
                      fill_value: Any = 0, metadata: dict[str, Any] | None = None,
                      compressor: Any = DEFAULT_COMPRESSOR) -> list[zarr.Array]:
    """Create the (empty) levels ``"0"``, ``"1"``... of an NGFF 0.4 multiscale image and its metadata.

    ``axes`` is the on-disk NGFF order, channel before space (``"YX"``, ``"CYX"``, ``"ZYX"``, ``"CZYX"``);
    ``shape`` and ``chunks`` follow it; ``pixel_size`` has one value per spatial axis of level 0 in
    ``unit``. Levels halve along ``downsample_axes`` (default all spatial axes), ``n_levels=None`` until
    they fit one chunk. A path creates a new zarr v2 group (an existing one only with ``overwrite``,
    and only if it is a zarr); a ``zarr.Group`` is written into. Returns the level arrays, level 0 first.
    """
    if ngff_axes_order(axes) != axes or set(axes) - set("TCZYX") or len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} must be NGFF order, channel before space (e.g. 'CYX', 'ZYX')")
    if len(shape) != len(axes) or len(chunks) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and chunks {tuple(chunks)} need one value per axis of {axes!r}")
    spatial = [a for a in axes if a in "ZYX"]
    if len(pixel_size) != len(spatial):
        raise ValueError(f"pixel_size {tuple(pixel_size)} needs one value per spatial axis {''.join(spatial)!r}")
    group = _group_for_write(path_or_group, overwrite)
    zarr_format = group.metadata.zarr_format
    shapes = pyramid_shapes(shape, axes, chunks, n_levels, downsample_axes)
    ds = [a for a in axes if a in (downsample_axes or "ZYX") and a in "ZYX"]
    arrays, scales = [], []
    for i, s in enumerate(shapes):
        kw: dict[str, Any] = {"compressors": compressor}
        if zarr_format == 2:
            kw["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kw = {}
        arrays.append(group.create_array(str(i), shape=s, dtype=dtype, fill_value=fill_value, overwrite=overwrite,
                                         chunks=tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, s)), **kw))
        px = dict(zip(spatial, pixel_size))
        scales.append([px[a] * (2**i if a in ds else 1) if a in px else 1.0 for a in axes])
    attrs = multiscales_attrs(axes, scales, unit, name=name, metadata=metadata)
    if unit not in SPACE_UNITS:  # e.g. "pixel": NGFF has no such unit, leave it out
        for ax in attrs["multiscales"][0]["axes"]:
            ax.pop("unit", None)
    group.attrs.update(_format_attrs(attrs, zarr_format))
    return arrays


def create_labels_group(image_group_path: str | os.PathLike | zarr.Group, name: str, shape: Sequence[int],
                        chunks: Sequence[int], pixel_size: Sequence[float], unit: str,
                        colors: dict[int, tuple[float, float, float, float]] | None = None, n_levels: int | None = 1,
                        *, dtype: Any = np.uint8, overwrite: bool = True) -> list[zarr.Array]:
    """Add ``labels/<name>`` (axes ``YX`` or ``ZYX``, NGFF ``image-label`` colors as RGBA 0..1 per value)
    to the zarr at ``image_group_path``; a missing path becomes a new zarr holding just labels.
    An existing ``labels/<name>`` is replaced only with ``overwrite``. Returns the level arrays."""
    if isinstance(image_group_path, zarr.Group):
        root = image_group_path
    else:
        p = Path(image_group_path)
        if p.exists() and not any((p / m).exists() for m in (".zgroup", "zarr.json")):
            raise MedsegError(f"{p}: exists and is not a zarr group; choose a new path for the labels.")
        root = zarr.open_group(str(p), mode="a", zarr_format=None if p.exists() else 2)
    zf = root.metadata.zarr_format
    axes = {2: "YX", 3: "ZYX"}.get(len(shape))
    if axes is None:
        raise ValueError(f"labels must be YX or ZYX, got shape {tuple(shape)}")
    labels = root.require_group("labels")
    listed = list(ome_attrs(dict(labels.attrs)).get("labels") or [])
    if name in set(labels.group_keys()) | set(labels.array_keys()):
        if not overwrite:
            raise MedsegError(f"labels {name!r} already exist in {root.store}; choose another name.")
        del labels[name]
    group = labels.create_group(name)
    arrays = create_multiscale(group, shape, dtype, axes, pixel_size, unit, chunks, n_levels, name=name)
    il = image_label_attrs({int(k): v for k, v in (colors or {}).items() if k is not None})
    group.attrs.update(_format_attrs(il, zf))
    if name not in listed:
        listed.append(name)
    labels.attrs.update(_format_attrs({"labels": listed}, zf))
    return arrays


# ===================================================================================== blocks
def downsample_block(block: np.ndarray, factor: int | Sequence[int], kind: str = "image") -> np.ndarray:
    """Downsample ``block`` by ``factor`` (an int for every axis, or one per axis, 1 for channel axes).

    Images: the mean of each window (float32 accumulation, rounded back to integer dtypes); labels: the
    most frequent value of each window, non-zero winning ties (so thin annotations survive), nearest
    neighbour when the block holds more than ``MODE_MAX_VALUES`` distinct values; ``nearest``: the first pixel
    of each window (instance ids). Edges that do not fill
    a window are padded by replication, so the output shape is ``ceil(shape / factor)``."""
    f = (int(factor),) * block.ndim if np.isscalar(factor) else tuple(int(x) for x in factor)
    if len(f) != block.ndim:
        raise ValueError(f"factor {f} needs one value per axis of a {block.ndim}-D block")
    if all(x == 1 for x in f):
        return np.array(block, copy=True)
    pad = [(0, (-s) % x) for s, x in zip(block.shape, f)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    if kind == "image":
        out = block_reduce(block, f, np.mean, func_kwargs={"dtype": np.float32})
        if np.issubdtype(block.dtype, np.integer):
            info = np.iinfo(block.dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(block.dtype)
        return out.astype(block.dtype)
    nearest = block[tuple(slice(None, None, x) for x in f)]
    if kind == "nearest":  # instance ids: neither averaged nor voted (and no np.unique over thousands of ids)
        return np.ascontiguousarray(nearest)
    if kind != "labels":
        raise ValueError(f"kind must be 'image', 'labels' or 'nearest', got {kind!r}")
    values = np.unique(block)
    if values.size <= 1:
        return np.ascontiguousarray(nearest)
    if values.size > MODE_MAX_VALUES:
        return np.ascontiguousarray(nearest)
    out_shape = tuple(s // x for s, x in zip(block.shape, f))
    inter = [d for s, x in zip(out_shape, f) for d in (s, x)]
    windows = block.reshape(inter).transpose(list(range(0, 2 * block.ndim, 2)) + list(range(1, 2 * block.ndim, 2)))
    windows = windows.reshape(*out_shape, -1)
    best = np.zeros(out_shape, dtype=block.dtype)
    best_count = np.full(out_shape, -1.0, dtype=np.float32)
    for v in values:
        count = (windows == v).sum(axis=-1, dtype=np.float32) - (0.5 if v == 0 else 0.0)
        better = count > best_count
        best[better] = v
        best_count[better] = count[better]
    return best


def iter_blocks(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """Regions of ``shape`` tiled by ``block`` (the last ones clipped), in C order."""
    ranges = [range(0, int(s), int(b)) for s, b in zip(shape, block)]
    for start in np.ndindex(*[len(r) for r in ranges]):
        yield tuple(slice(r[i], min(r[i] + int(b), int(s))) for r, i, b, s in zip(ranges, start, block, shape))


def block_shape(shape: Sequence[int], chunks: Sequence[int], itemsize: int, spatial: Sequence[int],
                block_bytes: int = BLOCK_BYTES, prefer: Sequence[int] | None = None) -> tuple[int, ...]:
    """A block that is a whole number of ``chunks`` along every axis, about ``block_bytes`` big.
    ``prefer`` gives a minimum extent per axis (e.g. a source's full-width strips)."""
    b = [int(c) for c in chunks]
    if prefer is not None:
        for i in spatial:
            if prefer[i] > b[i]:
                b[i] = min(int(shape[i]), math.ceil(prefer[i] / chunks[i]) * chunks[i])
    while math.prod(b) * itemsize * 2 <= block_bytes:
        grow = [i for i in spatial if b[i] < shape[i]]
        if not grow:
            break
        i = min(grow, key=lambda j: b[j])
        b[i] = min(int(shape[i]), b[i] * 2)
    return tuple(min(int(s), x) for s, x in zip(shape, b))


def write_blocks(target: zarr.Array, read: Callable[[tuple[slice, ...]], np.ndarray], *,
                 block: Sequence[int] | None = None, workers: int = 2,
                 progress: Callable[[int], None] | None = None) -> None:
    """Fill ``target`` block by block: ``read(region)`` returns the data of ``region`` (target axes).
    Blocks are whole chunks, so each chunk has one writer; ``workers`` blocks are in flight at once."""
    spatial = list(range(target.ndim))
    block = tuple(block or block_shape(target.shape, target.chunks, np.dtype(target.dtype).itemsize, spatial))

    def one(region: tuple[slice, ...]) -> None:
        target[region] = read(region)

    regions = list(iter_blocks(target.shape, block))
    if workers <= 1:
        for r in regions:
            one(r)
            if progress:
                progress(1)
        return
    with ThreadPoolExecutor(workers) as pool:
        # a bounded window of futures keeps memory at ~workers blocks
        pending = []
        for r in regions:
            pending.append(pool.submit(one, r))
            if len(pending) > workers:
                pending.pop(0).result()
                if progress:
                    progress(1)
        for f in pending:
            f.result()
            if progress:
                progress(1)


def build_pyramid(arrays: Sequence[zarr.Array], axes: str, kind: str = "image", *, workers: int = 2,
                  block_bytes: int = BLOCK_BYTES, progress: Callable[[int], None] | None = None) -> None:
    """Fill levels 1.. of ``arrays`` (NGFF axes ``axes``) from the level above, block by block."""
    for k in range(1, len(arrays)):
        src, dst = arrays[k - 1], arrays[k]
        factor = tuple(max(1, round(a / b)) if ax in "ZYX" else 1 for a, b, ax in zip(src.shape, dst.shape, axes))
        spatial = [i for i, a in enumerate(axes) if a in "ZYX"]
        blk = block_shape(dst.shape, dst.chunks, np.dtype(dst.dtype).itemsize * math.prod(factor), spatial,
                          block_bytes)

        def read(region: tuple[slice, ...], src: zarr.Array = src, dst: zarr.Array = dst,
                 factor: tuple[int, ...] = factor) -> np.ndarray:
            up = tuple(slice(r.start * f, min(r.stop * f, n)) for r, f, n in zip(region, factor, src.shape))
            out = downsample_block(np.asarray(src[up]), factor, kind)
            return out[tuple(slice(0, r.stop - r.start) for r in region)]

        write_blocks(dst, read, block=blk, workers=workers, progress=progress)


def n_blocks(shape: Sequence[int], block: Sequence[int]) -> int:
    return math.prod(math.ceil(s / b) for s, b in zip(shape, block))
