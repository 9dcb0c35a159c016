"""Reading the source in large blocks: a source-tile cache, corrupt-tile handling and background prefetch
(``TileReader``, ``Prefetcher``); ``ArrayReader`` serves the same boxes from an array already in memory.

A block's input (its windows' extent: the block plus a halo of ``window - interval`` pixels) is assembled
from the source level's own tiles (its dask/zarr chunks). Decoded tiles stay in an LRU cache sized to hold
a row of tiles across the image, so the halo shared by neighbouring blocks is decoded about once (the
reader counts decodes: ``stats()``). The next block is read in a background thread while the model runs.

Arrays come back channels-last, ``(*spatial, C)`` (``YXC`` or ``ZYXC``), the source dtype unchanged: the
predictor sends them to the device as they are and normalises there.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medseg.core.compute import compute_many
from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.core.source import SPATIAL_AXES, ImageSource, box_index, channels_to, read_box

log = logging.getLogger(__name__)
Box = tuple[tuple[int, int], ...]


class CorruptTileError(UnreadableInputError):
    """A tile of the source could not be decoded; the message names its level and position."""


@dataclass
class BlockData:
    """Pixels of ``box`` (may reach outside the image) as read: ``data`` covers ``valid`` (box within the
    image), channels last. ``bad`` lists boxes (level pixels) of tiles that could not be decoded."""

    box: Box
    valid: Box
    data: np.ndarray
    bad: list[tuple[Box, str]]


def _chunk_sizes(arr: Any, ndim: int) -> tuple[int, ...] | None:
    ch = getattr(arr, "chunks", None)
    if ch is None:
        return None
    try:
        if all(isinstance(c, int) for c in ch):
            return tuple(int(c) for c in ch)
        return tuple(int(c[0]) for c in ch)  # dask: regular grid assumed (first chunk)
    except (TypeError, IndexError):
        return None


def _halve_to(c: int, limit: int) -> int:
    while c > limit and c % 2 == 0:
        c //= 2
    return c


class TileReader:
    """Reads boxes of one level of ``source`` through an LRU cache of decoded source tiles."""

    def __init__(self, source: ImageSource, level: int, *, tile: Sequence[int] | None = None,
                 cache_bytes: int | None = None, on_corrupt: str = "stop", band: int | None = None) -> None:
        if on_corrupt not in ("stop", "skip"):
            raise MedsegError(f"on_corrupt must be 'stop' or 'skip', got {on_corrupt!r}")
        self.source, self.level, self.on_corrupt = source, level, on_corrupt
        self.arr = source.levels[level]
        self.shape = source.level_shape(level)
        self.sp_pos = [i for i, a in enumerate(source.axes) if a in SPATIAL_AXES]
        self.c_pos = source.channel_axis
        self.n_channels = int(self.arr.shape[self.c_pos]) if self.c_pos is not None else 1
        chunks = _chunk_sizes(self.arr, self.arr.ndim)
        default = 512 if len(self.shape) == 2 else 64
        if tile is not None:
            self.tile = tuple(int(t) for t in tile)
        elif chunks is not None:
            # the level's chunks (dask chunks may group several file tiles: read one 512-ish tile at a time)
            self.tile = tuple(_halve_to(max(1, chunks[p]), 512 if len(self.shape) == 2 else 64) for p in self.sp_pos)
        else:
            self.tile = tuple(min(default, s) for s in self.shape)
        self.tile_bytes = int(np.prod(self.tile)) * self.n_channels * np.dtype(self.arr.dtype).itemsize
        if cache_bytes is None:
            # the band of tile rows one row of blocks reads (``band`` pixels high), across the image: in
            # raster order the next row of blocks then finds its halo rows still cached
            across = int(np.prod([-(-s // t) for s, t in zip(self.shape[1:], self.tile[1:])]))
            rows = -(-(band or self.tile[0]) // self.tile[0]) + 1
            cache_bytes = min(512 << 20, max(16 << 20, rows * across * self.tile_bytes + (8 << 20)))
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[tuple[int, ...], np.ndarray | None] = OrderedDict()
        self._cached = 0
        self._peak = 0
        self._lock = threading.Lock()
        self.decoded = 0
        self._seen: set[tuple[int, ...]] = set()
        self.bad_tiles: dict[tuple[int, ...], str] = {}
        self._is_dask = type(self.arr).__module__.startswith("dask")
        self._uses: dict[tuple[int, ...], int] | None = None  # planned future reads per tile

    def plan(self, boxes: Sequence[Box | None]) -> None:
        """Announce the boxes that will be read (in order): a tile is then kept exactly until its last
        planned read and dropped after it, so every tile is decoded once and the cache holds only tiles
        still needed (the halo rows shared with the next row of blocks), not an LRU's guess."""
        uses: dict[tuple[int, ...], int] = {}
        for box in boxes:
            if box is not None:
                for k in self._keys(box):
                    uses[k] = uses.get(k, 0) + 1
        with self._lock:
            self._uses = uses
            self.cache_bytes = max(self.cache_bytes, 512 << 20)  # the plan bounds it; this is a safety cap

    def _keys(self, box: Box) -> list[tuple[int, ...]]:
        import itertools

        valid = tuple((max(0, a), min(s, b)) for (a, b), s in zip(box, self.shape))
        if any(a >= b for a, b in valid):
            return []
        return list(itertools.product(*[range(a // t, (b - 1) // t + 1) for (a, b), t in zip(valid, self.tile)]))

    # -- tiles ---------------------------------------------------------------------------------------
    def tile_box(self, key: Sequence[int]) -> Box:
        return tuple((k * t, min((k + 1) * t, s)) for k, t, s in zip(key, self.tile, self.shape))

    def _read(self, key: tuple[int, ...]) -> np.ndarray:
        """The tile ``key``, channels last."""
        return read_box(self.source, self.level, self.tile_box(key), pad=None, channels_last=True)

    def _lazy(self, key: tuple[int, ...]) -> Any:
        """The tile ``key`` in the source's own axes, not computed (many are computed at once; the axes are
        moved after, in numpy, which keeps each tile's dask graph to the one slice)."""
        return self.arr[box_index(self.source, self.level, self.tile_box(key))[0]]

    def _describe(self, box: Box) -> str:
        axes = self.source.spatial_axes
        return ", ".join(f"{ax.lower()}={a}:{b}" for ax, (a, b) in zip(axes, box))

    def _decode(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], np.ndarray | None]:
        out: dict[tuple[int, ...], np.ndarray | None] = {}
        if not keys:
            return out
        parts = None
        if self._is_dask and len(keys) > 1:  # one compute for all of them (dask decodes them in parallel)
            try:
                parts = [channels_to(self.source, p, True) for p in compute_many([self._lazy(k) for k in keys])]
            except Exception:  # find the culprit(s) tile by tile below
                parts = None
        for i, k in enumerate(keys):
            try:
                out[k] = np.ascontiguousarray(parts[i] if parts is not None else self._read(k))
            except Exception as e:
                where = f"level {self.level}, {self._describe(self.tile_box(k))}"
                msg = f"{type(e).__name__}: {e}"
                if self.on_corrupt == "stop":
                    raise CorruptTileError(
                        f"{self.source.path or self.source.name}: the tile at {where} could not be decoded "
                        f"({msg}); repair or reconvert the image, or rerun with on_corrupt='skip' to predict "
                        "around it.") from e
                log.warning("corrupt source tile at %s: %s", where, msg)
                self.bad_tiles[k] = msg
                out[k] = None
            self.decoded += 1
            self._seen.add(k)
        return out

    def read(self, box: Box) -> BlockData:
        """The pixels of ``box`` (clipped to the image; outside parts are the caller's padding)."""
        valid = tuple((max(0, a), min(s, b)) for (a, b), s in zip(box, self.shape))
        if any(a >= b for a, b in valid):
            empty = np.zeros((0,) * len(box) + (self.n_channels,), dtype=self.arr.dtype)
            return BlockData(box, valid, empty, [])
        keys = self._keys(box)
        with self._lock:
            tiles = {k: self._cache[k] for k in keys if k in self._cache}
            for k in tiles:
                self._cache.move_to_end(k)
            got = self._decode([k for k in keys if k not in tiles])
            tiles.update(got)
            for k, v in got.items():
                self._put(k, v)
            if self._uses is not None:  # drop tiles no planned read needs any more
                for k in keys:
                    n = self._uses.get(k, 0) - 1
                    self._uses[k] = n
                    if n <= 0 and k in self._cache:
                        old = self._cache.pop(k)
                        self._cached -= 0 if old is None else old.nbytes
        out = np.zeros(tuple(b - a for a, b in valid) + (self.n_channels,), dtype=self.arr.dtype)
        bad: list[tuple[Box, str]] = []
        for k in keys:
            tb = self.tile_box(k)
            inter = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(tb, valid))
            t = tiles.get(k)
            if t is None:
                bad.append((tb, self.bad_tiles.get(k, "unreadable")))
                continue
            src = tuple(slice(a - c, b - c) for (a, b), (c, _) in zip(inter, tb))
            dst = tuple(slice(a - c, b - c) for (a, b), (c, _) in zip(inter, valid))
            out[dst] = t[src]
        return BlockData(box, valid, out, bad)

    def _put(self, key: tuple[int, ...], val: np.ndarray | None) -> None:
        size = 0 if val is None else val.nbytes
        if size > self.cache_bytes:
            return
        self._cache[key] = val
        self._cached += size
        self._peak = max(self._peak, self._cached)
        while self._cached > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached -= 0 if old is None else old.nbytes

    def stats(self) -> dict[str, Any]:
        unique = len(self._seen)
        return {"tiles_decoded": self.decoded, "tiles_unique": unique, "cache_peak_mb": round(self._peak / 2**20, 1),
                "decode_ratio": round(self.decoded / unique, 3) if unique else 1.0,
                "tile": list(self.tile), "cache_mb": round(self.cache_bytes / 2**20, 1),
                "bad_tiles": len(self.bad_tiles)}


class ArrayReader:
    """Boxes of an array already in memory, ``(*spatial, C)`` (the live preview's region, read once with
    ``core.source.read_box``), through the interface the block engine reads a ``TileReader`` by."""

    def __init__(self, data: np.ndarray, level: int = 0) -> None:
        self.data, self.level = data, level
        self.shape = tuple(data.shape[:-1])

    def plan(self, boxes: Sequence[Box | None]) -> None:
        """Nothing to plan: every pixel is in memory."""

    def read(self, box: Box) -> BlockData:
        valid = tuple((min(max(0, a), s), max(min(max(0, a), s), min(s, b))) for (a, b), s in zip(box, self.shape))
        return BlockData(box, valid, np.ascontiguousarray(self.data[tuple(slice(a, b) for a, b in valid)]), [])

    def stats(self) -> dict[str, Any]:
        return {}


class Prefetcher:
    """Reads the boxes of upcoming blocks in one background thread, ``depth`` blocks ahead."""

    def __init__(self, reader: TileReader, boxes: Sequence[Box | None], depth: int = 1) -> None:
        self.reader, self.boxes, self.depth = reader, list(boxes), max(0, depth)
        reader.plan(self.boxes)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-prefetch")
        self._futures: dict[int, Future] = {}
        self._next = 0

    def _fill(self, upto: int) -> None:
        while self._next <= min(upto, len(self.boxes) - 1):
            box = self.boxes[self._next]
            if box is not None:
                self._futures[self._next] = self._pool.submit(self.reader.read, box)
            self._next += 1

    def get(self, i: int) -> BlockData | None:
        """The data of box ``i`` (waits for it), queueing the following ones."""
        self._fill(i + self.depth)
        fut = self._futures.pop(i, None)
        if fut is None:
            return None
        return fut.result()

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def boxes_overlap(a: Box, b: Box) -> bool:
    return all(max(x0, y0) < min(x1, y1) for (x0, x1), (y0, y1) in zip(a, b))


def mpix(box: Box) -> float:
    return math.prod(b - a for a, b in box) / 1e6
