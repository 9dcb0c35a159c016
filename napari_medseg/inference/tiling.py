"""Window grid, blending weights and the block plan of the tiled predictor (pure numpy, N-D).

The window grid is MONAI's: ``sliding_window_inference`` scans with interval ``int(window * (1 - overlap))``
from 0, clamps the last window to the image end, and pads an image smaller than the window by ``diff // 2``
on the low side. ``axis_starts`` reproduces it exactly (starts may be negative where MONAI pads), so the
blended probabilities equal MONAI's on the same input. Gaussian weights come from MONAI's own
``compute_importance_map``.

Blending modes:

- ``gaussian``: each pixel is the importance-weighted mean over every window covering it (MONAI's map);
- ``crop``: each pixel takes the window whose centre is nearest along every axis (a halo-crop tiling:
  every window keeps its middle and drops a margin), written once, no accumulation.

The image (the predicted level) is cut into blocks: the unit of reading, of resuming and of writing
(output chunks never straddle blocks, so every chunk has one writer). Every window is computed once by its
*owner*, the first block (raster order) among the blocks still to do that it touches, and its output is
split over the blocks it touches; a block is complete as soon as it has been processed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_medseg.core.errors import MedsegError

Box = tuple[tuple[int, int], ...]  # per spatial axis [start, stop)
BLENDS = ("gaussian", "crop")


def scan_interval(size: int, window: int, overlap: float) -> int:
    """MONAI's scan interval along one axis (``_get_scan_interval``) for an image padded to >= window."""
    if max(size, window) == window:
        return int(window)
    return max(1, int(window * (1 - overlap)))


def axis_starts(size: int, window: int, overlap: float) -> np.ndarray:
    """Window starts along one axis, as MONAI's ``dense_patch_slices`` over the padded image, shifted into
    image coordinates (negative where MONAI pads an image smaller than the window)."""
    if size < 1 or window < 1:
        raise MedsegError(f"image size {size} and window {window} must be positive")
    padded = max(size, window)
    pad_low = (padded - size) // 2
    interval = scan_interval(size, window, overlap)
    num = int(math.ceil(padded / interval))
    n = next((d for d in range(num) if d * interval + window >= padded), None)
    n = 1 if n is None else n + 1
    starts = [i * interval - max(i * interval + window - padded, 0) for i in range(n)]
    return np.asarray(starts, dtype=np.int64) - pad_low


def crop_bounds(starts: np.ndarray, window: int, size: int) -> np.ndarray:
    """Per window ``[lo, hi)``: the pixels it owns in ``crop`` mode (nearest window centre; ties to the later)."""
    starts = np.asarray(starts, dtype=np.int64)
    n = len(starts)
    bounds = np.empty((n, 2), dtype=np.int64)
    for k in range(n):
        lo = 0 if k == 0 else (int(starts[k - 1]) + int(starts[k]) + window) // 2
        hi = size if k == n - 1 else (int(starts[k]) + int(starts[k + 1]) + window) // 2
        bounds[k] = (max(lo, 0), min(hi, size))
    return bounds


def importance_map(window: Sequence[int], blend: str = "gaussian", sigma_scale: float = 0.125, device="cpu"):
    """The per-window weights as a float32 torch tensor of shape ``window`` (MONAI's importance map)."""
    import torch
    from monai.data.utils import compute_importance_map

    mode = "gaussian" if blend == "gaussian" else "constant"
    return compute_importance_map(tuple(int(w) for w in window), mode=mode, sigma_scale=sigma_scale,
                                  device=device, dtype=torch.float32)


@dataclass(frozen=True)
class WindowGrid:
    """MONAI's window grid over ``shape`` (spatial, predicted level). Windows are index tuples."""

    shape: tuple[int, ...]
    window: tuple[int, ...]
    overlap: float
    blend: str = "gaussian"
    starts: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)
    spans: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise MedsegError(f"unknown blending {self.blend!r}; choose one of {', '.join(BLENDS)}")
        if not 0.0 <= self.overlap < 1.0:
            raise MedsegError(f"overlap must be in [0, 1), got {self.overlap}")
        if len(self.window) != len(self.shape):
            raise MedsegError(f"window {self.window} needs one size per spatial axis of the image {self.shape}")
        starts = tuple(axis_starts(s, w, self.overlap) for s, w in zip(self.shape, self.window))
        if self.blend == "crop":
            spans = tuple(crop_bounds(st, w, s) for st, w, s in zip(starts, self.window, self.shape))
        else:
            spans = tuple(np.stack([np.clip(st, 0, s), np.clip(st + w, 0, s)], axis=1)
                          for st, w, s in zip(starts, self.window, self.shape))
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "spans", spans)

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    @property
    def n_windows(self) -> int:
        return int(np.prod(self.counts))

    @property
    def intervals(self) -> tuple[int, ...]:
        return tuple(scan_interval(s, w, self.overlap) for s, w in zip(self.shape, self.window))

    def indices(self) -> Iterable[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.counts))

    def window_box(self, idx: Sequence[int]) -> Box:
        """The window's full extent (may reach outside the image where MONAI pads)."""
        return tuple((int(st[i]), int(st[i]) + w) for st, i, w in zip(self.starts, idx, self.window))

    def output_box(self, idx: Sequence[int]) -> Box:
        """The image pixels the window writes to (its extent inside the image, or its crop in ``crop`` mode)."""
        return tuple((int(sp[i, 0]), int(sp[i, 1])) for sp, i in zip(self.spans, idx))


