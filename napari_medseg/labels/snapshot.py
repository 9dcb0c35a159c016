"""A consistent, in-memory snapshot of painted labels for a training run.

The user keeps painting while a model trains; training must see one consistent version of the labels and
pick up new strokes only at a refresh. ``LabelSnapshot.of_store`` takes the painted chunks of a
``LabelStore`` at one ``version`` without copying them (the store's chunks are read-only arrays that a write
replaces, never changes; the values per chunk come from its index), and a refresh from an earlier snapshot
looks up only the chunks changed since (``is_current`` tells whether anything changed at all).
``LabelSnapshot.of_array`` copies a dense array (a plain Labels layer: compare ``fingerprint()``s to see
whether it changed). Both expose the array-like protocol the training engine reads: ``shape``, ``ndim``,
``dtype``, ``chunks``, ``__getitem__``, ``painted_chunks()``, ``chunk_classes()``.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.grid import normalize_key
from napari_medseg.labels.index import value_counts
from napari_medseg.labels.store import LabelStore


class LabelSnapshot:
    """Painted chunks (grid index -> read-only block) and their value counts, frozen at one moment.

    ``version`` is the store's version it was taken at (None for a dense array).
    """

    def __init__(self, shape: Sequence[int], chunks: Sequence[int], blocks: dict[tuple[int, ...], np.ndarray],
                 classes: ClassSchema, counts: dict[tuple[int, ...], dict[int, int]] | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.chunks = tuple(int(c) for c in chunks)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8)
        self.classes = classes
        self.version: int | None = None
        self._store: weakref.ref[LabelStore] | None = None
        if counts is None:  # count what is painted in each block (a dense array's blocks)
            counts = {c: value_counts(b) for c, b in blocks.items() if b is not None}
        self._counts = {c: cnt for c, cnt in counts.items() if cnt and blocks.get(c) is not None}
        self._blocks = {c: blocks[c] for c in self._counts}
        self._classes = {c: frozenset(cnt) for c, cnt in self._counts.items()}

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def of_store(cls, store: LabelStore, since: LabelSnapshot | None = None) -> LabelSnapshot:
        """The store's painted labels now, sharing the store's read-only chunks (no copy). With ``since``
        (an earlier snapshot of this store) only the chunks changed after it are looked up."""
        reuse = since is not None and since._store is not None and since._store() is store
        version, blocks, counts = store.painted_blocks(since._blocks if reuse else None,
                                                       since.version if reuse else -1)
        if reuse:  # a chunk rewritten with the labels it had (a stroke undone) keeps the block ``since`` has
            for c, blk in blocks.items():
                old = since._blocks.get(c)
                if old is not None and old is not blk and old.shape == blk.shape and np.array_equal(old, blk):
                    blocks[c] = old
        snap = cls(store.shape, store.chunks, blocks, store.classes, counts)
        snap.version, snap._store = version, weakref.ref(store)
        return snap

    def is_current(self, store: LabelStore) -> bool:
        """True if this is a snapshot of ``store`` and nothing was written to it since (no reading, no hashing)."""
        return self._store is not None and self._store() is store and self.version == store.version

    def same_blocks(self, other: LabelSnapshot) -> bool:
        """True if both hold the very same chunk arrays (``of_store(store, other)`` with the same labels)."""
        return self._blocks.keys() == other._blocks.keys() and all(
            b is other._blocks[c] for c, b in self._blocks.items())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}  # a weak reference does not pickle

    @classmethod
    def of_array(cls, arr: Any, classes: ClassSchema, chunks: Sequence[int] | None = None) -> LabelSnapshot:
        a = np.asarray(arr)
        if a.dtype.kind not in "iub":
            raise MedsegError(f"labels must be integers, not {a.dtype}; paint with a Labels layer")
        chunks = tuple(chunks or ((256,) * a.ndim if a.ndim == 2 else (32, 128, 128)))
        blocks = {}
        grid = [range(0, s, c) for s, c in zip(a.shape, chunks)]
        for start in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, a.ndim):
            sl = tuple(slice(int(s), int(s) + c) for s, c in zip(start, chunks))
            b = a[sl]
            if b.any():
                blocks[tuple(int(s) // c for s, c in zip(start, chunks))] = b.astype(np.uint8, copy=True)
        return cls(a.shape, chunks, blocks, classes)

    # -- array-like protocol ----------------------------------------------------------------------------
    def painted_chunks(self) -> list[tuple[int, ...]]:
        return sorted(self._blocks)

    def chunk_classes(self) -> dict[tuple[int, ...], frozenset[int]]:
        return dict(self._classes)

    def chunk_region(self, chunk: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(chunk, self.chunks, self.shape))

    @property
    def n_painted(self) -> int:
        return int(sum(sum(cnt.values()) for cnt in self._counts.values()))

    def fingerprint(self) -> str:
        """A hash of every painted pixel: changes whenever one changes (for a Labels layer, which has no
        version; a store's snapshot is compared with ``is_current``)."""
        h = hashlib.blake2b(digest_size=16)
        for c in sorted(self._blocks):
            h.update(np.asarray(c, dtype=np.int64).tobytes())
            h.update(self._blocks[c].tobytes())
        return h.hexdigest()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[tuple(slice(0, s) for s in self.shape)].astype(dtype or np.uint8)

    def __getitem__(self, key: Any) -> np.ndarray:
        """numpy basic indexing (ints, slices with positive steps, Ellipsis): read the bounding box, then index it."""
        ranges, squeeze = normalize_key(key, self.shape)
        box = [slice(start, stop) for start, stop, _step in ranges]
        post = tuple(0 if ax in squeeze else slice(None, None, step) for ax, (_s, _e, step) in enumerate(ranges))
        return self._read_box(box)[post]

    def _read_box(self, sl: list[slice]) -> np.ndarray:
        out = np.zeros([s.stop - s.start for s in sl], dtype=np.uint8)
        if out.size == 0:
            return out
        lo = [s.start // c for s, c in zip(sl, self.chunks)]
        hi = [(s.stop - 1) // c for s, c in zip(sl, self.chunks)]
        for c, b in self._blocks.items():
            if any(ci < lo_ or ci > hi_ for ci, lo_, hi_ in zip(c, lo, hi)):
                continue
            src, dst = [], []
            for s, ci, ch, bs in zip(sl, c, self.chunks, b.shape):
                o = ci * ch
                a0, a1 = max(s.start, o), min(s.stop, o + bs)
                src.append(slice(a0 - o, a1 - o))
                dst.append(slice(a0 - s.start, a1 - s.start))
            out[tuple(dst)] = b[tuple(src)]
        return out
