"""Training data and the patch sampler over lazy images and label stores.

``TrainingData(items=[TrainingItem(image, labels, dense_mask)], classes)``: ``image`` is an ``ImageSource``
(pyramid levels, axes ``YX``/``YXC``/``ZYX``/``CZYX``); ``labels`` any array-like in the image's level-0
spatial geometry (a numpy array, a zarr array, a ``LabelStore``) with store values 0 = not annotated,
1 = background, 2.. = classes, or ``None`` for an image used only as unlabelled data; ``dense_mask`` an
optional complete mask in prediction values (0 = background, k = class k) used to score validation
(Dice and HD95). The sampler (``PatchSampler``) is in ``sampler.py``; this module holds the data types,
the per-item geometry and the reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.compute import compute
from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.source import SPATIAL_AXES, ImageSource

log = logging.getLogger(__name__)


@dataclass
class TrainingItem:
    image: ImageSource
    labels: Any | None = None
    dense_mask: Any | None = None
    name: str | None = None  # a stable name (keeps the validation subset the same across rounds)
    # "source" (default) or "target": an unlabelled image of the domain to adapt to (training/domain.py)
    domain: str = "source"

    @property
    def key(self) -> str:
        return self.name or self.image.path or self.image.name


@dataclass
class TrainingData:
    items: list[TrainingItem]
    classes: ClassSchema = field(default_factory=ClassSchema)

    def __post_init__(self) -> None:
        self.items = list(self.items)
        if not self.items:
            raise MedsegError("no training images were given; add at least one image with painted labels")

    @property
    def spatial_dims(self) -> int:
        return self.items[0].image.spatial_dims

    @property
    def n_channels(self) -> int:
        return self.items[0].image.n_channels

    def validate(self) -> None:
        """Raise a clear ``MedsegError`` if the items cannot be trained on together."""
        first = self.items[0].image
        for it in self.items:
            img = it.image
            if it.domain not in ("source", "target"):
                raise MedsegError(f"'{it.key}': domain must be 'source' or 'target', got {it.domain!r}")
            if it.domain == "target" and (it.labels is not None or it.dense_mask is not None):
                raise MedsegError(f"'{it.key}' is a target-domain image: those are unlabelled (domain "
                                  "adaptation learns from their pixels only); give it without labels")
            if img.spatial_dims != first.spatial_dims:
                raise MedsegError(f"images '{first.name}' ({first.axes}) and '{img.name}' ({img.axes}) mix 2D "
                                  "and 3D; train on one kind at a time")
            if img.n_channels != first.n_channels:
                raise MedsegError(f"images '{first.name}' and '{img.name}' have {first.n_channels} and "
                                  f"{img.n_channels} channels; all training images need the same channels")
            for what, arr in (("labels", it.labels), ("dense mask", it.dense_mask)):
                if arr is None:
                    continue
                arr = as_label_array(arr)
                shape = tuple(int(s) for s in arr.shape)
                if shape != img.shape:
                    raise GeometryMismatchError(
                        f"the {what} of '{it.key}' have shape {shape} but the image's level 0 is {img.shape} "
                        f"({img.spatial_axes}); labels must be painted in the image's full-resolution geometry")


def as_label_array(labels: Any) -> Any:
    """The array behind labels given as an array-like or a labels ``ImageSource`` (its level 0)."""
    if isinstance(labels, ImageSource):
        return labels.levels[0]
    return labels


def read(arr: Any, index: tuple) -> np.ndarray:
    """Read ``arr[index]`` into numpy (dask arrays computed in this thread, no scheduler pool)."""
    return np.asarray(compute(arr[index]))


class ItemView:
    """One item at the training level: reads image windows ``(C, *P)`` and label windows ``(*P)``.

    Windows are given by their start in level coordinates (may be negative or run past the end: the outside is
    padded, images by reflection, labels with 0 = not annotated). Labels stay in level-0 geometry and are
    sampled nearest at the level's pixel centres.
    """

    def __init__(self, index: int, item: TrainingItem, level: int) -> None:
        src = item.image
        self.index = index
        self.item = item
        self.key = item.key
        self.level = level
        self.arr = src.levels[level]
        self.axes = src.axes
        self.shape0 = src.shape
        self.shape = src.level_shape(level)
        self.factor = src.level_downsample(level)
        self.spacing = src.level_pixel_size(level)
        self.labels = None if item.labels is None else as_label_array(item.labels)
        self.dense = None if item.dense_mask is None else as_label_array(item.dense_mask)
        self.ndim = len(self.shape)
        self.is_float = np.dtype(src.dtype).kind == "f"

    # -- images --------------------------------------------------------------------------------------
    def read_image(self, start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
        lo = [max(0, s) for s in start]
        hi = [min(n, s + p) for s, p, n in zip(start, size, self.shape)]
        sp = iter(zip(lo, hi))
        index = tuple(slice(*next(sp)) if a in SPATIAL_AXES else slice(None) for a in self.axes)
        block = read(self.arr, index)
        if "C" in self.axes:
            block = np.moveaxis(block, self.axes.index("C"), 0)
        else:
            block = block[None]
        pads = [(0, 0)] + [(a - s, s + p - b) for s, p, a, b in zip(start, size, lo, hi)]
        if any(p != (0, 0) for p in pads):
            mode = "reflect" if min(block.shape[1:]) >= 2 else "edge"
            block = np.pad(block, pads, mode=mode)
        return np.ascontiguousarray(block)

    # -- labels --------------------------------------------------------------------------------------
    def level0_index(self, start: tuple[int, ...], size: tuple[int, ...]) -> list[np.ndarray]:
        """Level-0 index per axis of each window position (-1 outside the image)."""
        out = []
        for s, p, f, n_l, n0 in zip(start, size, self.factor, self.shape, self.shape0):
            pos = s + np.arange(p)
            idx = pos if f == 1.0 else np.floor((pos + 0.5) * f).astype(np.int64)
            idx = np.where((pos >= 0) & (pos < n_l) & (idx < n0), idx, -1)
            out.append(idx)
        return out

    def read_level0(self, arr: Any, idx: list[np.ndarray], dtype=np.uint8) -> np.ndarray:
        """Nearest read of a level-0 array at per-axis indices ``idx`` (from ``level0_index``); outside = 0."""
        out = np.zeros(tuple(len(i) for i in idx), dtype=dtype)
        valid = [np.flatnonzero(i >= 0) for i in idx]
        if any(v.size == 0 for v in valid):
            return out
        sel = [i[v] for i, v in zip(idx, valid)]
        lo = [int(s[0]) for s in sel]
        hi = [int(s[-1]) + 1 for s in sel]
        region = read(arr, tuple(slice(a, b) for a, b in zip(lo, hi)))
        if region.dtype.kind == "b":
            region = region.view(np.uint8)
        sub = region[np.ix_(*[s - a for s, a in zip(sel, lo)])]
        out[tuple(slice(int(v[0]), int(v[-1]) + 1) for v in valid)] = sub
        return out

    def read_labels(self, start: tuple[int, ...], size: tuple[int, ...], max_value: int,
                    val_blocks: set[tuple[int, ...]] | None = None, block: tuple[int, ...] | None = None,
                    only_block: tuple[int, ...] | None = None) -> np.ndarray:
        """Store values ``(*size)``; values above ``max_value`` and pixels of held-out blocks become 0.

        ``only_block``: keep only the pixels of that validation block (used to score it).
        """
        idx = self.level0_index(start, size)
        lab = self.read_level0(self.labels, idx)
        if max_value < 255:
            lab[lab > max_value] = 0
        if block is not None and (val_blocks or only_block is not None):
            bidx = [np.where(i >= 0, i // b, -1) for i, b in zip(idx, block)]
            if only_block is not None:
                keep = np.ones(lab.shape, dtype=bool)
                for ax, (bi, b) in enumerate(zip(bidx, only_block)):
                    shape = [1] * lab.ndim
                    shape[ax] = -1
                    keep &= (bi == b).reshape(shape)
                lab[~keep] = 0
            else:
                cands = [np.unique(bi[bi >= 0]) for bi in bidx]
                for b in np.array(np.meshgrid(*cands, indexing="ij")).reshape(len(cands), -1).T:
                    if tuple(int(v) for v in b) in val_blocks:  # type: ignore[operator]
                        m = np.ones(lab.shape, dtype=bool)
                        for ax, (bi, bv) in enumerate(zip(bidx, b)):
                            shape = [1] * lab.ndim
                            shape[ax] = -1
                            m &= (bi == bv).reshape(shape)
                        lab[m] = 0
        return lab

    def read_dense(self, start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
        return self.read_level0(self.dense, self.level0_index(start, size))


def scan_painted(labels: Any, max_value: int, cap: int, rng: np.random.Generator, name: str,
                 totals: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """Level-0 coordinates ``(N, ndim)`` of painted pixels per store value (at most ``cap`` per block and value);
    ``totals``, if given, gets every painted pixel counted per value (before the cap).

    Uses ``painted_chunks()`` of a label store to visit only chunks that hold paint; numpy arrays are scanned
    whole, other arrays block by block. Raises ``MedsegError`` for values above ``max_value`` or below 0.
    """
    found: dict[int, list[np.ndarray]] = {}
    bad: set[int] = set()
    for offset, block in _blocks(labels):
        if block.dtype.kind == "b":
            block = block.view(np.uint8)
        if block.dtype.kind == "f":
            if not np.all(np.isfinite(block)) or np.any(block != np.round(block)):
                raise MedsegError(f"the labels of '{name}' hold non-integer values; labels must be whole numbers "
                                  "0 (not annotated), 1 (background), 2.. (classes)")
            block = block.astype(np.int64)
        if block.dtype.kind == "i" and block.size and block.min() < 0:
            raise MedsegError(f"the labels of '{name}' hold negative values; use 0 (not annotated), "
                              "1 (background), 2.. (classes)")
        flat = block.ravel()
        counts = np.bincount(flat.astype(np.int64, copy=False)) if flat.size else np.zeros(1, np.int64)
        present = np.flatnonzero(counts)
        bad.update(int(v) for v in present if v > max_value)
        for v in present:
            if v == 0 or v > max_value:
                continue
            if totals is not None:
                totals[int(v)] = totals.get(int(v), 0) + int(counts[v])
            pos = np.flatnonzero(flat == v)
            if pos.size > cap:
                pos = rng.choice(pos, cap, replace=False)
            coords = np.stack(np.unravel_index(pos, block.shape), axis=1) + np.asarray(offset)
            found.setdefault(int(v), []).append(coords.astype(np.int64))
    if bad:
        raise MedsegError(
            f"the labels of '{name}' hold values {sorted(bad)[:8]} beyond the {max_value - 1} classes of the schema "
            f"(store values 1..{max_value}); add those classes to the schema or erase that paint")
    return {v: np.concatenate(c) for v, c in found.items()}


def _chunk_shape(arr: Any, ndim: int) -> tuple[int, ...]:
    ch = getattr(arr, "chunks", None)
    if isinstance(ch, tuple) and len(ch) == ndim and all(isinstance(c, (int, np.integer)) for c in ch):
        return tuple(int(c) for c in ch)
    cs = getattr(arr, "chunksize", None)  # dask
    if isinstance(cs, tuple) and len(cs) == ndim:
        return tuple(int(c) for c in cs)
    return (128,) * ndim if ndim == 3 else (1024,) * ndim


def _blocks(labels: Any):
    shape = tuple(int(s) for s in labels.shape)
    ndim = len(shape)
    if hasattr(labels, "painted_chunks"):
        chunks = _chunk_shape(labels, ndim)
        for cidx in labels.painted_chunks():
            off = tuple(int(c) * s for c, s in zip(cidx, chunks))
            sl = tuple(slice(o, min(o + s, n)) for o, s, n in zip(off, chunks, shape))
            yield off, read(labels, sl)
        return
    if isinstance(labels, np.ndarray) and labels.size <= 1 << 26:
        yield (0,) * ndim, labels
        return
    chunks = _chunk_shape(labels, ndim)
    # group chunks into blocks of about 16 M elements
    mult = [1] * ndim
    while np.prod([c * m for c, m in zip(chunks, mult)]) < (1 << 24) and any(
            c * m < n for c, m, n in zip(chunks, mult, shape)):
        ax = int(np.argmin([c * m / n for c, m, n in zip(chunks, mult, shape)]))
        mult[ax] *= 2
    step = [c * m for c, m in zip(chunks, mult)]
    for off in np.ndindex(*[-(-n // s) for n, s in zip(shape, step)]):
        o = tuple(i * s for i, s in zip(off, step))
        sl = tuple(slice(a, min(a + s, n)) for a, s, n in zip(o, step, shape))
        yield o, read(labels, sl)


def tissue_mask(src: ImageSource) -> tuple[np.ndarray, tuple[int, ...], tuple[float, ...]] | None:
    """Tissue pixels of a brightfield slide (``core.tissue.compute_tissue_mask``, the mask prediction uses):
    ``(flat indices, mask shape, factor to level 0)``; ``None`` if not a slide or the mask is (almost) empty or
    full, in which case the whole image counts."""
    if src.spatial_dims != 2 or not (src.rgb or src.modality == "brightfield") or src.n_channels < 3:
        return None
    try:
        from napari_medseg.core.tissue import compute_tissue_mask

        tm = compute_tissue_mask(src)
    except Exception as e:  # no mask is no reason to stop training: sample everywhere
        log.info("no tissue mask for %s (%s); sampling unlabelled patches everywhere", src.name, e)
        return None
    if not 0.005 <= tm.fraction <= 0.98:
        return None
    return np.flatnonzero(tm.mask.ravel()), tuple(tm.mask.shape), tuple(tm.downsample)
