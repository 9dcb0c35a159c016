"""The block engine: windows through the model, blended into blocks, blocks handed out when complete.

Blocks are processed in raster order (``tiling.BlockPlan``). For each block the engine reads its input
(prefetched), sends it to the device as stored (e.g. uint8; on CUDA pinned, on a side stream, with no
synchronisation per batch: the host prepares the next batches while the device computes) and normalises
it there, pads it with zeros where MONAI pads (outside the image, in normalised space), and queues its
windows as views. Windows run in
batches of fixed size that may span blocks (every window is computed with the same batch shape, so its
output does not depend on its neighbours in the batch).

Each window's probabilities times the importance map are added (one fused ``addcmul_``) to a float32
*part* per (owner block, target block): the target's own windows fill a block-sized part, windows owned by
an earlier block fill the strip they reach into. When every window writing to a block is done, its parts
are summed in a fixed order (its own first, then the others' in raster order) and divided by the summed
weights, as MONAI does. The sums therefore do not depend on which blocks a run processes: a resumed run,
or a Dask task doing a share of the blocks, writes the very same bytes as one uninterrupted run.
Crop blending writes each pixel from one window (weights 1 on its crop, 0 elsewhere).

With a tissue mask (``pixel_mask``), a finished block is zeroed outside the mask (probabilities, extra
map and ``covered``), so nothing is written on the glass: windows that touch tissue also reach over glass,
and where a glass pixel's other windows were skipped it is covered only by such a window's edge (tiny
Gaussian weight, the model's zero-padding artefacts), which the division by the summed weights would
otherwise turn into a full-strength prediction along the window and block borders.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from napari_medseg.inference.blocks import ArrayReader, BlockData, Box, Prefetcher, TileReader, boxes_overlap
from napari_medseg.inference.modelrun import WindowRunner
from napari_medseg.inference.tiling import BlockPlan, box_slices, importance_map, intersect
from napari_medseg.models.normalization import NormConfig

log = logging.getLogger(__name__)
Key = tuple[int, ...]


@dataclass
class FinishedBlock:
    """A complete block: ``probs`` (C, *spatial) float32 on the device, zero where no window was computed
    and outside the tissue mask; ``covered`` (*spatial) bool (False there); ``extra`` (*spatial) float32
    blended extra map (e.g. uncertainty) or None."""

    bidx: Key
    box: Box
    probs: torch.Tensor
    covered: torch.Tensor
    extra: torch.Tensor | None = None


@dataclass
class EngineStats:
    windows: int = 0
    windows_bad: int = 0
    batches: int = 0
    model_s: float = 0.0
    wait_read_s: float = 0.0
    blend_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class BlockEngine:
    def __init__(self, plan: BlockPlan, reader: TileReader | ArrayReader, runner: WindowRunner, norm: NormConfig,
                 n_classes: int | None, *, sigma_scale: float = 0.125,
                 extra_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, prefetch_depth: int = 1,
                 pixel_mask: Callable[[Box], Any] | None = None, streams: int = 1) -> None:
        """``n_classes``: the model's output channels, or None to take them from the first batch (a block
        no window writes to then needs them: the tiled predictor always passes them). ``pixel_mask(box)``:
        the pixels of a block's box to keep (bool, the box's trailing YX shape, numpy or torch), or None to
        keep all; everything else is written as 0 (not predicted). ``streams`` (CPU only): how many batches
        run through the model at once, each in its own thread (see ``run``); the result does not change."""
        self.plan, self.reader, self.runner, self.norm = plan, reader, runner, norm
        self.pixel_mask = pixel_mask
        self.grid, self.blocks = plan.grid, plan.blocks
        self.device = runner.device
        # the runner feeds its model channels-last (a 2D model on the CPU, any on CUDA): blocks, raw and
        # normalised batches are kept in that layout from the reader on, so no step reorders the pixels
        self.nhwc = bool(getattr(runner, "input_channels_last", False))
        self.extra_fn = extra_fn
        self._set_classes(n_classes)
        self.gaussian = self.grid.blend == "gaussian"
        self.wmap = importance_map(self.grid.window, self.grid.blend, sigma_scale, device=self.device)
        self.prefetch_depth = prefetch_depth
        self.stats = EngineStats()
        self.parts: dict[Key, dict[Key, tuple[Box, torch.Tensor]]] = {}  # target -> owner -> (box, part)
        self._pool: dict[tuple[int, ...], list[torch.Tensor]] = {}  # reused buffers (no page faults per part)
        self._pool_lock = threading.Lock()
        # model streams (CPU): batches run through the model in this many threads at once, blended in order
        self.streams = max(1, int(streams)) if self.device.type == "cpu" else 1
        self._slots: list[dict[str, torch.Tensor]] = [{} for _ in range(self.streams)]  # raw/batch buffers
        self._norm_ready = False
        self._copy_stream: Any = None  # CUDA: the stream blocks are copied to the device on (``_prepare``)
        self.part_box: dict[tuple[Key, Key], Box] = {}
        self.owner_of: dict[Key, Key] = {}
        for ws in plan.compute.values():
            for w in ws:
                o = plan.owner(w)
                self.owner_of[w] = o
                ob = self.grid.output_box(w)
                for t in plan.targets[w]:
                    inter = intersect(ob, self.blocks.box(t))
                    if inter is None:
                        continue
                    old = self.part_box.get((o, t))
                    self.part_box[(o, t)] = inter if old is None else tuple(
                        (min(x0, y0), max(x1, y1)) for (x0, x1), (y0, y1) in zip(old, inter))

    def _set_classes(self, n_classes: int | None) -> None:
        self.n_classes = n_classes
        self.n_out = None if n_classes is None else n_classes + (1 if self.extra_fn is not None else 0)

    # -- accumulation ------------------------------------------------------------------------------------
    def _part(self, owner: Key, t: Key) -> tuple[torch.Tensor, list[int]]:
        parts = self.parts.setdefault(t, {})
        got = parts.get(owner)
        if got is None:
            box = self.part_box[(owner, t)]
            got = (box, self._zeros((self.n_out + 1, *(b - a for a, b in box))))
            parts[owner] = got
        box, part = got
        return part, [a for a, _ in box]

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A batch buffer (N, C, *window): channels-last in memory where the runner wants that (``nhwc``)."""
        if not self.nhwc:
            return torch.empty(shape, dtype=dtype, device=self.device)
        nd = len(shape) - 2
        t = torch.empty((shape[0], *shape[2:], shape[1]), dtype=dtype, device=self.device)
        return t.permute(0, nd + 1, *range(1, nd + 1))

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        with self._pool_lock:
            free = self._pool.get(shape)
            got = free.pop() if free else None
        if got is not None:
            return got.zero_()
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def release(self, t: torch.Tensor, keep: int = 1) -> None:
        """Give a block-sized buffer back for reuse (thread-safe; e.g. a finished block's ``probs`` once
        written). Strip-sized parts vary in shape and go back to the allocator."""
        base = t if t._base is None else t._base
        shape = tuple(base.shape)
        if shape[1:] != tuple(self.blocks.block):
            return
        with self._pool_lock:
            free = self._pool.setdefault(shape, [])
            if len(free) < keep:
                free.append(base)

    def _finish(self, b: Key) -> FinishedBlock:
        if self.n_out is None:
            raise ValueError("a block without windows needs the engine's n_classes")
        bbox = self.blocks.box(b)
        origin = [a for a, _ in bbox]
        parts = self.parts.pop(b, {})
        own = parts.pop(b, None)
        if own is not None and own[0] == bbox:
            acc = own[1]
        else:
            acc = self._zeros((self.n_out + 1, *(hi - lo for lo, hi in bbox)))
            if own is not None:
                acc[(slice(None),) + box_slices(own[0], origin)] += own[1]
                self.release(own[1])
        for o in sorted(parts):  # fixed order: own part first, then the others' in raster order
            box, part = parts[o]
            acc[(slice(None),) + box_slices(box, origin)] += part
            self.release(part)
        n = self.n_classes
        w = acc[self.n_out]
        covered = w > 0
        if self.gaussian:
            # where nothing was computed the sums are 0, so any positive divisor leaves 0 there: the summed
            # weights, raised in place to the smallest normal float, divide (no other block-sized buffer)
            inv = w.clamp_min_(torch.finfo(torch.float32).tiny)
            probs = acc[:n].div_(inv)
            extra = acc[n].div_(inv) if self.extra_fn is not None else None
        else:
            probs = acc[:n]
            extra = acc[n] if self.extra_fn is not None else None
        keep = self.pixel_mask(bbox) if self.pixel_mask is not None else None
        if keep is not None:
            keep = torch.as_tensor(keep, dtype=torch.bool).to(self.device, non_blocking=True)
            drop = ~keep
            probs.masked_fill_(drop, 0.0)  # broadcast over classes (and Z)
            if extra is not None:
                extra.masked_fill_(drop, 0.0)
            covered &= keep
        return FinishedBlock(b, bbox, probs, covered, extra)

    # -- input -------------------------------------------------------------------------------------------
    def _prepare(self, bd: BlockData) -> torch.Tensor:
        """(C, *box) on the device in the source dtype (e.g. uint8: 4x less than float32), zero outside
        the image; windows are normalised batch by batch in ``_normalise``. For a runner that wants its input
        channels-last (``nhwc``) the block stays in the reader's layout (a view), else it is made contiguous."""
        nd = len(bd.box)
        t = torch.from_numpy(bd.data)  # (*valid, C): the reader's channels-last layout
        if self.device.type == "cuda":
            # pinned (torch's caching host allocator reuses the buffers) and copied on a side stream, so the
            # copy runs beside the batches already queued; the compute stream waits for it before the first
            # use, and the tensor is marked as used there (its memory is not reused before that work is done)
            host = t.pin_memory()
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._copy_stream):
                t = host.to(self.device, non_blocking=True)
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self._copy_stream)
            t.record_stream(compute)
        if any(a != va or b != vb for (a, b), (va, vb) in zip(bd.box, bd.valid)):
            full = torch.zeros((*(b - a for a, b in bd.box), t.shape[-1]), dtype=t.dtype, device=t.device)
            full[tuple(slice(va - a, vb - a) for (a, _), (va, vb) in zip(bd.box, bd.valid))] = t
            t = full
        t = t.permute(nd, *range(nd))  # (C, *box), a view
        return t if self.nhwc else t.contiguous()

    def _normalise(self, raw: torch.Tensor, windows: list[Key], slot: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalise a stacked raw batch (N, C, *window) into the slot's reused float32 batch buffer, exactly as
        ``NormConfig.apply``; pixels outside the image are 0 after normalisation (MONAI's padding)."""
        if not self._norm_ready:
            shape = (1, -1) + (1,) * (raw.ndim - 2)
            self._lo = torch.tensor(self.norm.low, dtype=torch.float32, device=self.device).view(shape)
            self._span = torch.tensor(self.norm.high, dtype=torch.float32, device=self.device).view(shape) - self._lo
            if self._lo.unique().numel() == 1 and self._span.unique().numel() == 1:
                # the same for every channel (e.g. 0..255): scalars, so the arithmetic runs along whole rows,
                # not per channel (in channels-last memory a per-channel operand repeats every C values)
                self._lo, self._span = self._lo.flatten()[0].item(), self._span.flatten()[0].item()
            # steps that cannot change an integer batch are left out (exactly: x - 0 == x, and clamping
            # values already in [0, 1] changes none): uint8 in 0..255, the common case, is copy and divide
            self._sub = any(v != 0.0 for v in self.norm.low)
            if not raw.dtype.is_floating_point and raw.dtype != torch.bool:
                info = torch.iinfo(raw.dtype)
                self._clamp = any(info.min < lo or info.max > hi for lo, hi in zip(self.norm.low, self.norm.high))
            else:
                self._clamp = True
            self._norm_ready = True
        x = slot.get("batch")
        if x is None or tuple(x.shape) != tuple(raw.shape):
            x = slot["batch"] = self._empty(tuple(raw.shape), torch.float32)
        if raw.dtype.is_floating_point or self.norm.mode == "steps":  # steps: a bioimage.io model's chain
            x.copy_(self.norm.apply(raw))
        else:  # integers hold no NaN/inf: NormConfig.apply's arithmetic, the first step converting into x
            if self._sub:
                torch.sub(raw, self._lo, out=x)
                x.div_(self._span)
            else:
                torch.div(raw, self._span, out=x)
            if self._clamp:
                x.clamp_(0.0, 1.0)
        for j, w in enumerate(windows):
            box = self.grid.window_box(w)
            if any(a < 0 or b > s for (a, b), s in zip(box, self.grid.shape)):
                inside = tuple(slice(max(0, -a), min(b, s) - a) for (a, b), s in zip(box, self.grid.shape))
                keep = torch.zeros(x.shape[2:], dtype=torch.bool, device=self.device)
                keep[inside] = True
                x[j].mul_(keep)
        return x

    # -- the loop ----------------------------------------------------------------------------------------
    def _batch(self, items: list[tuple[Key, torch.Tensor, list[int]]], slot: dict[str, torch.Tensor]) -> torch.Tensor:
        """The windows of ``items`` stacked and normalised into the buffers of ``slot``."""
        views = [x[(slice(None),) + box_slices(self.grid.window_box(w), o)] for w, x, o in items]
        shape = (len(views), *views[0].shape)
        raw = slot.get("raw")
        if raw is None or tuple(raw.shape) != shape or raw.dtype != views[0].dtype:
            raw = slot["raw"] = self._empty(shape, views[0].dtype)
        if self.nhwc:
            for j, v in enumerate(views):  # (C, *window) views of channels-last blocks: row copies
                raw[j].copy_(v)
        else:
            torch.stack(views, out=raw)
        return self._normalise(raw, [w for w, _, _ in items], slot)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The model's probabilities (and the extra map) of a normalised batch; seconds taken."""
        t0 = time.perf_counter()
        probs = self.runner(batch)
        if self.extra_fn is not None:
            probs = torch.cat([probs, self.extra_fn(batch)[:, None].float()], dim=1)
        # on CUDA no synchronisation here: the host goes on reading, stacking and queueing the next batches
        # while the device computes (it waits when a finished block is written); ``model_s`` then counts the
        # time to queue the work, not the device's
        return probs, time.perf_counter() - t0

    def _dispatch(self, items: list[tuple[Key, torch.Tensor, list[int]]]) -> list[Key]:
        """Run a batch and add its windows to their parts; returns the blocks it completes."""
        t0 = time.perf_counter()
        probs, _ = self._forward(self._batch(items, self._slots[0]))
        self.stats.model_s += time.perf_counter() - t0
        return self._blend(items, probs)

    def _blend(self, items: list[tuple[Key, torch.Tensor, list[int]]], probs: torch.Tensor) -> list[Key]:
        """Add the windows' probabilities to their parts; returns the blocks this completes."""
        if self.n_classes is None:
            self._set_classes(int(probs.shape[1]) - (1 if self.extra_fn is not None else 0))
        t1 = time.perf_counter()
        self.stats.batches += 1
        done: list[Key] = []
        for j, (w, _, _) in enumerate(items):
            wbox = self.grid.window_box(w)
            obox = self.grid.output_box(w)
            owner = self.owner_of[w]
            for t in self.plan.targets[w]:
                inter = intersect(obox, self.blocks.box(t))
                if inter is not None:
                    part, origin = self._part(owner, t)
                    src = box_slices(inter, [a for a, _ in wbox])
                    dst = box_slices(inter, origin)
                    wsrc = self.wmap[src]
                    part[(slice(0, self.n_out),) + dst].addcmul_(probs[(j, slice(None)) + src], wsrc)
                    part[(self.n_out,) + dst].add_(wsrc)
                self.need[t] -= 1
                if self.need[t] == 0:
                    done.append(t)
        self.stats.windows += len(items)
        self.stats.blend_s += time.perf_counter() - t1
        return done

    def run(self, cancel: Any = None) -> Iterator[FinishedBlock | str]:
        """Yields each block when complete, and warnings (str) about unreadable source tiles."""
        order = self.plan.order
        boxes = [self.plan.read_box(b) for b in order]
        self.need = dict(self.plan.need)
        for b in order:  # blocks no window writes to (e.g. all windows skipped) are complete at once
            if self.need[b] == 0:
                yield self._finish(b)
        # streams > 1: each batch's forward pass goes to a pool thread as soon as it is stacked; the main
        # thread blends the results in submission order (the same sums, in the same order, as one stream)
        self._model_pool = ThreadPoolExecutor(self.streams, thread_name_prefix="medseg-model") \
            if self.streams > 1 else None
        self._inflight: deque[tuple[list[tuple[Key, torch.Tensor, list[int]]], Future]] = deque()
        try:
            yield from self._blocks(order, boxes, cancel)
        finally:
            if self._model_pool is not None:
                self._model_pool.shutdown(wait=True, cancel_futures=True)

    def _collect(self, keep: int) -> Iterator[FinishedBlock]:
        """Blend the oldest batches in flight until ``keep`` remain; yields the blocks they complete."""
        while len(self._inflight) > keep:
            items, fut = self._inflight.popleft()
            probs, sec = fut.result()
            self.stats.model_s += sec
            for t in self._blend(items, probs):
                yield self._finish(t)

    def _blocks(self, order: list[Key], boxes: list[Any], cancel: Any) -> Iterator[FinishedBlock | str]:
        """``run``'s loop: read each block, queue its windows, run them in batches."""
        queue: deque[tuple[Key, torch.Tensor, list[int]]] = deque()
        bs = self.runner.batch_size
        pool, submitted = self._model_pool, 0
        with Prefetcher(self.reader, boxes, depth=self.prefetch_depth) as pf:
            for i, b in enumerate(order):
                if cancel is not None and cancel.is_set():
                    return
                t0 = time.perf_counter()
                bd = pf.get(i)
                self.stats.wait_read_s += time.perf_counter() - t0
                if bd is not None:
                    x = self._prepare(bd)
                    origin = [a for a, _ in bd.box]
                    for bad_box, why in bd.bad:
                        yield (f"source tile at level {self.reader.level}, "
                               f"{self.reader._describe(bad_box)} could not be decoded ({why}); "
                               "the windows over it were skipped (predicted as background)")
                    for w in self.plan.compute[b]:
                        if bd.bad and any(boxes_overlap(self.grid.window_box(w), bb) for bb, _ in bd.bad):
                            self.stats.windows_bad += 1
                            for t in self.plan.targets[w]:
                                self.need[t] -= 1
                                if self.need[t] == 0:
                                    yield self._finish(t)
                            continue
                        queue.append((w, x, origin))
                    del x
                last = i == len(order) - 1
                while len(queue) >= bs or (queue and last):
                    if cancel is not None and cancel.is_set():
                        return
                    items = [queue.popleft() for _ in range(min(bs, len(queue)))]
                    if pool is None:
                        for t in self._dispatch(items):
                            yield self._finish(t)
                        continue
                    yield from self._collect(self.streams - 1)  # frees the slot of the batch ``streams`` back
                    batch = self._batch(items, self._slots[submitted % self.streams])
                    submitted += 1
                    self._inflight.append((items, pool.submit(self._forward, batch)))
            yield from self._collect(0)
