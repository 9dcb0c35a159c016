"""Helpers for the guidance tests: images whose halves a model is sure / unsure about, and tiny models.

Imported as ``from guide_helpers import ...`` (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from napari_medseg.core.source import ImageSource
from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint


class GreyModel(nn.Module):
    """Two classes from one grey channel (normalised to 0..1): sure near 0 and 1, unsure at 0.5 (its softmax
    is 50 / 50 there). ``zero=True``: unsure everywhere (every logit 0)."""

    def __init__(self, sharpness: float = 12.0, zero: bool = False, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv = conv(1, 2, 1)
        with torch.no_grad():
            k = 0.0 if zero else sharpness
            self.conv.weight.zero_()
            self.conv.weight[0].fill_(k)
            self.conv.weight[1].fill_(-k)
            self.conv.bias.copy_(torch.tensor([-k / 2, k / 2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def half_image(h: int = 256, w: int = 256, seed: int = 0, sure_left: bool = True) -> np.ndarray:
    """YX uint8: one half near white (the model is sure there), the other mid-grey (unsure), with noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w), np.float32)
    sure, unsure = (slice(0, w // 2), slice(w // 2, w)) if sure_left else (slice(w // 2, w), slice(0, w // 2))
    img[:, sure] = 245
    img[:, unsure] = 128
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def grey_source(img: np.ndarray, pixel_size=None, name: str = "grey", levels: int = 1) -> ImageSource:
    axes = "ZYX" if img.ndim == 3 else "YX"
    lv = [img]
    for _ in range(levels - 1):
        prev = lv[-1]
        lv.append(np.ascontiguousarray(prev[..., ::2, ::2]))
    return ImageSource(levels=lv, axes=axes, pixel_size=pixel_size or (1.0,) * img.ndim, name=name)


def unet_checkpoint(path: Path, in_channels: int = 1, dims: int = 2, meta: dict | None = None) -> Path:
    """A tiny (untrained) UNet saved as a napari-medseg checkpoint with a uint8 normalisation."""
    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=dims, in_channels=in_channels, out_channels=2, channels=(4, 8), num_res_units=0,
                      norm="batch")
    ck = Checkpoint(cfg, build_model(cfg).state_dict(), norm=NormConfig.uint8(in_channels), meta=dict(meta or {}))
    return save_checkpoint(path, ck)
