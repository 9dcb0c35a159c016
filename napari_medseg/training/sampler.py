"""``PatchSampler``: labelled patches centred on painted pixels (balanced across classes), unlabelled
patches from the rest of the images (tissue only on slides) and from images with no paint, and a fixed
validation subset of painted pixels.

The validation subset: level-0 space is cut into blocks one patch wide; a block holding paint is held out
when a hash of (seed, item name, block) falls below ``val_fraction``. The choice depends on nothing else, so
every earlier held-out pixel stays held out in later rounds (same seed, names and block size, which the
checkpoint records and ``train`` reuses), and training patches never see held-out paint (it reads as 0).
Arrays: image patches ``(C, *P)`` in the image's dtype, label patches ``(*P)`` uint8 store values;
``P`` is ``YX`` or ``ZYX`` at the training level.

Object classes (``classes.objects`` with the ``object boundary`` class): every labelled and validation patch
gets the rims of its painted objects as the boundary class (``objects.boundaries.mark_boundaries``, read with a
margin of the rim width so rims do not depend on where a patch starts), and dense validation masks get the rims
of their object regions, so the boundary class is trained and scored like any painted class.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.boundaries import mark_boundaries
from napari_medseg.training.data import ItemView, TrainingData, scan_painted, tissue_mask

log = logging.getLogger(__name__)
MIN_VAL_BLOCKS = 5
#: rim width (pixels at the training level) of the derived ``object boundary`` class
BOUNDARY_WIDTH = 2


@dataclass
class ValPatch:
    item: int
    start: tuple[int, ...]
    image: np.ndarray  # (C, *P)
    labels: np.ndarray  # (*P) store values of this block's held-out paint only
    dense: np.ndarray | None  # (*P) prediction values, where a dense mask exists
    spacing: tuple[float, ...]


def paint_extent(painted: list[dict[int, np.ndarray]], totals: list[dict[int, int]], views: list,
                 patch: tuple[int, ...]) -> tuple[float, float]:
    """How far the paint reaches, for ``semi="auto"`` (``TrainConfig.resolve_semi``): ``(patches, share)``.

    ``patches``: the painted pixels (level-0 coordinates per item and store value) binned into cells of half a
    training patch per axis at each item's level, the cells counted and divided by the cells of one patch: a few
    strokes in one view span a few patches, scribbles over every image of a dataset hundreds. ``share``: the
    painted pixels (``totals``, all of them) over the pixels of those cells: strokes leave most of their
    surroundings unpainted (a few %), fully labelled regions or volumes almost none."""
    cell = np.asarray([max(1, p // 2) for p in patch], np.int64)
    per_patch = float(np.prod([max(1, p // c) for p, c in zip(patch, cell)]))
    n = 0
    covered = 0.0
    for p, v in zip(painted, views):
        if not p:
            continue
        coords = np.concatenate(list(p.values())).astype(np.float64)
        factor = np.asarray(v.factor, np.float64)
        cells = len(np.unique(np.floor(coords / factor / cell).astype(np.int64), axis=0))
        n += cells
        covered += cells * float(np.prod(cell * factor))  # the cells' area in level-0 pixels
    painted_px = sum(sum(t.values()) for t in totals)
    return n / per_patch, (min(1.0, painted_px / covered) if covered else 0.0)


def _block_keys(blocks: np.ndarray) -> np.ndarray:
    """One int64 per block index row ``(N, ndim)`` (block indices are far below 2**20)."""
    keys = np.zeros(len(blocks), np.int64)
    for ax in range(blocks.shape[1]):
        keys = keys * (1 << 20) + blocks[:, ax]
    return keys


def _block_hash(seed: int, key: str, block: tuple[int, ...]) -> float:
    digest = hashlib.blake2b(f"{seed}|{key}|{','.join(map(str, block))}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class PatchSampler:
    def __init__(self, data: TrainingData, model_patch: tuple[int, ...], model_dims: int, *, level: int = 0,
                 pixel_size: float | None = None, val_fraction: float = 0.1, max_val_patches: int = 64,
                 seed: int = 0, val_seed: int | None = None, val_block: tuple[int, ...] | None = None,
                 cap: int = 20000) -> None:
        data.validate()
        self.data = data
        self.classes = data.classes
        self.max_value = data.classes.max_store_value
        self.seed = seed
        self.warnings: list[str] = []
        # the boundary class is derived from the painted objects, not painted
        self.boundary_store = None if data.classes.boundary_value is None else data.classes.boundary_value + 1
        ddims = data.spatial_dims
        if model_dims > ddims:
            raise MedsegError(f"a {model_dims}D model needs {model_dims}D images; these are {ddims}D")
        self.squeeze = model_dims < ddims  # a 2D model on volumes: patches are single Z slices
        self.patch = ((1,) + tuple(model_patch)) if self.squeeze else tuple(model_patch)
        self.views: list[ItemView] = []
        for i, it in enumerate(data.items):
            src = it.image
            if pixel_size is not None:
                lv = src.level_for_pixel_size(pixel_size)
            else:
                lv = min(level, len(src.levels) - 1)
                if lv != level:
                    self.warnings.append(f"'{it.key}' has no pyramid level {level}; training on its level {lv}")
            self.views.append(ItemView(i, it, lv))

        rng = np.random.default_rng(seed)
        painted: list[dict[int, np.ndarray]] = []
        totals: list[dict[int, int]] = []
        for v in self.views:
            totals.append({})
            painted.append({} if v.labels is None else scan_painted(v.labels, self.max_value, cap, rng, v.key,
                                                                    totals[-1]))
        self.labelled_items = [i for i, p in enumerate(painted) if p]
        self.unlabelled_items = [i for i, p in enumerate(painted) if not p]
        self.target_items = [i for i, v in enumerate(self.views) if v.item.domain == "target"]  # domain.py
        if not self.labelled_items:
            raise MedsegError("no painted pixels in any training image: paint some background and at least one "
                              "class (label values 1 and 2..) before training")
        present = sorted({v for p in painted for v in p})
        names = self.classes.names
        if len(present) == 1:
            only = names[present[0] - 1]
            others = [n for j, n in enumerate(names) if j + 1 != present[0]]
            self.warnings.append(f"only '{only}' is painted: the model can only learn to predict '{only}' "
                                 f"everywhere; paint some {', '.join(repr(o) for o in others)} too")
        elif len(present) < len(names):
            missing = [n for j, n in enumerate(names) if j + 1 not in present and j + 1 != self.boundary_store]
            if missing:
                self.warnings.append(f"no paint for {', '.join(repr(m) for m in missing)}: the model will not "
                                     "learn to predict them")
        self.present_values = present
        self.paint_extent, self.paint_share = paint_extent(painted, totals, self.views, self.patch)

        # validation blocks (level-0 geometry, one training patch wide)
        self.val_seed = seed if val_seed is None else val_seed
        if val_block is None or len(val_block) != ddims:
            v0 = self.views[self.labelled_items[0]]
            val_block = tuple(max(1, int(round(p * f))) for p, f in zip(self.patch, v0.factor))
        self.val_block = tuple(int(b) for b in val_block)
        self.val_blocks: dict[int, set[tuple[int, ...]]] = {}
        self._split(painted, val_fraction, max_val_patches)

        # training coordinates per store value: rows (item, *level-0 coords)
        rows: dict[int, list[np.ndarray]] = {}
        for i, p in enumerate(painted):
            vb = self.val_blocks.get(i)
            held = _block_keys(np.asarray(sorted(vb))) if vb else None
            for val, coords in p.items():
                if held is not None:
                    coords = coords[~np.isin(_block_keys(coords // np.asarray(self.val_block)), held)]
                if len(coords):
                    rows.setdefault(val, []).append(np.concatenate(
                        [np.full((len(coords), 1), i, np.int64), coords], axis=1))
        self.train_coords = {v: np.concatenate(r) for v, r in rows.items()}
        self.train_values = sorted(self.train_coords)
        self.tissue = {i: tissue_mask(v.item.image) for i, v in enumerate(self.views)}
        self._val_patches: list[ValPatch] | None = None

    # -- validation split ----------------------------------------------------------------------------
    def _split(self, painted: list[dict[int, np.ndarray]], fraction: float, max_patches: int) -> None:
        if fraction <= 0:
            return
        blocks: list[tuple[float, int, tuple[int, ...], frozenset[int]]] = []
        vb = np.asarray(self.val_block)
        for i, p in enumerate(painted):
            per: dict[tuple[int, ...], set[int]] = {}
            for val, coords in p.items():
                for b in np.unique(coords // vb, axis=0).tolist():
                    per.setdefault(tuple(b), set()).add(val)
            for b, vals in per.items():
                blocks.append((_block_hash(self.val_seed, self.views[i].key, b), i, b, frozenset(vals)))
        if len(blocks) < MIN_VAL_BLOCKS:
            self.warnings.append(
                f"paint covers only {len(blocks)} patch-sized regions: too few to hold some out for validation, "
                "so no validation Dice is reported; paint in a few more places")
            return
        held = sorted((b for b in blocks if b[0] < fraction), key=lambda b: b[0])[:max_patches]
        held_keys = {(b[1], b[2]) for b in held}
        train_vals = {v for b in blocks if (b[1], b[2]) not in held_keys for v in b[3]}
        # a class painted only in held-out blocks goes back to training (it could not be learned otherwise)
        lost = {v for b in held for v in b[3]} - train_vals
        held = [b for b in held if not (b[3] & lost)]
        for _, i, b, _ in held:
            self.val_blocks.setdefault(i, set()).add(b)

    @property
    def n_val_blocks(self) -> int:
        return sum(len(s) for s in self.val_blocks.values())

    # -- windows -------------------------------------------------------------------------------------
    def _clip_start(self, view: ItemView, start: np.ndarray) -> tuple[int, ...]:
        hi = np.maximum(0, np.asarray(view.shape) - np.asarray(self.patch))
        return tuple(int(s) for s in np.clip(start, 0, hi))

    def labelled_window(self, rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
        """(item, window start): a class chosen uniformly, then one of its painted pixels, jittered."""
        val = self.train_values[int(rng.integers(len(self.train_values)))]
        rows = self.train_coords[val]
        row = rows[int(rng.integers(len(rows)))]
        view = self.views[int(row[0])]
        c = np.floor(row[1:] / np.asarray(view.factor)).astype(np.int64)
        p = np.asarray(self.patch)
        jit = np.array([int(rng.integers(-(q // 4), q // 4 + 1)) for q in self.patch])
        return view.index, self._clip_start(view, c - p // 2 + jit)

    def unlabelled_window(self, rng: np.random.Generator, items: list[int] | None = None
                          ) -> tuple[int, tuple[int, ...]]:
        """(item, window start): any image (or one of ``items``), uniformly; on slides a tissue pixel of the
        smallest level."""
        view = self.views[int(rng.integers(len(self.views)))] if items is None else \
            self.views[items[int(rng.integers(len(items)))]]
        p = np.asarray(self.patch)
        tis = self.tissue.get(view.index)
        if tis is not None:
            flat, shape, fac = tis
            c_low = np.unravel_index(int(flat[int(rng.integers(len(flat)))]), shape)
            c0 = (np.asarray(c_low) + rng.random(len(shape))) * np.asarray(fac)
            c = np.floor(c0 / np.asarray(view.factor)).astype(np.int64)
            return view.index, self._clip_start(view, c - p // 2)
        hi = np.maximum(0, np.asarray(view.shape) - p)
        return view.index, tuple(int(rng.integers(0, h + 1)) for h in hi)

    def _squeeze(self, a: np.ndarray, lead: int) -> np.ndarray:
        return a[(slice(None),) * lead + (0,)] if self.squeeze else a

    def _margin(self) -> tuple[int, ...]:
        """Per-axis margin read around a label window to derive object rims (none across a squeezed Z)."""
        m = BOUNDARY_WIDTH if self.boundary_store is not None else 0
        return tuple(0 if (self.squeeze and ax == 0) else m for ax in range(len(self.patch)))

    def _with_rims(self, v: ItemView, read, start: tuple[int, ...], dense: bool = False) -> np.ndarray:
        """``read(start, size)`` of a label window of ``v``, squeezed, with the object rims derived (store values,
        or prediction values when ``dense``) from a window ``BOUNDARY_WIDTH`` larger on each side. Outside the
        image is unannotated: the image border makes no rim."""
        margin = self._margin()
        if not any(margin):
            return self._squeeze(read(start, self.patch), 0)
        bstart = tuple(s - m for s, m in zip(start, margin))
        bsize = tuple(p + 2 * m for p, m in zip(self.patch, margin))
        big = read(bstart, bsize)
        if dense:  # prediction values -> store values, 0 outside the image
            inside = np.ones(big.shape, bool)
            for ax, idx in enumerate(v.level0_index(bstart, bsize)):
                shape = [1] * big.ndim
                shape[ax] = -1
                inside &= (idx >= 0).reshape(shape)
            big = np.where(inside, big.astype(np.uint8) + np.uint8(1), np.uint8(0))
        big = mark_boundaries(self._squeeze(big, 0), self.classes, BOUNDARY_WIDTH)
        keep = margin[1:] if self.squeeze else margin
        size = self.patch[1:] if self.squeeze else self.patch
        out = big[tuple(slice(m, m + p) for m, p in zip(keep, size))]
        if dense:
            out = np.where(out > 0, out - np.uint8(1), np.uint8(0)).astype(np.uint8)
        return np.ascontiguousarray(out)

    def labelled_patch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        i, start = self.labelled_window(rng)
        v = self.views[i]
        img = v.read_image(start, self.patch)
        lab = self._with_rims(v, lambda s, p: v.read_labels(s, p, self.max_value, self.val_blocks.get(i),
                                                         self.val_block), start)
        return self._squeeze(img, 1), lab

    def unlabelled_patch(self, rng: np.random.Generator, items: list[int] | None = None) -> np.ndarray:
        i, start = self.unlabelled_window(rng, items)
        return self._squeeze(self.views[i].read_image(start, self.patch), 1)

    def batch(self, index: int, n_labelled: int, n_unlabelled: int, n_target: int = 0) -> dict[str, np.ndarray]:
        """Batch number ``index`` (deterministic for a seed): ``x_l`` (N_l, C, *P), ``y_l`` (N_l, *P) uint8,
        ``x_u`` (N_u, C, *P), and with ``n_target`` ``x_t`` (N_t, C, *P) windows of the target-domain items."""
        rng = np.random.default_rng([self.seed, index])
        pairs = [self.labelled_patch(rng) for _ in range(n_labelled)]
        out = {"x_l": np.stack([p[0] for p in pairs]), "y_l": np.stack([p[1] for p in pairs])}
        if n_unlabelled:
            out["x_u"] = np.stack([self.unlabelled_patch(rng) for _ in range(n_unlabelled)])
        if n_target and self.target_items:
            out["x_t"] = np.stack([self.unlabelled_patch(rng, self.target_items) for _ in range(n_target)])
        return out

    # -- validation patches --------------------------------------------------------------------------
    def validation_patches(self) -> list[ValPatch]:
        """One patch per held-out block (read once and cached), scoring only that block's paint."""
        if self._val_patches is None:
            out = []
            for i, blocks in sorted(self.val_blocks.items()):
                v = self.views[i]
                for b in sorted(blocks):
                    start0 = np.asarray(b) * np.asarray(self.val_block)
                    start = tuple(int(np.floor(s / f)) for s, f in zip(start0, v.factor))
                    img = v.read_image(start, self.patch)
                    lab = self._squeeze(v.read_labels(start, self.patch, self.max_value, block=self.val_block,
                                                      only_block=b), 0)
                    if self.boundary_store is not None:
                        # rims from all the paint around (as training sees it), scored on this block's paint only
                        rims = self._with_rims(v, lambda s, p, v=v: v.read_labels(s, p, self.max_value), start)
                        lab = np.where(lab > 0, rims, 0).astype(lab.dtype)
                    dense = None if v.dense is None else self._with_rims(v, v.read_dense, start, dense=True)
                    spacing = v.spacing[1:] if self.squeeze else v.spacing
                    out.append(ValPatch(i, start, self._squeeze(img, 1), lab, dense, spacing))
            self._val_patches = out
        return self._val_patches

    # -- normalisation statistics --------------------------------------------------------------------
    def norm_samples(self, max_elems: int = 1 << 21) -> tuple[np.ndarray, bool]:
        """Pixels ``(C, N)`` pooled over all images (their smallest levels, strided) and whether any was not
        finite."""
        parts, nonfinite = [], False
        for v in self.views:
            src = v.item.image
            lvl = len(src.levels) - 1
            arr = src.levels[lvl]
            n = int(np.prod(src.level_shape(lvl)))
            step = max(1, int(np.ceil((n / max_elems) ** (1 / src.spatial_dims))))
            from napari_medseg.training.data import read

            idx = tuple(slice(None, None, step) if a != "C" else slice(None) for a in src.axes)
            a = read(arr, idx)
            a = np.moveaxis(a, src.axes.index("C"), 0) if "C" in src.axes else a[None]
            a = a.reshape(a.shape[0], -1)
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                nonfinite = True
            parts.append(a)
        return np.concatenate(parts, axis=1), nonfinite
