"""Chunk IO of the label store (pure: no napari, no Qt): decoded chunks in memory, on disk, and the pyramid.

``ChunkIO`` holds the decoded-chunk LRU cache (every cached chunk is read-only, so it can be shared without
a copy), the chunks that could not be saved yet (``unsaved``: a folder that takes no writes), whole-chunk
reads and writes of the level arrays (``format.ChunkFiles``, atomic), ``read_level`` (numpy basic indexing of
any pyramid level, reading painted chunks only: it asks the ``index.LabelIndex`` what is painted) and the
overview pyramid: its geometry (``pyramid_geometry``) and max-pooling (``pool_max``, so no stroke vanishes
at low zoom). ``LevelArray`` is the array-like view of one level (for dask and napari), optionally blank
under a window. Nothing here knows the ``LabelStore`` class.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.errors import GeometryMismatchError
from napari_medseg.core.grid import Chunk, chunk_slices, chunks_in_box, grid_shape, normalize_key, parents
from napari_medseg.labels.format import chunk_files
from napari_medseg.labels.index import LabelIndex

log = logging.getLogger(__name__)

CACHE_BYTES = 96 * 2**20  # decoded chunks kept in memory (LRU), per store


# -- overview pyramid ------------------------------------------------------------------------------
def pyramid_geometry(shape: Sequence[int], chunks: Sequence[int], coarsest: int = 1024
                     ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Level shapes and per-level downsampling factors (vs the previous level) of the overview.

    Each level halves every axis still larger than its chunk, until the largest axis is at most
    ``coarsest`` pixels. Level 0 has factor 1 everywhere.
    """
    shapes = [tuple(int(s) for s in shape)]
    factors = [tuple(1 for _ in shape)]
    while max(shapes[-1]) > coarsest:
        f = tuple(2 if s > c else 1 for s, c in zip(shapes[-1], chunks))
        if all(x == 1 for x in f):
            break
        shapes.append(tuple(math.ceil(s / x) for s, x in zip(shapes[-1], f)))
        factors.append(f)
    return shapes, factors


