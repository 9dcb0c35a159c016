"""U-Net family from MONAI: ``unet`` (residual U-Net), ``attention_unet``, ``unetpp`` (U-Net++)."""

from __future__ import annotations

import torch.nn as nn

from .config import ModelConfig
from .registry import register


def _strides(cfg: ModelConfig) -> tuple[int, ...]:
    return (2,) * (len(cfg.channels) - 1)


@register("unet", multiple=lambda cfg: 2 ** (len(cfg.channels) - 1))
def build_unet(cfg: ModelConfig) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        channels=cfg.channels,
        strides=_strides(cfg),
        num_res_units=cfg.num_res_units,
        norm=cfg.norm,
        dropout=cfg.dropout,
    )
