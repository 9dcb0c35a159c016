"""Convert any readable slide or volume into a chunked NGFF 0.4 multiscale pyramid, out of core.

Level 0 is copied from the source block by block (blocks are whole output chunks, so each chunk has one
writer, and at most a few blocks are in memory); each further level is built from the level above it
(mean of 2x2 or 2x2x2 windows). Pixel sizes and units are kept. The pyramid is written to
``<out>.partial`` and renamed when complete, so an interrupted conversion never leaves a half-written
output under the final name.

Axes on disk: ``YX``, ``CYX`` (RGB slides: channels first, as NGFF wants), ``ZYX``, ``CZYX``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np

from napari_medseg.core.compute import compute
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.io.ngff_write import (
    BLOCK_BYTES,
    block_shape,
    build_pyramid,
    create_multiscale,
    n_blocks,
    remove_zarr,
    write_blocks,
)
from napari_medseg.io.reader import open_image

logger = logging.getLogger(__name__)

#: Chunk edge along Z for volumes (Y/X use ``chunk``, capped at 256 for volumes).
VOLUME_CHUNK_Z = 64


def _disk_layout(src: ImageSource, chunk: int) -> tuple[str, tuple[int, ...], tuple[int, ...], list[int]]:
    """NGFF axes, shape, chunks of level 0 on disk, and the permutation from source axes to disk axes."""
    axes = src.axes
    disk = "".join(a for a in axes if a == "C") + "".join(a for a in axes if a != "C")
    perm = [axes.index(a) for a in disk]
    shape = tuple(int(src.levels[0].shape[i]) for i in perm)
    chunks = []
    for a, n in zip(disk, shape):
        if a == "C":
            chunks.append(n)
        elif a == "Z":
            chunks.append(min(n, VOLUME_CHUNK_Z))
        else:
            chunks.append(min(n, chunk if "Z" not in disk else min(chunk, 256)))
    return disk, shape, tuple(chunks), perm


def _source_chunks(level0: Any, perm: list[int]) -> tuple[int, ...] | None:
    ch = getattr(level0, "chunks", None)
    if ch is None or not isinstance(ch[0], tuple):
        return None
    return tuple(max(ch[i]) for i in perm)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, chunk: int = 512, n_levels: int | None = None,
            overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
            workers: int = 2, block_bytes: int = BLOCK_BYTES) -> Path:
    """Write ``src`` (any input ``open_path`` reads) as an NGFF multiscale pyramid at ``out``.

    ``chunk``: chunk edge in pixels along Y/X; ``n_levels``: pyramid levels (default: until a level fits
    one chunk); ``overwrite``: replace an existing zarr at ``out`` (anything else there is never deleted);
    ``progress(done, total)`` is called after each block; ``workers`` blocks are processed at once and
    each is about ``block_bytes``. Returns the output path. Raises ``MedsegError`` on bad input."""
    src_p, out_p = Path(src), Path(out)
    if chunk < 16:
        raise MedsegError(f"chunk size {chunk} is too small; use at least 16 (512 is a good default).")
    if n_levels is not None and n_levels < 1:
        raise MedsegError(f"--levels must be at least 1, got {n_levels}.")
    if out_p.exists() and not overwrite:
        raise MedsegError(f"{out_p}: already exists; pass --overwrite to replace it or choose another output.")
    if out_p.resolve() == src_p.resolve():
        raise MedsegError(f"{out_p}: is the input itself; choose another output.")
    image = open_image(src_p)
    disk, shape, chunks, perm = _disk_layout(image, chunk)
    level0 = image.levels[0]
    partial = out_p.with_name(out_p.name + ".partial")
    if partial.exists():
        remove_zarr(partial)
    meta = {"napari_medseg": {"source": str(src_p), "modality": image.modality, "rgb": image.rgb,
                              "channel_names": list(image.channel_names)}, "method": "mean"}
    if image.contrast_limits is not None:
        meta["napari_medseg"]["contrast_limits"] = list(image.contrast_limits)
    arrays = create_multiscale(partial, shape, image.dtype, disk, image.pixel_size, image.unit, chunks,
                               n_levels=n_levels, name=image.name, metadata=meta)
    spatial = [i for i, a in enumerate(disk) if a in "ZYX"]
    itemsize = np.dtype(image.dtype).itemsize
    blk0 = block_shape(shape, chunks, itemsize, spatial, block_bytes, prefer=_source_chunks(level0, perm))
    total = n_blocks(shape, blk0)
    for k in range(1, len(arrays)):
        a = arrays[k]
        factor = math.prod(max(1, round(x / y)) for x, y in zip(arrays[k - 1].shape, a.shape))
        total += n_blocks(a.shape, block_shape(a.shape, a.chunks, itemsize * factor, spatial, block_bytes))
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    inv = [perm.index(i) for i in range(len(perm))]

    def read(region: tuple[slice, ...]) -> np.ndarray:
        src_region = tuple(region[inv[i]] for i in range(len(region)))
        part = level0[src_region]
        if hasattr(part, "compute"):
            part = compute(part)
        return np.ascontiguousarray(np.asarray(part).transpose(perm))

    logger.info("converting %s (%s %s) -> %s, %d levels", src_p, disk, shape, out_p, len(arrays))
    with dask.config.set(scheduler="synchronous"):
        write_blocks(arrays[0], read, block=blk0, workers=workers, progress=tick)
        build_pyramid(arrays, disk, "image", workers=workers, block_bytes=block_bytes, progress=tick)
    if out_p.exists():  # overwrite was asked for and checked above
        remove_zarr(out_p)
    os.replace(partial, out_p)
    return out_p