def cumulative_factors(factors: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Downsampling of every level against level 0."""
    out, acc = [], None
    for f in factors:
        acc = tuple(f) if acc is None else tuple(a * b for a, b in zip(acc, f))
        out.append(acc)
    return out


def pool_max(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Downsample a label block by ``factors`` per axis keeping the largest value of each cell: a painted
    pixel never disappears at a coarser level (0 = not annotated loses against every class)."""
    if all(f == 1 for f in factors):
        return block
    pad = [(0, (-s) % f) for s, f in zip(block.shape, factors)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad)
    # elementwise maximum of the strided sub-grids: much faster than a reshape + max over small axes
    out = None
    for offs in itertools.product(*[range(f) for f in factors]):
        view = block[tuple(slice(o, None, f) for o, f in zip(offs, factors))]
        out = view.copy() if out is None else np.maximum(out, view, out=out)
    return out


class ChunkIO:
    """Whole chunks of every pyramid level: cached, unsaved, on disk. Thread-safe (``index.lock``).

    ``level_shapes`` and ``index`` (its ``level_factors``) come from ``pyramid_geometry``; ``arrays`` are the
    zarr level arrays (None: in memory only); ``path`` is the store folder.
    """

    def __init__(self, level_shapes: Sequence[Sequence[int]], chunks: Sequence[int], index: LabelIndex, *,
                 arrays: list[Any] | None = None, path: Path | None = None, disk_ok: bool = False) -> None:
        self.chunks = tuple(int(c) for c in chunks)
        self.level_shapes = [tuple(int(s) for s in ls) for ls in level_shapes]
        self.level_factors = index.level_factors
        self.cumulative = cumulative_factors(self.level_factors)
        self.index = index
        self.lock = index.lock
        self.stats: dict[str, Any] = {"chunks_written": 0, "chunks_deleted": 0, "empty_chunk_writes": 0,
                                      "batches": 0, "write_s": 0.0}
        self.unsaved: dict[tuple[int, Chunk], np.ndarray | None] = {}
        self._cache: OrderedDict[tuple[int, Chunk], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self.not_saved_reason: str | None = None
        self.attach(arrays, path, disk_ok)

    def attach(self, arrays: list[Any] | None, path: Path | None, disk_ok: bool) -> None:
        """Use these level arrays (None: memory only) in ``path``; ``disk_ok``: writes go to disk."""
        self.arrays = arrays
        self.path = path
        self.files = chunk_files(arrays, path)
        self.disk_ok = arrays is not None and disk_ok

    # -- chunks ---------------------------------------------------------------------------------------
    def get_chunk(self, level: int, c: Chunk) -> np.ndarray | None:
        """The current content of a chunk (read-only array, shared) or None when nothing is painted in it."""
        key = (level, c)
        with self.lock:
            if key in self.unsaved:
                return self.unsaved[key]
            if c not in self.index.painted[level]:
                return None
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            if self.arrays is None:
                return None
            blk = self.read_disk(level, c)
            if blk is not None:
                self._cache_put(key, blk)
            return blk

    def read_disk(self, level: int, c: Chunk) -> np.ndarray | None:
        """Chunk ``c`` of ``level`` as stored on disk (``UnreadableInputError`` if its file is damaged)."""
        sl = chunk_slices(c, self.level_shapes[level], self.chunks)
        files = self.files[level] if self.files else None
        if files is not None:
            return files.read(c, [s.stop - s.start for s in sl])
        return np.asarray(self.arrays[level][sl])  # type: ignore[index]

    def _cache_put(self, key: tuple[int, Chunk], blk: np.ndarray | None) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= old.nbytes
        if blk is None:
            return
        blk.flags.writeable = False
        self._cache[key] = blk
        self._cache_bytes += blk.nbytes
        while self._cache_bytes > CACHE_BYTES and self._cache:
            _k, v = self._cache.popitem(last=False)
            self._cache_bytes -= v.nbytes

    def clear_cache(self) -> None:
        with self.lock:
            self._cache.clear()
            self._cache_bytes = 0

    def put_chunk(self, level: int, c: Chunk, blk: np.ndarray | None) -> None:
        """Store one whole chunk (``None`` or all zeros: delete it). Never writes an empty chunk. A disk
        that fails keeps the chunk in ``unsaved`` (``go_memory``)."""
        empty = blk is None or not blk.any()
        blk = None if empty else np.array(blk, dtype=np.uint8, order="C")  # our own copy: it is cached
        key = (level, c)
        on_disk = False
        if self.disk_ok:
            try:
                if empty:
                    self._delete_chunk_file(level, c)
                else:
                    files = self.files[level] if self.files else None
                    if files is not None:
                        files.write(c, blk)
                    else:
                        self.arrays[level][chunk_slices(c, self.level_shapes[level], self.chunks)] = blk  # type: ignore[index]
                    self.stats["chunks_written"] += 1
                on_disk = True
            except OSError as e:
                self.go_memory(e)
        with self.lock:
            if on_disk:
                self.unsaved.pop(key, None)
            else:
                self.unsaved[key] = blk
            self._cache_put(key, blk)
            if empty:
                self.index.painted[level].discard(c)
            else:
                self.index.painted[level].add(c)

    def _delete_chunk_file(self, level: int, c: Chunk) -> None:
        assert self.path is not None
        f = self.path / str(level) / Path(*[str(i) for i in c])
        try:
            f.unlink()
            self.stats["chunks_deleted"] += 1
        except FileNotFoundError:
            pass

    def go_memory(self, err: OSError) -> None:
        """The disk failed: keep every further chunk in memory and say why (``not_saved_reason``)."""
        self.disk_ok = False
        self.not_saved_reason = (
            f"label store {self.path} cannot be written ({err.strerror or err}); your labels are kept in "
            "memory: choose another folder to save them.")
        log.error(self.not_saved_reason)

    def unsaved_count(self) -> int:
        """Level-0 chunks held in memory only."""
        with self.lock:
            return sum(1 for (lvl, _c) in self.unsaved if lvl == 0)

    def save_unsaved(self) -> None:
        """Write the in-memory chunks to disk (the folder became writable again), coarsest level last."""
        for (lvl, c), blk in sorted(dict(self.unsaved).items(), key=lambda kv: kv[0][0]):
            self.put_chunk(lvl, c, blk)

    # -- reading --------------------------------------------------------------------------------------
    def read_level(self, level: int, key: Any) -> np.ndarray:
        """Numpy basic indexing of pyramid level ``level``: a new uint8 array, zeros where nothing is painted."""
        shape = self.level_shapes[level]
        ranges, squeeze = normalize_key(key, shape)
        out_shape = tuple(len(range(*r)) for r in ranges)
        out = np.zeros(out_shape, dtype=np.uint8)
        if 0 in out_shape:
            return out.squeeze(axis=tuple(squeeze)) if squeeze else out
        lo = [r[0] for r in ranges]
        hi = [r[0] + (n - 1) * r[2] + 1 for r, n in zip(ranges, out_shape)]
        with self.lock:
            painted = self.index.painted[level]
            n_box = int(np.prod([(h - 1) // c - lo_ // c + 1 for lo_, h, c in zip(lo, hi, self.chunks)]))
            if len(painted) < n_box:
                cand = [c for c in painted
                        if all(lo_ // ch <= i <= (h - 1) // ch for i, lo_, h, ch in zip(c, lo, hi, self.chunks))]
            else:
                cand = [c for c in chunks_in_box(lo, hi, self.chunks) if c in painted]
        for c in cand:
            dst, src = [], []
            for (start, _stop, step), n, i, ch in zip(ranges, out_shape, c, self.chunks):
                c0, c1 = i * ch, (i + 1) * ch
                i_lo = max(0, -(-(c0 - start) // step))
                i_hi = min(n, -(-(c1 - start) // step))
                if i_lo >= i_hi:
                    break
                g0 = start + i_lo * step - c0
                dst.append(slice(i_lo, i_hi))
                src.append(slice(g0, g0 + (i_hi - i_lo - 1) * step + 1, step))
            else:
                blk = self.get_chunk(level, c)
                if blk is not None:
                    out[tuple(dst)] = blk[tuple(src)]
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out

    # -- writing --------------------------------------------------------------------------------------
    def check_blocks(self, blocks: dict[Chunk, np.ndarray]) -> None:
        """Raise ``GeometryMismatchError`` unless every block is a whole level-0 chunk of the grid."""
        grid = grid_shape(self.level_shapes[0], self.chunks)
        for c, blk in blocks.items():
            want = tuple(s.stop - s.start for s in chunk_slices(c, self.level_shapes[0], self.chunks))
            if len(c) != len(grid) or any(i < 0 or i >= g for i, g in zip(c, grid)) or blk.shape != want:
                raise GeometryMismatchError(f"chunk {c}: block of shape {blk.shape} does not match {want}")

    def merge_region(self, lo: Sequence[int], hi: Sequence[int], data: np.ndarray) -> dict[Chunk, np.ndarray]:
        """Whole level-0 chunks (new arrays) holding ``data`` in the box ``[lo, hi)`` over their current content."""
        shape = self.level_shapes[0]
        blocks: dict[Chunk, np.ndarray] = {}
        for c in chunks_in_box(lo, hi, self.chunks):
            cs = chunk_slices(c, shape, self.chunks)
            a = [max(s.start, lo_) for s, lo_ in zip(cs, lo)]
            b = [min(s.stop, h) for s, h in zip(cs, hi)]
            src = tuple(slice(x - lo_, y - lo_) for x, y, lo_ in zip(a, b, lo))
            if all(x == s.start and y == s.stop for x, y, s in zip(a, b, cs)):
                blocks[c] = np.array(data[src], dtype=np.uint8)
                continue
            cur = self.get_chunk(0, c)
            blk = np.zeros([s.stop - s.start for s in cs], np.uint8) if cur is None else cur.copy()
            blk[tuple(slice(x - s.start, y - s.start) for x, y, s in zip(a, b, cs))] = data[src]
            blocks[c] = blk
        return blocks

    def update_overview(self, dirty: set[Chunk]) -> None:
        """Recompute the overview chunks above ``dirty`` level-0 chunks, level by level (whole chunks)."""
        for k in range(1, len(self.level_shapes)):
            f = self.level_factors[k]
            dirty = parents(dirty, f)
            prev_shape = self.level_shapes[k - 1]
            for j in sorted(dirty):
                src = tuple(slice(i * c * ff, min((i + 1) * c * ff, s))
                            for i, c, ff, s in zip(j, self.chunks, f, prev_shape))
                self.put_chunk(k, j, pool_max(self.read_level(k - 1, src), f))


class LevelArray:
    """Array-like view (``shape``, ``dtype``, ``ndim``, ``__getitem__``) of one pyramid level of a ``ChunkIO``.

    ``blank`` (optional) returns a level-0 box (slices) or None: the level's pixels entirely inside that box
    read as 0 (the painting GUI's overview, blank under the editable window that shows the live labels).
    """

    def __init__(self, io: ChunkIO, level: int, blank: Callable[[], tuple[slice, ...] | None] | None = None) -> None:
        self.io = io
        self.level = level
        self.blank = blank
        self.shape = io.level_shapes[level]
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self.chunks = io.chunks

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.io.read_level(self.level, key)
        win = self.blank() if self.blank is not None else None
        if win is None:
            return out
        ranges, squeeze = normalize_key(key, self.shape)
        full = self.io.level_shapes[0]
        sel = []
        for ax, ((start, stop, step), w, f) in enumerate(zip(ranges, win, self.io.cumulative[self.level])):
            wlo, whi = -(-w.start // f), w.stop // f  # level pixels entirely inside the window
            if w.stop >= full[ax]:
                whi = -(-w.stop // f)  # the window reaches the store's edge: so does its last pixel
            i0 = max(0, -(-(wlo - start) // step))
            i1 = max(i0, min(len(range(start, stop, step)), -(-(whi - start) // step)))
            sel.append(slice(i0, i1))
        view = out
        if squeeze:
            view = out.reshape([1 if ax in squeeze else len(range(*r)) for ax, r in enumerate(ranges)])
        view[tuple(sel)] = 0
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]