def choose_block(shape: Sequence[int], window: Sequence[int], intervals: Sequence[int],
                 target: Sequence[int]) -> tuple[int, ...]:
    """Block size per axis: a multiple of the scan interval near ``target`` (so windows straddling a block
    boundary reach at most ``window - interval`` into the next block), never more than the image."""
    out = []
    for s, _w, i, t in zip(shape, window, intervals, target):
        if s <= t or i >= s:
            out.append(int(s))
            continue
        k = max(1, round(t / i))
        out.append(int(min(s, k * i)))
    return tuple(out)


def chunk_for_block(block: int, max_chunk: int = 512) -> int:
    """The largest ``block / 2**m`` that is <= ``max_chunk`` (an integer), else the block itself."""
    c = block
    while c > max_chunk and c % 2 == 0:
        c //= 2
    return c


@dataclass(frozen=True)
class BlockGrid:
    shape: tuple[int, ...]
    block: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block))

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.counts))

    def indices(self) -> Iterable[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.counts))

    def box(self, bidx: Sequence[int]) -> Box:
        return tuple((i * b, min((i + 1) * b, s)) for i, b, s in zip(bidx, self.block, self.shape))

    def slices(self, bidx: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.box(bidx))

    def key(self, bidx: Sequence[int]) -> str:
        return ".".join(str(int(i)) for i in bidx)

    def from_key(self, key: str) -> tuple[int, ...]:
        return tuple(int(v) for v in key.split("."))

    def touched(self, box: Box) -> tuple[range, ...]:
        """Block index ranges per axis that a (non-empty, in-image) box intersects."""
        return tuple(range(a // b, (c - 1) // b + 1) for (a, c), b in zip(box, self.block))


def intersect(a: Box, b: Box) -> Box | None:
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))
    return None if any(lo >= hi for lo, hi in out) else out


def box_slices(box: Box, origin: Sequence[int] = ()) -> tuple[slice, ...]:
    o = tuple(origin) or (0,) * len(box)
    return tuple(slice(a - oo, b - oo) for (a, b), oo in zip(box, o))


def bounding_box(boxes: Iterable[Box]) -> Box | None:
    boxes = list(boxes)
    if not boxes:
        return None
    return tuple((min(b[d][0] for b in boxes), max(b[d][1] for b in boxes)) for d in range(len(boxes[0])))


@dataclass
class BlockPlan:
    """Which windows are computed while each block is processed, and which blocks each window writes to.

    A window's *owner* is fixed by the grid alone (the block holding its output box's first pixel), not by
    which blocks are still to do: blocks sum their parts per owner in a fixed order, so the bytes written
    for a block do not depend on which other blocks a run (or a Dask task) processes.
    """

    grid: WindowGrid
    blocks: BlockGrid
    order: list[tuple[int, ...]]                         # blocks to process, raster order
    compute: dict[tuple[int, ...], list[tuple[int, ...]]]  # block -> windows computed when it is processed
    targets: dict[tuple[int, ...], list[tuple[int, ...]]]  # window -> blocks to do that it writes to
    need: dict[tuple[int, ...], int]                      # block -> number of windows writing to it
    skipped_windows: int = 0

    @property
    def n_windows(self) -> int:
        return sum(len(v) for v in self.compute.values())

    def owner(self, w: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(a // b for (a, _), b in zip(self.grid.output_box(w), self.blocks.block))

    def read_box(self, bidx: tuple[int, ...]) -> Box | None:
        """The input pixels the block's windows need (their full extents, MONAI padding included)."""
        return bounding_box(self.grid.window_box(w) for w in self.compute.get(bidx, []))


def plan_blocks(grid: WindowGrid, blocks: BlockGrid, todo: Iterable[tuple[int, ...]],
                keep_window: Callable[[Box], bool] | None = None) -> BlockPlan:
    """Every window that writes into a block of ``todo`` (and passes ``keep_window``, called with the
    window's output box) is computed once, while the first block of ``todo`` (raster order) it touches is
    processed."""
    rank = {b: i for i, b in enumerate(sorted(set(map(tuple, todo))))}
    order = sorted(rank, key=rank.__getitem__)
    compute: dict[tuple[int, ...], list[tuple[int, ...]]] = {b: [] for b in order}
    targets: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    need = dict.fromkeys(order, 0)
    skipped = 0
    if not rank:
        return BlockPlan(grid, blocks, order, compute, targets, need)
    # Candidate windows: only those whose output box meets a block to do (cheap per-axis prefilter).
    todo_axes = [set(b[d] for b in rank) for d in range(len(grid.shape))]
    per_axis = []
    for d, sp in enumerate(grid.spans):
        bs = blocks.block[d]
        per_axis.append([i for i, (lo, hi) in enumerate(sp)
                         if hi > lo and any(k in todo_axes[d] for k in range(lo // bs, (hi - 1) // bs + 1))])
    for widx in itertools.product(*per_axis):
        box = grid.output_box(widx)
        hit = [b for b in itertools.product(*blocks.touched(box)) if b in rank]
        if not hit:
            continue
        if keep_window is not None and not keep_window(box):
            skipped += 1
            continue
        hit.sort(key=rank.__getitem__)
        compute[hit[0]].append(widx)
        targets[widx] = hit
        for b in hit:
            need[b] += 1
    return BlockPlan(grid, blocks, order, compute, targets, need, skipped)


def default_block(window: tuple[int, ...], intervals: tuple[int, ...], shape: tuple[int, ...],
                  model_dims: int) -> tuple[int, ...]:
    """The output blocks of a run: about 1536^2 for a slide, 16 x 1024^2 for a 2D model over a volume, the
    window (at least 128) for a 3D model; ``choose_block`` fits them to the window grid."""
    if len(shape) == 2:
        target: tuple[int, ...] = (1536, 1536)
    elif model_dims == 2:  # a 2D model over a volume, slice by slice
        target = (16, 1024, 1024)
    else:
        target = tuple(max(128, w) for w in window)
    return choose_block(shape, window, intervals, target)
