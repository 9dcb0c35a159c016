"""Live preview: predict just a region of one pyramid level (the current view), fast, in memory.

``predict_region`` reads the region (plus a little real context so the model sees a valid size),
normalises it on the device and runs the model in one pass (``window=None``, for views up to
``max_side`` pixels) or with MONAI's Gaussian sliding window (``window`` given, or larger views).
Results are numpy arrays over exactly the region: labels ``uint8`` (0 = background), optionally
probabilities ``(C, *spatial)`` float16 and the teacher's predictive entropy in [0, 1] (float32).
``translate``/``scale`` place the result over the image in level-0 physical units (napari layer kwargs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from napari_medseg.core.compute import materialize
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import SPATIAL_AXES, ImageSource
from napari_medseg.inference.modelrun import LoadedModel, model_multiple, resolve_device, resolve_model
from napari_medseg.models.normalization import NormConfig
from napari_medseg.models.uncertainty import predictive_entropy

log = logging.getLogger(__name__)
_MODELS: dict[tuple[str, int], LoadedModel] = {}


@dataclass
class RegionPrediction:
    labels: np.ndarray                 # (*spatial) uint8, 0 = background, k = class k
    probs: np.ndarray | None           # (C, *spatial) float16
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
        _MODELS[key] = resolve_model(p)
    return _MODELS[key]


def _read(source: ImageSource, level: int, box: list[tuple[int, int]]) -> np.ndarray:
    """Pixels of ``box`` (clipped to the image, zero outside) as (C, *spatial)."""
    arr = source.levels[level]
    shape = source.level_shape(level)
    valid = [(max(0, a), min(s, b)) for (a, b), s in zip(box, shape)]
    idx: list[slice] = []
    k = 0
    for ax in source.axes:
        if ax in SPATIAL_AXES:
            idx.append(slice(*valid[k]))
            k += 1
        else:
            idx.append(slice(None))
    a = materialize(arr[tuple(idx)])
    c = source.channel_axis
    a = a[None] if c is None else np.moveaxis(a, c, 0)
    pads = [(0, 0)] + [(va - a0, b0 - vb) for (a0, b0), (va, vb) in zip(box, valid)]
    if any(p != (0, 0) for p in pads):
        a = np.pad(a, pads)
    return a


def predict_region(model: nn.Module | str | Path, source: ImageSource, level: int, region: tuple[slice, ...],
                   norm: NormConfig, *, window=None, overlap: float = 0.25, device: str = "cpu",
                   with_probs: bool = False, uncertainty_model: nn.Module | None = None, amp: bool = False,
                   max_side: int = 2048, batch_size: int = 4, uncertainty_samples: int = 4) -> RegionPrediction:
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
    loaded = _loaded(model)
    dev = resolve_device(device)
    if isinstance(model, nn.Module):  # a model we do not own (e.g. the one being trained): never moved
        dev = _device_of(model, dev)
    net = loaded.module.to(dev)
    modes = [(net, net.training)] + ([(uncertainty_model, uncertainty_model.training)] if uncertainty_model else [])
    try:
        net.eval()
        if uncertainty_model is not None:
            uncertainty_model.eval()
        return _predict(net, loaded, source, level, reg, norm, window, overlap, dev, with_probs, uncertainty_model,
                        amp, max_side, batch_size, uncertainty_samples, t0)
    finally:  # hand the models back in the mode they came in (training continues undisturbed)
        for m, was_training in modes:
            m.train(was_training)


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else default


def _predict(net, loaded, source, level, reg, norm, window, overlap, dev, with_probs, uncertainty_model, amp,
             max_side, batch_size, uncertainty_samples, t0) -> RegionPrediction:
    shape = source.level_shape(level)
    nd = len(shape)
    md = loaded.spatial_dims or (2 if nd == 2 else 3)
    if loaded.in_channels is not None and loaded.in_channels != source.n_channels:
        raise MedsegError(f"the model takes {loaded.in_channels} input channel(s) but the image has "
                          f"{source.n_channels}")
    mult = model_multiple(loaded)
    slicewise = md == 2 and nd == 3
    sizes = [b - a for a, b in reg]
    plane = sizes[1:] if slicewise else sizes
    single = window is None and max(plane) <= max_side
    if single:
        # grow the in-plane box to a multiple the model takes, with real context where the image has it
        box = list(reg)
        for d in range(nd - len(plane), nd):
            a, b = reg[d]
            need = -(-(b - a) // mult) * mult
            extra = need - (b - a)
            a2 = max(0, min(a - extra // 2, shape[d] - need)) if need <= shape[d] else a - extra // 2
            box[d] = (a2, a2 + need)
    else:
        box = list(reg)
    x = torch.from_numpy(_read(source, level, box)).to(dev)
    x = norm.apply(x[None])  # (1, C, *box) float32
    if slicewise:  # 2D model over a volume region: the slices are the batch
        x = x[0].permute(1, 0, 2, 3)  # (Z, C, Y, X)
    autocast = torch.autocast("cuda", dtype=torch.float16) if (amp and dev.type == "cuda") else None

    def probs_of(t: torch.Tensor) -> torch.Tensor:
        if autocast is not None:
            with autocast:
                return torch.softmax(net(t).float(), 1)
        return torch.softmax(net(t).float(), 1)

    with torch.inference_mode():
        if single:
            p = torch.cat([probs_of(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
            unc = None
            if uncertainty_model is not None:
                um = uncertainty_model
                ux = x.to(_device_of(um, dev))
                unc = torch.cat([predictive_entropy(um, ux[i:i + batch_size], n_samples=uncertainty_samples).to(dev)
                                 for i in range(0, x.shape[0], batch_size)])
        else:
            from monai.inferers import sliding_window_inference

            win = tuple(int(w) for w in (window or (min(1024, max_side),) * len(plane)))[-len(plane):]
            win = tuple(max(mult, (w // mult) * mult) for w in win)
            p = sliding_window_inference(x, win, batch_size, probs_of, overlap=overlap, mode="gaussian")
            unc = None
            if uncertainty_model is not None:
                um = uncertainty_model
                udev = _device_of(um, dev)
                unc = sliding_window_inference(
                    x, win, batch_size,
                    lambda t: predictive_entropy(um, t.to(udev), n_samples=uncertainty_samples)[:, None].to(t.device),
                    overlap=overlap, mode="gaussian")[:, 0]
    if slicewise:
        p = p.permute(1, 0, 2, 3)[None]  # (1, C, Z, Y, X)
        unc = unc[None] if unc is not None else None
    crop = tuple(slice(a - ba, b - ba) for (a, b), (ba, _) in zip(reg, box))
    p = p[(0, slice(None)) + crop]
    labels = torch.argmax(p, 0).to(torch.uint8).cpu().numpy()
    probs = p.to(torch.float16).cpu().numpy() if with_probs else None
    uncertainty = unc[(0,) + crop].float().clamp(0, 1).cpu().numpy() if unc is not None else None
    ds = source.level_downsample(level)
    p0 = source.pixel_size
    translate = tuple((a * d + (d - 1) / 2) * p for (a, _), d, p in zip(reg, ds, p0))
    scale = tuple(source.level_pixel_size(level))
    out_region = tuple(slice(a, b) for a, b in reg)
    return RegionPrediction(labels, probs, uncertainty, out_region, level, translate, scale,
                            time.perf_counter() - t0)
