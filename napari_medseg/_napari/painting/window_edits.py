"""What the user changed in the editable window, and the whole store chunks that save it (no Qt, no napari).

Edits are tracked exactly: the layer's array is a ``TrackedLabels``, whose ``__setitem__`` (the one door
napari's paint, fill, erase, polygon and undo/redo go through) reports the box it touched; the store chunks
under that box become dirty. Saving copies the dirty chunks and writes them whole (``WriteJob``, run by the
controller's single writer thread).

A coarse window (level ``k`` of the overview, each layer pixel a "cell" of ``F x F`` store pixels, see
``window_geometry``) is saved the same way, chunk by chunk, with one rule per cell:

- a cell whose value differs from the one it showed when the window was read is written as a block of
  ``F x F`` store pixels of its new value (a coarse stroke lands at full resolution);
- every other cell keeps the full-resolution pixels it had when the window was read. The first time a chunk
  is rewritten, its original content is kept (compressed, in memory, until the window moves), so a cell
  that goes back to the value it showed (undo, or repainting it) gets its fine detail back exactly.

The cells show the overview's value (the largest store value in the cell, as the overview does), so painting
a cell with the value it already shows leaves its full-resolution pixels as they are.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_medseg._napari.painting.window_geometry import Window, WindowGeometry
from napari_medseg.core.grid import Chunk, chunks_in_box
from napari_medseg.labels.chunks import pool_max

WRITE_BATCH_CHUNKS = 64  # chunks per store write when expanding coarse edits (bounds the memory of a big fill)
PAGE_BYTES = 4096
COMPARE_BLOCK_BYTES = 1 << 20


def resident(a: np.ndarray) -> np.ndarray:
    """``a`` with each of its memory pages written once, in the calling thread. A store read starts from
    ``np.zeros``, whose pages the kernel maps only when first touched; each first touch is a page fault
    (10-20 us on a VM: 50-80 ms for a 16 MB window), paid by whichever thread reads the page first. Done in
    the writer thread, the GUI thread's compares and texture uploads of a new window do not pay it."""
    if a.size and a.flags.c_contiguous:
        flat = a.reshape(-1)
        step = max(PAGE_BYTES // a.itemsize, 1)
        flat[::step] = flat[::step].copy()
    return a


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal`` in blocks of ~1 MB along the first axis: no window-sized temporary, whose fresh
    pages would cost the GUI thread as much as the comparison itself (see ``resident``)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.ndim == 0 or a.size == 0:
        return bool(np.array_equal(a, b))
    rows = max(1, COMPARE_BLOCK_BYTES // max(1, a[0].nbytes))
    return all(np.array_equal(a[i:i + rows], b[i:i + rows]) for i in range(0, a.shape[0], rows))


class TrackedLabels(np.ndarray):
    """A numpy array that reports every ``arr[key] = value`` on itself (not on views) to ``on_write``."""

    on_write: Callable[[Any], None] | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self.on_write = None  # views and copies are not tracked

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        cb = self.on_write
        if cb is not None:
            cb(key)


def touched_box(key: Any, shape: Sequence[int]) -> tuple[list[int], list[int]] | None:
    """The half-open box ``[lo, hi)`` an ``arr[key] = ...`` may have changed; None if nothing."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    key = tuple(key) + (slice(None),) * (len(shape) - len(key))
    lo, hi = [], []
    for k, s in zip(key, shape):
        if isinstance(k, slice):
            a, b, step = k.indices(s)
            if step < 0:
                a, b = b + 1, a + 1
            if b <= a:
                return None
            lo.append(a)
            hi.append(b)
        elif isinstance(k, (int, np.integer)):
            i = int(k) + s if k < 0 else int(k)
            lo.append(i)
            hi.append(i + 1)
        else:
            arr = np.asarray(k)
            if arr.dtype == bool or arr.size == 0:
                if arr.size == 0:
                    return None
                lo.append(0)
                hi.append(s)
            else:
                a = np.where(arr < 0, arr + s, arr)
                lo.append(int(a.min()))
                hi.append(int(a.max()) + 1)
    return lo, hi


class WriteJob:
    """Whole chunks to write, prepared on the GUI thread; ``run`` writes them (in the writer thread)."""

    def __init__(self, chunks: list[Chunk], block: Callable[[Chunk], np.ndarray]) -> None:
        self.chunks, self._block = chunks, block

    def run(self, store: Any, origin: Any) -> list[Chunk]:
        changed: list[Chunk] = []
        for i in range(0, len(self.chunks), WRITE_BATCH_CHUNKS):
            part = self.chunks[i:i + WRITE_BATCH_CHUNKS]
            changed += store.write_chunks({c: self._block(c) for c in part}, validated=True, origin=origin)
        return changed


class WindowEdits:
    """The editable window's content as read from the store and its unsaved edits (see module)."""

    def __init__(self, store: Any, geometry: WindowGeometry) -> None:
        self.store, self.geom = store, geometry
        self.window: Window = tuple(slice(0, 0) for _ in store.shape)
        self.level = 0
        self.dirty: set[Chunk] = set()
        self.loaded: np.ndarray | None = None  # coarse window: each cell's value when read
        self._originals: dict[Chunk, bytes | None] = {}  # coarse window: chunks before their first write
        self._lock = threading.Lock()

    @property
    def factor(self) -> tuple[int, ...]:
        return self.geom.factors[self.level]

    @property
    def origin(self) -> tuple[int, ...]:
        """The window's first cell (store pixel at level 0)."""
        return tuple(c.start for c in self.geom.cells(self.window, self.level))

    def read(self, window: Window, level: int) -> np.ndarray:
        """``window`` at ``level`` as the store holds it (no state changes: safe in the writer thread)."""
        if level == 0:
            return self.store.read(window)
        return np.asarray(self.store.level_array(level)[self.geom.cells(window, level)])

    def load(self, window: Window, level: int, data: np.ndarray | None = None,
             baseline: np.ndarray | None = None) -> np.ndarray:
        """Read ``window`` at ``level`` (the layer's new data; ``data``: already read) and track it afresh;
        ``baseline``: a copy of ``data`` made beforehand (a coarse window's cell values when read)."""
        data = self.read(window, level) if data is None else data
        with self._lock:
            self._originals = {}
        self.window, self.level, self.dirty = window, level, set()
        self.loaded = (data.copy() if baseline is None else baseline) if level else None
        return data

    # -- geometry helpers ---------------------------------------------------------------------------
    def _inside(self, c: Chunk) -> bool:
        return all(w.start <= g.start and g.stop <= w.stop for g, w in zip(self.store.chunk_region(c), self.window))

    def _cells_of(self, region: Window) -> tuple[slice, ...]:
        """The window's cells (local slices) covering a store region."""
        return tuple(slice(g.start // f - o, -(-g.stop // f) - o)
                     for g, f, o in zip(region, self.factor, self.origin))

    def mark(self, box: tuple[Sequence[int], Sequence[int]]) -> None:
        """Layer pixels ``[lo, hi)`` were written: their store chunks are dirty."""
        f, o = self.factor, self.origin
        lo = [(o_ + a) * ff for a, ff, o_ in zip(box[0], f, o)]
        hi = [min((o_ + b) * ff, s) for b, ff, o_, s in zip(box[1], f, o, self.store.shape)]
        self.dirty.update(chunks_in_box(lo, hi, self.store.chunks))

    # -- saving -------------------------------------------------------------------------------------
    def full_diff(self, data: np.ndarray) -> None:
        """Mark every window chunk that differs from the store (a safety net for edits made around the
        tracked door, e.g. in place on a view of the layer's array)."""
        if self.level:
            self._coarse_diff(data)
            return
        self.dirty.update(self.differing_chunks(data, self.window))

    def differing_chunks(self, data: np.ndarray, window: Window) -> set[Chunk]:
        """The store chunks where ``data`` (a full-resolution window) differs from the store (no state
        changes: safe in the writer thread)."""
        cur = self.store.read(window)
        if data.shape != cur.shape:
            return set()
        ch = self.store.chunks
        org = [w.start // c for w, c in zip(window, ch)]
        out = set()
        for c in chunks_in_box([0] * data.ndim, data.shape, ch):
            sl = tuple(slice(i * cc, (i + 1) * cc) for i, cc in zip(c, ch))
            if not np.array_equal(data[sl], cur[sl]):
                out.add(tuple(o + i for o, i in zip(org, c)))
        return out

    def _coarse_diff(self, data: np.ndarray) -> None:
        if self.loaded is None or data.shape != self.loaded.shape:
            return
        with self._lock:
            self.dirty.update(self._originals)  # rewritten before: they may have to go back
        if same(data, self.loaded):  # the common case, without a window-sized temporary
            return
        changed = data != self.loaded
        ch, f, o = self.store.chunks, self.factor, self.origin
        grids = []
        for a, w in enumerate(self.window):  # per axis: the cells each chunk of the window covers
            ks = np.arange(w.start // ch[a], (w.stop - 1) // ch[a] + 1)
            lo = ks * ch[a] // f[a] - o[a]
            hi = -(-np.minimum((ks + 1) * ch[a], self.store.shape[a]) // f[a]) - o[a]
            grids.append((ks, np.clip(lo, 0, data.shape[a]), np.clip(hi, 0, data.shape[a])))
        for a, (_, lo, hi) in enumerate(grids):  # any changed cell per chunk, one axis at a time
            cs = np.cumsum(changed, axis=a, dtype=np.int32)
            cs = np.concatenate([np.zeros_like(cs.take([0], axis=a)), cs], axis=a)
            changed = (cs.take(hi, axis=a) - cs.take(lo, axis=a)) > 0
        self.dirty.update(tuple(int(grids[a][0][i]) for a, i in enumerate(idx)) for idx in zip(*np.nonzero(changed)))

    def take(self, data: np.ndarray, top: int) -> tuple[WriteJob | None, set[int]]:
        """The dirty chunks as a write job, and the label values beyond ``top`` (the schema's largest store
        value) found: chunks holding them stay dirty, unsaved."""
        good, bad, bad_vals = [], set(), set()
        for c in self.dirty:
            if not self._inside(c):
                continue
            region = self.store.chunk_region(c)
            sub = data[self._local(region)] if not self.level else data[self._cells_of(region)]
            if sub.size and int(sub.max()) > top:
                bad.add(c)
                bad_vals.update(int(v) for v in np.unique(sub) if v > top)
            else:
                good.append(c)
        self.dirty = bad
        if not good:
            return None, bad_vals
        good.sort()
        if not self.level:
            blocks = {c: np.array(data[self._local(self.store.chunk_region(c))]) for c in good}
            return WriteJob(good, blocks.__getitem__), bad_vals
        return self._coarse_job(good, data), bad_vals

    def _local(self, region: Window) -> tuple[slice, ...]:
        return tuple(slice(g.start - w.start, g.stop - w.start) for g, w in zip(region, self.window))

    def _coarse_job(self, chunks: list[Chunk], data: np.ndarray) -> WriteJob:
        boxes = [self._cells_of(self.store.chunk_region(c)) for c in chunks]
        lo = [min(b[a].start for b in boxes) for a in range(data.ndim)]
        hi = [max(b[a].stop for b in boxes) for a in range(data.ndim)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        now, was = np.array(data[box]), np.array(self.loaded[box])  # snapshots: painting goes on meanwhile
        first = tuple(o + a for o, a in zip(self.origin, lo))
        factor, originals = self.factor, self._originals

        def block(c: Chunk) -> np.ndarray:
            region = self.store.chunk_region(c)
            cells = tuple(slice(g.start // f - s, -(-g.stop // f) - s) for g, f, s in zip(region, factor, first))
            new, changed = now[cells], now[cells] != was[cells]
            base = self._original(c, region, originals)  # kept even when every cell changed: for undo
            shape = tuple(g.stop - g.start for g in region)
            if not changed.any():
                return np.zeros(shape, np.uint8) if base is None else base.copy()
            if changed.all() and (new == new.flat[0]).all():
                return np.full(shape, new.flat[0], np.uint8)
            for ax, (g, f) in enumerate(zip(region, factor)):  # cells -> store pixels, cropped to the chunk
                crop = slice(g.start - g.start // f * f, g.start - g.start // f * f + g.stop - g.start)
                new = np.repeat(new, f, axis=ax)[(slice(None),) * ax + (crop,)]
                changed = np.repeat(changed, f, axis=ax)[(slice(None),) * ax + (crop,)]
            return np.where(changed, new, 0 if base is None else base).astype(np.uint8)

        return WriteJob(chunks, block)

    def _original(self, c: Chunk, region: Window, originals: dict[Chunk, bytes | None]) -> np.ndarray | None:
        """Chunk ``c`` as it was before this window first rewrote it (read now if it was not yet)."""
        with self._lock:
            if c in originals:
                packed = originals[c]
                if packed is None:
                    return None
                shape = tuple(g.stop - g.start for g in region)
                return np.frombuffer(zlib.decompress(packed), np.uint8).reshape(shape)
        blk = self.store.read(region)
        with self._lock:
            originals.setdefault(c, zlib.compress(blk.tobytes(), 1) if blk.any() else None)
        return blk if blk.any() else None

    # -- someone else wrote the store -------------------------------------------------------------------
    def apply_external(self, chunks: Sequence[Chunk], data: np.ndarray) -> bool:
        """Re-read chunks written by someone else into ``data`` (a plain view of the layer's array: these
        writes are not edits). Unsaved strokes win where they painted. True if the window changed."""
        touched = False
        for c in chunks:
            if not self._inside(c):
                continue
            region = self.store.chunk_region(c)
            if self.level:
                cs = self._cells_of(region)
                full = tuple(slice((o + s.start) * f, min((o + s.stop) * f, n))
                             for s, f, o, n in zip(cs, self.factor, self.origin, self.store.shape))
                new = pool_max(self.store.read(full), self.factor)
                edited = data[cs] != self.loaded[cs]
                data[cs] = np.where(edited, data[cs], new)
                self.loaded[cs] = new
                with self._lock:
                    self._originals.pop(c, None)  # the store's new content is this chunk's baseline now
            else:
                loc = self._local(region)
                cur = self.store.read(region)
                if c in self.dirty:
                    cur = np.where(data[loc] != 0, data[loc], cur)
                data[loc] = cur
            touched = True
        return touched
