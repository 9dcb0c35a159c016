"""A consistent, in-memory snapshot of painted labels for a training run.

The user keeps painting while a model trains; training must see one consistent version of the labels and
pick up new strokes only at a refresh. ``LabelSnapshot.of_store`` copies the painted chunks of a
``LabelStore`` (sparse: empty space costs nothing); ``LabelSnapshot.of_array`` copies a dense array (a
plain Labels layer). Both expose the array-like protocol the training engine reads: ``shape``, ``ndim``,
``dtype``, ``chunks``, ``__getitem__``, ``painted_chunks()``, ``chunk_classes()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medseg.core.classes import ClassSchema


class LabelSnapshot:
    def __init__(self, shape: Sequence[int], chunks: Sequence[int], blocks: dict[tuple[int, ...], np.ndarray],
                 classes: ClassSchema) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.chunks = tuple(int(c) for c in chunks)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8)
        self.classes = classes
        self._blocks = {c: b for c, b in blocks.items() if b is not None and b.any()}
        self._classes = {c: frozenset(int(v) for v in np.unique(b) if v) for c, b in self._blocks.items()}

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def of_store(cls, store: Any) -> LabelSnapshot:
        blocks = {}
        for c in store.painted_chunks():
            blocks[tuple(c)] = np.array(store.read(store.chunk_region(c)), dtype=np.uint8, copy=True)
        return cls(store.shape, store.chunks, blocks, store.classes)

    @classmethod
    def of_array(cls, arr: Any, classes: ClassSchema, chunks: Sequence[int] | None = None) -> LabelSnapshot:
        a = np.asarray(arr)
        if a.dtype.kind not in "iub":
            from napari_medseg.core.errors import MedsegError

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
        return int(sum(int((b > 0).sum()) for b in self._blocks.values()))

    def fingerprint(self) -> str:
        """Changes whenever any painted pixel changes (used to tell whether a refresh is needed)."""
        h = hashlib.blake2b(digest_size=16)
        for c in sorted(self._blocks):
            h.update(np.asarray(c, dtype=np.int64).tobytes())
            h.update(self._blocks[c].tobytes())
        return h.hexdigest()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[tuple(slice(0, s) for s in self.shape)].astype(dtype or np.uint8)

    def __getitem__(self, key: Any) -> np.ndarray:
        """numpy semantics for ints and slices (any step): read the bounding box, then index it."""
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        box, post = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of range for size {n}")
                box.append(slice(k, k + 1))
                post.append(0)
            else:
                start, stop, step = k.indices(n)
                if step < 0:
                    raise IndexError("negative steps are not supported")
                box.append(slice(start, max(start, stop)))
                post.append(slice(None, None, step))
        return self._read_box(box)[tuple(post)]

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
