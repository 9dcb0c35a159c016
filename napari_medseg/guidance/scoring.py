"""The background pass of "where to paint next": score the regions of an image by the model's uncertainty.

``rank_regions(source, model)`` is a generator (like ``train`` and ``predict``): it yields ``RankProgress``
after every batch of windows and returns the ``RegionRanking``; ``run_rank`` drives it to its end
(``core.events.drive``). The pass (``plan`` has its geometry):

1. the level: the one asked for, else the one the model was trained at (its checkpoint's ``pixel_size``
   through ``source.level_for_pixel_size``, else its ``level``, else 0), as the bioimage.io export finds it;
2. the regions: a grid of ``region_size`` level pixels (volumes: Z cells of ``region_size // 4`` slices),
   grown by factors of 2 while more than ``max_regions`` are on tissue; regions without tissue are not
   scored (the tissue mask of ``predict``: brightfield and fluorescence slides; ``tissue=False`` scores all);
3. ``samples_per_region`` windows of ``window`` level pixels per region (a size the model takes; one slice
   for a 2D model on a volume, a cube clipped to the volume for a 3D model), at random (seeded) on tissue,
   read through the predictor's tile reader (each source tile decoded once; the next batch is read while
   the model runs), normalised with the model's own
   normalisation, run in batches through ``WindowRunner`` (one clean pass: no noise, no TTA);
4. ``uncertainty`` of a region: the normalised entropy of the softmax (``models.uncertainty.entropy``, 0..1)
   averaged over the tissue pixels of its windows;
5. with ``novelty_weight > 0`` and painted regions in ``store`` (at least ``PAINTED_MAX`` of their pixels
   painted): one window on the paint of each painted region gives a descriptor (per-channel mean and std of
   the normalised input, mean softmax per class); a region's novelty is the distance of its windows'
   descriptors to the nearest painted one, divided by the largest such distance (0..1);
6. ``score = uncertainty * (1 + novelty_weight * novelty)``; the regions best first.

Cost: one forward pass per window, ``samples_per_region x regions`` windows (at most ``max_regions``):
with the defaults at most 4096 windows of 128 x 128, a small fraction of what a training run computes
(each training step runs a batch forward and backward). ``seconds`` and ``windows`` record it.

``stop`` (a ``threading.Event``) ends the pass after the batch under way: the ranking of the regions scored
so far (windows go in raster order, so neighbouring windows share their source tiles: the regions from the
top of the image down) is returned with ``complete=False``. Errors a user can cause are ``MedsegError`` with a message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.events import drive
from napari_medseg.core.files import file_sha256
from napari_medseg.core.source import ImageSource
from napari_medseg.core.tissue import TissueMask, compute_tissue_mask
from napari_medseg.guidance import plan
from napari_medseg.guidance.ranking import (
    PAINTED_MAX,
    RankedRegion,
    RankProgress,
    RegionRanking,
    painted_fraction,
)
from napari_medseg.inference.blocks import TileReader
from napari_medseg.inference.job import resolve_tissue
from napari_medseg.inference.modelrun import (
    LoadedModel,
    WindowRunner,
    check_model_input,
    default_norm,
    norm_for,
    resolve_model,
    state_hash,
)
from napari_medseg.models.devices import resolve_device
from napari_medseg.models.normalization import NormConfig
from napari_medseg.models.uncertainty import entropy

log = logging.getLogger(__name__)
__all__ = ["RankProgress", "rank_regions", "run_rank"]


@dataclass
class _Model:
    loaded: LoadedModel
    name: str
    sha256: str
    pixel_size: float | None  # the in-plane pixel size it was trained at (None: unknown)
    level: int | None         # the level it was trained at (None: unknown)
    owned: bool               # loaded here (moved to the device) or handed in (run where it is)


def _file_sha256(path: Path) -> str:
    if path.is_dir():  # a bioimage.io package folder: its rdf.yaml holds the sha256 of every file in it
        from napari_medseg.sharing.package_files import package_yaml_in_folder

        path = package_yaml_in_folder(path) or path
        if path.is_dir():
            return ""
    return file_sha256(path)


def _training_scale(path: Path) -> tuple[float | None, int | None]:
    """(pixel size, level) the model file was trained at, as far as it says."""
    from napari_medseg.sharing.package_files import model_file_kind

    if model_file_kind(path) == "checkpoint":
        from napari_medseg.models.checkpoint import load_checkpoint

        meta = load_checkpoint(path).meta
        px, lvl = meta.get("pixel_size"), meta.get("level")
        return (float(min(px)) if px else None), (int(lvl) if lvl is not None else None)
    from napari_medseg.sharing.model_files import describe_model_file

    px = describe_model_file(path).pixel_size
    return (float(min(px)) if px else None), None


def open_model(model: str | os.PathLike | nn.Module) -> _Model:
    """The model to rank with: a module (run where it is, its mode kept) or a model file (a checkpoint, a
    bioimage.io package, an ONNX / TorchScript file). A file that does not load is a ``MedsegError``."""
    if isinstance(model, nn.Module):
        training = model.training
        try:
            loaded = resolve_model(model, hash_weights=False)
        finally:
            model.train(training)
        return _Model(loaded, type(model).__name__, state_hash(model), None, None, owned=False)
    if not isinstance(model, (str, os.PathLike)):
        raise MedsegError(f"the model must be a model file or an nn.Module, got {type(model).__name__}")
    p = Path(model).expanduser()
    if not p.exists():
        raise MedsegError(f"model {p} does not exist; give a checkpoint (.pt), a bioimage.io package (.zip or "
                          "folder) or an .onnx / .ts file")
    try:
        loaded = resolve_model(p, hash_weights=False)
        px, lvl = _training_scale(p)
    except MedsegError:
        raise
    except Exception as e:  # a damaged package or file: the reader's own error, in one line
        raise MedsegError(f"{p}: the model could not be loaded ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]}); give a checkpoint (.pt), a bioimage.io "
                          "package or an .onnx / .ts file") from e
    return _Model(loaded, str(p.resolve()), _file_sha256(p), px, lvl, owned=True)


def choose_level(source: ImageSource, level: int | None, model: _Model) -> int:
    """``level`` when given (one outside the image is a ``MedsegError``), else the model's training level."""
    n = len(source.levels)
    if level is not None:
        if not 0 <= int(level) < n:
            raise MedsegError(f"level {level} does not exist; the image has levels 0..{n - 1}")
        return int(level)
    if model.pixel_size:
        return source.level_for_pixel_size(model.pixel_size)
    if model.level is not None:
        if not 0 <= model.level < n:
            log.warning("the model was trained at level %d; the image has levels 0..%d: ranking at level %d",
                        model.level, n - 1, min(max(0, model.level), n - 1))
        return min(max(0, model.level), n - 1)
    return 0


