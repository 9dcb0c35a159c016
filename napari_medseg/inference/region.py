"""Live preview: predict just a region of one pyramid level (the current view), fast, in memory.

``predict_region`` goes through the tiled predictor's own parts: the region is read once
(``core.source.read_box``), its windows run through ``modelrun.WindowRunner`` and are blended by
``engine.BlockEngine``, and the finished blocks are merged into arrays in memory (no output store):

- ``window=None`` and a view up to ``max_side`` pixels: one window over the view (one per slice for a 2D
  model over a volume), grown to a size the model takes with real image context where the image has it,
  then cropped back;
- otherwise (``window`` given, or a larger view) the Gaussian sliding window over exactly the region,
  MONAI's grid and zero padding (``tiling.py``): the probabilities ``predict`` writes for an image that is
  this region.

Results are numpy arrays over exactly the region: labels ``uint8`` (0 = background), optionally
probabilities ``(C, *spatial)`` (float16, or ``probs_dtype``) and the teacher's predictive entropy in
[0, 1] (float32, blended like the probabilities). ``translate``/``scale`` place the result over the image in
level-0 physical units (napari layer kwargs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource, read_box
from napari_medseg.inference.blocks import ArrayReader
from napari_medseg.inference.engine import BlockEngine, FinishedBlock
from napari_medseg.inference.modelrun import (
    LoadedModel,
    WindowRunner,
    fit_window,
    model_multiple,
    norm_for,
    resolve_model,
)
from napari_medseg.inference.output import class_labels
from napari_medseg.inference.tiling import (
    BlockGrid,
    WindowGrid,
    box_slices,
    default_block,
    intersect,
    plan_blocks,
)
from napari_medseg.models.devices import resolve_device
from napari_medseg.models.normalization import NormConfig
from napari_medseg.models.uncertainty import predictive_entropy

log = logging.getLogger(__name__)
_MODELS: dict[tuple[str, int], LoadedModel] = {}
Box = list[tuple[int, int]]


@dataclass
class RegionPrediction:
    labels: np.ndarray                 # (*spatial) uint8, 0 = background, k = class k
    probs: np.ndarray | None           # (C, *spatial) float16 (or the probs_dtype asked for)
    uncertainty: np.ndarray | None     # (*spatial) float32 in [0, 1]
    region: tuple[slice, ...]          # in pixels of ``level`` (clipped to the image)
    level: int
    translate: tuple[float, ...]       # level-0 physical position of the first pixel's centre
    scale: tuple[float, ...]           # physical pixel size of ``level``
    seconds: float = 0.0


def _loaded(model: nn.Module | str | Path) -> LoadedModel:
    if isinstance(model, nn.Module):
        training = model.training
        loaded = resolve_model(model, hash_weights=False)
        model.train(training)  # resolve_model switched it to eval; predict_region restores modes itself
        return loaded
    p = Path(model)
    key = (str(p.resolve()), p.stat().st_mtime_ns if p.exists() else 0)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = resolve_model(p, hash_weights=False)  # a preview has no manifest: no identity needed
    return _MODELS[key]


def predict_region(model: nn.Module | str | Path, source: ImageSource, level: int, region: tuple[slice, ...],
                   norm: NormConfig, *, window=None, overlap: float = 0.25, device: str = "cpu",
                   with_probs: bool = False, uncertainty_model: nn.Module | None = None, amp: bool = False,
                   max_side: int = 2048, batch_size: int = 4, uncertainty_samples: int = 4,
                   probs_dtype: str = "float16") -> RegionPrediction:
    """Predict ``region`` (slices over the spatial axes of ``level``) of ``source``."""
    t0 = time.perf_counter()
    if not 0 <= level < len(source.levels):
        raise MedsegError(f"level {level} does not exist; the image has levels 0..{len(source.levels) - 1}")
    shape = source.level_shape(level)
    if len(region) != len(shape):
        raise MedsegError(f"region needs one slice per spatial axis {source.spatial_axes!r}, got {len(region)}")
    reg = [(max(0, s.start or 0), min(n, n if s.stop is None else s.stop)) for s, n in zip(region, shape)]
    if any(b <= a for a, b in reg):
        raise MedsegError(f"the region {region} lies outside the image {shape}")
    if probs_dtype not in ("float16", "float32"):
        raise MedsegError(f"probs_dtype must be 'float16' or 'float32', got {probs_dtype!r}")
    loaded = _loaded(model)
    norm = norm_for(norm, source)  # a bioimage.io model's percentiles / mean: of the whole image, not the view
    dev = resolve_device(device)
    owned = not isinstance(model, nn.Module)
    if not owned:  # a model we do not own (e.g. the one being trained): never moved
        dev = _device_of(model, dev)
    net = loaded.module
    modes = [(net, net.training)] + ([(uncertainty_model, uncertainty_model.training)] if uncertainty_model else [])
    try:
        net.eval()
        if uncertainty_model is not None:
            uncertainty_model.eval()
        labels, probs, unc = _predict(net, loaded, source, level, reg, norm, window, overlap, dev, owned,
                                      with_probs, probs_dtype, uncertainty_model, amp, max_side, batch_size,
                                      uncertainty_samples)
    finally:  # hand the models back in the mode they came in (training continues undisturbed)
        for m, was_training in modes:
            m.train(was_training)
    ds = source.level_downsample(level)
    p0 = source.pixel_size
    translate = tuple((a * d + (d - 1) / 2) * p for (a, _), d, p in zip(reg, ds, p0))
    return RegionPrediction(labels, probs, unc, tuple(slice(a, b) for a, b in reg), level, translate,
                            tuple(source.level_pixel_size(level)), time.perf_counter() - t0)


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else default


def _grown(reg: Box, shape: tuple[int, ...], axes: range, mult: int, least: int = 0) -> Box:
    """``reg`` grown along ``axes`` to multiples of ``mult``, centred, with real context where the image has
    it (shifted inside the image; beyond an image smaller than that, zero padding)."""
    box = list(reg)
    for d in axes:
        a, b = reg[d]
        need = max(-(-(b - a) // mult) * mult, -(-least // mult) * mult)
        extra = need - (b - a)
        a2 = max(0, min(a - extra // 2, shape[d] - need)) if need <= shape[d] else a - extra // 2
        box[d] = (a2, a2 + need)
    return box


def _predict(net: nn.Module, loaded: LoadedModel, source: ImageSource, level: int, reg: Box, norm: NormConfig,
             window: Any, overlap: float, dev: torch.device, owned: bool, with_probs: bool, probs_dtype: str,
             uncertainty_model: nn.Module | None, amp: bool, max_side: int, batch_size: int,
             uncertainty_samples: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    shape = source.level_shape(level)
    nd = len(shape)
    md = loaded.spatial_dims or (2 if nd == 2 else 3)
    if loaded.in_channels is not None and loaded.in_channels != source.n_channels:
        raise MedsegError(f"the model takes {loaded.in_channels} input channel(s) but the image has "
                          f"{source.n_channels}")
    mult = model_multiple(loaded)
    slicewise = md == 2 and nd == 3
    lead = 1 if slicewise else 0  # a 2D model over a volume: windows of one slice
    plane = [b - a for a, b in reg][lead:]
    rule = loaded.window_rule
    if window is None and rule and any(step == 0 for _, step in rule):  # fixed-size model: its own windows
        window = tuple(lo for lo, _ in rule)
    if window is None and max(plane) <= max_side:
        box = _grown(reg, shape, range(lead, nd), mult, max((lo for lo, _ in rule), default=0) if rule else 0)
        win = (1,) * lead + tuple(b - a for a, b in box[lead:])
        blend = "crop"  # one window per view (per slice): its probabilities as they are
    else:
        box = list(reg)
        win = tuple(int(w) for w in (window or (min(1024, max_side),) * len(plane)))[-len(plane):]
        win = (1,) * lead + (fit_window(loaded, win) if rule else tuple(max(mult, (w // mult) * mult) for w in win))
        blend = "gaussian"
    gshape = tuple(b - a for a, b in box)
    grid = WindowGrid(gshape, win, float(overlap), blend)
    blocks = BlockGrid(gshape, default_block(win, grid.intervals, gshape, md))
    plan = plan_blocks(grid, blocks, list(blocks.indices()))
    reader = ArrayReader(read_box(source, level, box, pad=0, channels_last=True), level)
    runner = WindowRunner(net, dev, batch_size=max(1, min(int(batch_size), grid.n_windows)), amp=amp,
                          model_dims=md, squeeze_axis=0 if slicewise else None, keep_module=not owned)
    extra = _entropy_fn(uncertainty_model, dev, slicewise, uncertainty_samples) if uncertainty_model else None
    engine = BlockEngine(plan, reader, runner, norm, None, extra_fn=extra)
    # the region inside the grid (which may hold context around it), and the merged outputs
    rbox = tuple((a - ba, b - ba) for (a, b), (ba, _) in zip(reg, box))
    out_shape = tuple(b - a for a, b in reg)
    labels = np.zeros(out_shape, np.uint8)
    probs: np.ndarray | None = None
    unc = np.zeros(out_shape, np.float32) if extra is not None else None
    tdtype = torch.float16 if probs_dtype == "float16" else torch.float32
    for item in engine.run():
        if not isinstance(item, FinishedBlock):
            continue
        inter = intersect(item.box, rbox)
        if inter is not None:
            src = box_slices(inter, [a for a, _ in item.box])
            dst = box_slices(inter, [a for a, _ in rbox])
            p = item.probs[(slice(None),) + src]
            labels[dst] = class_labels(p, loaded.classes).cpu().numpy()
            if with_probs:
                if probs is None:
                    probs = np.zeros((p.shape[0], *out_shape), probs_dtype)
                probs[(slice(None),) + dst] = p.to(tdtype).cpu().numpy()
            if unc is not None and item.extra is not None:
                unc[dst] = item.extra[src].float().clamp(0, 1).cpu().numpy()
        engine.release(item.probs)
    return labels, probs, unc


def _entropy_fn(model: nn.Module, dev: torch.device, slicewise: bool, n_samples: int) -> Any:
    """The block engine's extra map: ``model``'s predictive entropy of a normalised batch, ``(N, *window)``."""
    udev = _device_of(model, dev)

    def fn(batch: torch.Tensor) -> torch.Tensor:
        x = batch.squeeze(2) if slicewise else batch
        with torch.inference_mode():
            e = predictive_entropy(model, x.to(udev), n_samples=n_samples).to(batch.device)
        return e.unsqueeze(1) if slicewise else e

    return fn
