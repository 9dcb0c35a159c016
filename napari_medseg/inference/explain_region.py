"""Explain the region in view: Grad-CAM of a class, the attention gates' coefficients or the transformer attention
map (``models.explain``; ``kind`` one of its ``KINDS``) over a region of one pyramid level, placed like the live
preview (``RegionPrediction``'s geometry).

The region is read whole (the preview caps it at 1024 px per in-plane axis), normalised as the model was
trained, padded with zeros to a size the model takes, explained, and cropped back. A 2D model over a volume
explains the slice in view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource, read_box
from napari_medseg.inference.modelrun import default_norm, norm_for, resolve_model
from napari_medseg.models.devices import resolve_device
from napari_medseg.models.explain import explain
from napari_medseg.models.normalization import NormConfig


@dataclass
class ExplainedRegion:
    maps: list[np.ndarray]         # each (*spatial) float32 in [0, 1]: one Grad-CAM or transformer map, or one per
                                   # attention gate
    kind: str
    class_index: int
    region: tuple[slice, ...]      # in pixels of ``level``
    level: int
    translate: tuple[float, ...]   # level-0 physical position of the first pixel's centre
    scale: tuple[float, ...]       # physical pixel size of ``level``
    seconds: float = 0.0


def _multiple(loaded) -> int:
    if loaded.config is not None:
        from napari_medseg.models.registry import required_multiple

        return required_multiple(loaded.config)
    return 32


def explain_region(model: nn.Module | str | Path, source: ImageSource, level: int, region: tuple[slice, ...],
                   norm: NormConfig | None = None, *, kind: str = "gradcam", class_index: int = 1,
                   device: str = "cpu") -> ExplainedRegion:
    """Explain ``region`` (slices over the spatial axes of ``level``) of ``source`` with ``model``; ``kind``:
    ``gradcam``, ``attention`` or ``transformer`` (``models.explain.KINDS``)."""
    t0 = time.perf_counter()
    loaded = resolve_model(model, hash_weights=False)
    shape = source.level_shape(level)
    reg = [(max(0, s.start or 0), min(n, n if s.stop is None else s.stop)) for s, n in zip(region, shape)]
    if len(reg) != len(shape) or any(b <= a for a, b in reg):
        raise MedsegError(f"the region {region} lies outside the image {shape}")
    md = loaded.spatial_dims or len(shape)
    lead = len(shape) - md
    if lead < 0:
        raise MedsegError(f"a {md}D model cannot explain a {len(shape)}D image")
    if any(b - a != 1 for a, b in reg[:lead]):
        raise MedsegError("a 2D model explains one slice of a volume: show a single slice (2D view)")
    norm = norm_for(norm or loaded.norm or default_norm(source), source)  # a bare module: uint8 images only
    x = torch.from_numpy(np.ascontiguousarray(read_box(source, level, reg, pad=0)))  # (C, *spatial)
    x = norm.apply(x[None])
    x = x.reshape(1, x.shape[1], *x.shape[2 + lead:])
    size = tuple(x.shape[2:])
    m = _multiple(loaded)
    padded = tuple(-(-s // m) * m for s in size)
    pads = [p for s, t in zip(reversed(size), reversed(padded)) for p in (0, t - s)]
    x = F.pad(x, pads)
    dev = resolve_device(device)
    net = loaded.module.to(dev)
    maps = explain(net, x.to(dev), kind, class_index)
    crop = (0,) + tuple(slice(0, s) for s in size)
    out = [mp[crop].reshape((1,) * lead + size).float().cpu().numpy() for mp in maps]
    ds = source.level_downsample(level)
    p0 = source.pixel_size
    translate = tuple((a * d + (d - 1) / 2) * p for (a, _), d, p in zip(reg, ds, p0))
    return ExplainedRegion(out, kind, int(class_index), tuple(slice(a, b) for a, b in reg), level, translate,
                           tuple(source.level_pixel_size(level)), time.perf_counter() - t0)