def _check_numbers(region_size: int, window: int, samples: int, max_regions: int, novelty_weight: float,
                   batch_size: int, threads: int | None) -> None:
    if int(region_size) < 16:
        raise MedsegError(f"region_size must be at least 16 pixels, got {region_size}")
    if int(window) < 1:
        raise MedsegError(f"window must be a positive number of pixels, got {window}")
    if int(region_size) < int(window):
        raise MedsegError(f"region_size ({region_size}) is smaller than the window ({window}); choose a region "
                          "at least one window wide, or a smaller window")
    if int(samples) < 1:
        raise MedsegError(f"samples_per_region must be at least 1, got {samples}")
    if int(max_regions) < 1:
        raise MedsegError(f"max_regions must be at least 1, got {max_regions}")
    if not float(novelty_weight) >= 0:
        raise MedsegError(f"novelty_weight must be >= 0, got {novelty_weight}")
    if int(batch_size) < 1:
        raise MedsegError(f"batch_size must be at least 1, got {batch_size}")
    if threads is not None and int(threads) < 1:
        raise MedsegError(f"threads must be at least 1, got {threads}")


def rank_regions(source: ImageSource, model: str | Path | nn.Module, *, store: Any = None,
                 level: int | None = None, region_size: int = 256, window: int = 128,
                 samples_per_region: int = 1, max_regions: int = 4096, novelty_weight: float = 0.0,
                 tissue: bool = True, device: str = "cpu", threads: int | None = None, batch_size: int = 16,
                 seed: int = 0, stop: threading.Event | None = None
                 ) -> Generator[RankProgress, None, RegionRanking]:
    """Rank the regions of ``source`` by ``model``'s uncertainty (see the module); yields ``RankProgress``,
    returns the ``RegionRanking``. ``store``: the image's ``LabelStore`` (painted fractions, novelty)."""
    t0 = time.perf_counter()
    _check_numbers(region_size, window, samples_per_region, max_regions, novelty_weight, batch_size, threads)
    if store is not None and tuple(store.shape) != tuple(source.shape):
        raise MedsegError(f"the labels have shape {tuple(store.shape)} but the image {source.name!r} has "
                          f"{tuple(source.shape)}: they belong to another image (or another pyramid level)")
    m = open_model(model)
    net = m.loaded.module
    was_training = net.training
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return (yield from _rank(source, m, store, level, int(region_size), int(window), int(samples_per_region),
                                 int(max_regions), float(novelty_weight), bool(tissue), device, int(batch_size),
                                 int(seed), stop, t0))
    finally:  # hand a model we were given back in its mode; torch's threads as they were
        net.train(was_training)
        if threads:
            torch.set_num_threads(old_threads)


