"""Chunk-grid arithmetic shared by the label store and the painting GUI (pure: numpy only).

An array of ``shape`` is cut into chunks of ``chunks`` pixels; a chunk is named by its grid index (a tuple
such as ``(iy, ix)`` or ``(iz, iy, ix)``). Here: the grid's shape, a chunk's pixel slices, the chunks
touching a box, chunk keys as text (``"iy.ix"``, for the index file), the parents of chunks one pyramid level
up, and ``normalize_key`` (numpy basic indexing -> ranges per axis).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

Chunk = tuple[int, ...]


def offsets_within(radius: int, nd: int, *, half: bool = False) -> list[tuple[int, ...]]:
    """Non-zero integer offsets within ``radius`` (Euclidean) in ``nd`` dimensions; ``half``: each pair of
    opposite offsets once (the positive one in lexicographic order)."""
    out = []
    for o in itertools.product(range(-radius, radius + 1), repeat=nd):
        if any(o) and sum(v * v for v in o) <= radius * radius and (not half or o > (0,) * nd):
            out.append(o)
    return out


def pair_slices(offset: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``a, b`` of an array of ``shape`` such that ``x[a]`` are the pixels ``i`` and ``x[b]`` their
    neighbours ``i + offset`` (every pair inside the array once)."""
    a = tuple(slice(max(0, -v), n - max(0, v)) for v, n in zip(offset, shape))
    b = tuple(slice(max(0, v), n - max(0, -v)) for v, n in zip(offset, shape))
    return a, b


def grid_shape(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    """Chunks per axis (the last chunk of an axis may be partial)."""
    return tuple(math.ceil(s / c) for s, c in zip(shape, chunks))


def chunk_slices(idx: Chunk, shape: Sequence[int], chunks: Sequence[int]) -> tuple[slice, ...]:
    """The pixel region of chunk ``idx`` (clipped at the array's far edge)."""
    return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))


def chunks_in_box(lo: Sequence[int], hi: Sequence[int], chunks: Sequence[int]) -> Iterator[Chunk]:
    """Every chunk index touching the half-open pixel box ``[lo, hi)`` (empty if the box is empty)."""
    if any(h <= lo_ for lo_, h in zip(lo, hi)):
        return iter(())
    ranges = [range(lo_ // c, (h - 1) // c + 1) for lo_, h, c in zip(lo, hi, chunks)]
    return itertools.product(*ranges)


def chunk_key(idx: Chunk) -> str:
    """``(3, 7)`` -> ``"3.7"``."""
    return ".".join(str(i) for i in idx)


def parse_chunk_key(key: str) -> Chunk:
    """``"3.7"`` -> ``(3, 7)``."""
    return tuple(int(p) for p in key.split("."))


def parents(children: Iterable[Chunk], factor: Sequence[int]) -> set[Chunk]:
    """The chunks of the next pyramid level covering ``children`` (chunk sizes are equal on every level and
    the level is ``factor`` times smaller per axis)."""
    return {tuple(c // f for c, f in zip(ch, factor)) for ch in children}


def normalize_key(key: Any, shape: Sequence[int]) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Numpy basic indexing -> (start, stop, step) per axis and the axes to squeeze (integer indices).

    Takes ints, slices with positive steps and one Ellipsis; raises ``IndexError``/``TypeError`` like numpy.
    """
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    if len(key) > len(shape):
        raise IndexError(f"too many indices for an array with {len(shape)} axes")
    key = tuple(key) + (slice(None),) * (len(shape) - len(key))
    ranges, squeeze = [], []
    for ax, (k, s) in enumerate(zip(key, shape)):
        if isinstance(k, (int, np.integer)):
            i = int(k) + s if k < 0 else int(k)
            if not 0 <= i < s:
                raise IndexError(f"index {k} is out of bounds for axis {ax} with size {s}")
            ranges.append((i, i + 1, 1))
            squeeze.append(ax)
        elif isinstance(k, slice):
            start, stop, step = k.indices(s)
            if step < 1:
                raise IndexError("a label store is read with positive slice steps only")
            ranges.append((start, max(stop, start), step))
        else:
            raise TypeError(f"a label store is read with integers and slices (numpy basic indexing), got "
                            f"{type(k).__name__}")
    return ranges, squeeze