def run_rank(*args: Any, on_event: Callable[[RankProgress], Any] | None = None, **kw: Any) -> RegionRanking:
    """``rank_regions(*args, **kw)`` run to its end, each ``RankProgress`` handed to ``on_event``."""
    return drive(rank_regions(*args, **kw), on_event)


@dataclass
class _Windows:
    starts: np.ndarray   # (n, ndim) level pixels
    region: np.ndarray   # (n,) the window's region (index into the grid, C order); -1: a painted region's reference


def _tissue_mask(source: ImageSource, tissue: bool) -> TissueMask | None:
    spec = resolve_tissue("auto", source) if tissue else None
    return compute_tissue_mask(source, method=spec) if spec else None


def _rank(source: ImageSource, m: _Model, store: Any, level: int | None, region_size: int, window: int,
          samples: int, max_regions: int, novelty_weight: float, tissue: bool, device: str, batch_size: int,
          seed: int, stop: threading.Event | None, t0: float) -> Generator[RankProgress, None, RegionRanking]:
    loaded = m.loaded
    lvl = choose_level(source, level, m)
    shape, ds, shape0 = source.level_shape(lvl), source.level_downsample(lvl), source.shape
    where = f"the image {source.name!r}"
    win, slicewise = plan.window_shape(loaded, shape, window, where)
    dev = resolve_device(device)
    if not m.owned:  # a model we do not own (e.g. the one being trained) runs where it is
        p = next(loaded.module.parameters(), None)
        dev = p.device if p is not None else dev
    norm = norm_for(loaded.norm or default_norm(source), source)
    check_model_input(loaded, source, win, dev, norm)
    tm = _tissue_mask(source, tissue)
    r_used, counts, starts, stops, boxes0, frac = plan.grow_until(shape, region_size, max_regions, ds, shape0, tm)
    on = np.flatnonzero(frac > 0)
    if on.size == 0:
        raise MedsegError(f"no tissue found in {where} (its tissue mask is empty), so there is nothing to rank; "
                          "rank every region with tissue=False (napari-medseg rank --all)")
    painted_all = painted_fraction(store, boxes0) if store is not None else np.zeros(len(boxes0))
    rng = np.random.default_rng(seed)
    reg_idx = np.repeat(on, samples)  # raster order: neighbouring windows share their source tiles
    w_starts = plan.place(rng, starts[reg_idx], stops[reg_idx], win, shape, tm, ds)
    refs = np.flatnonzero(painted_all >= PAINTED_MAX) if novelty_weight > 0 else np.zeros(0, np.int64)
    ref_starts = plan.centred_starts(plan.painted_centres(store, boxes0[refs]), win, shape, ds) if refs.size \
        else np.zeros((0, len(shape)), np.int64)
    wins = _Windows(np.concatenate([ref_starts, w_starts]).astype(np.int64),
                    np.concatenate([np.full(refs.size, -1), reg_idx]).astype(np.int64))
    log.info("ranking %s at level %d: %d regions of %d px on tissue (of %d), %d windows of %s", source.name, lvl,
             on.size, r_used, frac.size, len(wins.region), win)
    runner = WindowRunner(loaded.module, dev, batch_size=batch_size, amp=True,
                          model_dims=loaded.spatial_dims or len(shape), squeeze_axis=0 if slicewise else None,
                          keep_module=not m.owned)
    unc = np.full(len(wins.region), np.nan)
    desc = np.zeros((len(wins.region), 0), np.float32)
    done = 0
    total = len(wins.region)
    yield RankProgress(0, total, f"ranking {on.size} regions: {total} windows")
    batches = _batches(source, lvl, wins.starts, win, tm, ds, norm, runner, batch_size, novelty_weight > 0)
    with contextlib.closing(batches):
        while not (stop is not None and stop.is_set()):
            item = next(batches, None)
            if item is None:
                break
            done, u, d = item
            unc[done - len(u):done] = u
            if d is not None:
                if desc.shape[1] == 0:
                    desc = np.zeros((total, d.shape[1]), np.float32)
                desc[done - len(u):done] = d
            yield RankProgress(done, total, f"{done} of {total} windows")
    complete = done >= total
    return _assemble(source, m, lvl, r_used, counts, boxes0, frac, painted_all, wins, unc, desc, refs.size,
                     novelty_weight, complete, t0, done,
                     {"window": list(win), "samples_per_region": samples, "max_regions": max_regions,
                      "requested_region_size": region_size, "tissue": tm.method if tm is not None else "off",
                      "seed": seed, "batch_size": batch_size, "device": str(dev)})


def _batches(source: ImageSource, level: int, starts: np.ndarray, win: Sequence[int], tm: TissueMask | None,
             ds: Sequence[float], norm: NormConfig, runner: WindowRunner, batch_size: int, with_desc: bool
             ) -> Generator[tuple[int, np.ndarray, np.ndarray | None], None, None]:
    """(windows done, uncertainty per window, descriptor per window or None) per batch; the next batch's
    pixels are read (through ``inference.blocks.TileReader``) while the model runs on this one."""
    n = len(starts)
    spans = [(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]

    all_boxes = [tuple((int(a), int(a) + int(w)) for a, w in zip(st, win)) for st in starts]
    reader = TileReader(source, level)
    reader.plan(all_boxes)  # each source tile decoded once, kept until its last window is read

    def window(box: tuple[tuple[int, int], ...]) -> np.ndarray:
        got = reader.read(box)
        if got.valid == box:
            return got.data
        out = np.zeros(tuple(b - a for a, b in box) + (got.data.shape[-1],), got.data.dtype)
        out[tuple(slice(a - c, b - c) for (a, b), (c, _) in zip(got.valid, box))] = got.data
        return out

    def read(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        boxes = all_boxes[span[0]:span[1]]
        x = np.stack([window(b) for b in boxes])  # (n, *window, C), the source's dtype
        if tm is None:
            return x, None
        masks = [tm.pixels(b[-2:], ds) for b in boxes]
        if all(mk is None for mk in masks):
            return x, None
        plane = tuple(win[-2:])
        wt = np.stack([np.ones(plane, np.float32) if mk is None else mk.astype(np.float32) for mk in masks])
        return x, wt.reshape((len(boxes),) + (1,) * (len(win) - 2) + plane)

    if not spans:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-rank-read") as pool:
        nxt = pool.submit(read, spans[0])
        for i, span in enumerate(spans):
            x_np, wt_np = nxt.result()
            if i + 1 < len(spans):
                nxt = pool.submit(read, spans[i + 1])
            u, d = _score_batch(x_np, wt_np, norm, runner, with_desc)
            yield span[1], u, d


def _score_batch(x_np: np.ndarray, wt_np: np.ndarray | None, norm: NormConfig, runner: WindowRunner,
                 with_desc: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean normalised entropy per window over its tissue pixels (all pixels where it has none), and the
    windows' descriptors."""
    with torch.inference_mode():
        xc = torch.from_numpy(x_np).to(runner.device)  # channels last: the runner's layout on the CPU
        x = norm.apply(xc.permute(0, xc.ndim - 1, *range(1, xc.ndim - 1)))
        p = runner(x)  # (n, classes, *window) softmax
        e = entropy(p).flatten(1)  # (n, pixels) in [0, 1]
        if wt_np is not None:
            wt = torch.from_numpy(wt_np).to(e.device).flatten(1)
            s = wt.sum(1)
            u = torch.where(s > 0, (e * wt).sum(1) / s.clamp_min(1), e.mean(1))
        else:
            u = e.mean(1)
        d = None
        if with_desc:
            xf, pf = x.flatten(2), p.flatten(2)
            d = torch.cat([xf.mean(2), xf.std(2, correction=0), pf.mean(2)], 1).float().cpu().numpy()
        return u.float().cpu().numpy().astype(np.float64), d


def _novelty(desc: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Distance of each descriptor to its nearest reference (Euclidean), in blocks (bounded memory)."""
    r = torch.from_numpy(np.ascontiguousarray(ref, np.float32))
    out = np.zeros(len(desc))
    for i in range(0, len(desc), 2048):
        q = torch.from_numpy(np.ascontiguousarray(desc[i:i + 2048], np.float32))
        out[i:i + len(q)] = torch.cdist(q, r).min(dim=1).values.double().numpy()
    return out


def _assemble(source: ImageSource, m: _Model, lvl: int, r_used: int, counts: tuple[int, ...], boxes0: np.ndarray,
              frac: np.ndarray, painted_all: np.ndarray, wins: _Windows, unc: np.ndarray, desc: np.ndarray,
              n_refs: int, novelty_weight: float, complete: bool, t0: float, done: int,
              settings: dict[str, Any]) -> RegionRanking:
    n_cells = len(boxes0)
    scored_w = np.flatnonzero((wins.region >= 0) & np.isfinite(unc))
    reg = wins.region[scored_w]
    hits = np.bincount(reg, minlength=n_cells)
    u_sum = np.bincount(reg, weights=unc[scored_w], minlength=n_cells)
    scored = np.flatnonzero(hits > 0)
    uncertainty = np.zeros(n_cells)
    uncertainty[scored] = u_sum[scored] / hits[scored]
    novelty = np.zeros(n_cells)
    refs_done = n_refs > 0 and bool(np.isfinite(unc[:n_refs]).all())
    if novelty_weight > 0 and refs_done and scored.size:
        dist = _novelty(desc[scored_w], desc[:n_refs])
        nov_sum = np.bincount(reg, weights=dist, minlength=n_cells)
        novelty[scored] = nov_sum[scored] / hits[scored]
        top = float(novelty[scored].max())
        novelty = novelty / top if top > 0 else novelty * 0
    score = uncertainty * (1.0 + novelty_weight * novelty)
    heat = np.full(counts, np.nan, np.float32)
    heat.reshape(-1)[scored] = score[scored]
    best = scored[np.argsort(-score[scored], kind="stable")]
    regions = [RankedRegion(box=tuple((int(a), int(b)) for a, b in boxes0[i]), score=float(score[i]),
                            uncertainty=float(uncertainty[i]), novelty=float(novelty[i]),
                            painted=float(painted_all[i]), tissue=float(frac[i])) for i in best]
    ds = source.level_downsample(lvl)
    size = plan.region_sizes(r_used, len(counts))
    return RegionRanking(image=str(source.path or source.name), checkpoint=m.name, checkpoint_sha256=m.sha256,
                         level=lvl, region_size=size, cell_scale=tuple(float(s * d) for s, d in zip(size, ds)),
                         regions=regions, heatmap=heat, seconds=time.perf_counter() - t0, windows=int(done),
                         pixel_size=tuple(source.pixel_size), unit=source.unit, complete=complete,
                         image_shape=tuple(source.shape), novelty_weight=float(novelty_weight), settings=settings)
