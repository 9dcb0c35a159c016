"""U-Net family from MONAI: ``unet`` (residual U-Net), ``attention_unet``, ``unetpp`` (U-Net++).

Every builder maps ``(N, in_channels, *spatial)`` (NCHW or NCDHW) to logits ``(N, out_channels, *spatial)``.
Widths come from ``ModelConfig.channels`` (one entry per resolution level, ``len - 1`` downsamplings by 2),
so every spatial size must be a multiple of ``2 ** (len(channels) - 1)``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.base import ModelEntry
from napari_medseg.models.config import ModelConfig

log = logging.getLogger(__name__)


def _strides(cfg: ModelConfig) -> tuple[int, ...]:
    return (2,) * (len(cfg.channels) - 1)


def _levels_multiple(cfg: ModelConfig) -> int:
    return 2 ** (len(cfg.channels) - 1)


def _check_channels(cfg: ModelConfig, exactly: int | None = None) -> None:
    if exactly is not None and len(cfg.channels) != exactly:
        raise MedsegError(f"{cfg.name} has a fixed depth of {exactly} levels: give {exactly} channel widths "
                          f"(e.g. (16, 32, 64, 128, 256)), got {cfg.channels}")
    if len(cfg.channels) < 2 or any(c < 1 for c in cfg.channels):
        raise MedsegError(f"{cfg.name} needs at least two positive channel widths, got {cfg.channels}")


def build_unet(cfg: ModelConfig) -> nn.Module:
    """MONAI's residual U-Net (Kerfoot et al. 2018) with ``num_res_units`` residual units per level."""
    from monai.networks.nets import UNet

    _check_channels(cfg)
    return UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        channels=cfg.channels,
        strides=_strides(cfg),
        num_res_units=cfg.num_res_units,
        norm=cfg.norm,
        act=cfg.act.upper(),
        dropout=cfg.dropout,
    )


def build_attention_unet(cfg: ModelConfig) -> nn.Module:
    """MONAI's Attention U-Net (Oktay et al. 2018): attention gates on every skip connection.

    MONAI's implementation uses batch normalisation internally; ``cfg.norm`` is not used.
    """
    from monai.networks.nets import AttentionUnet

    _check_channels(cfg)
    return AttentionUnet(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        channels=cfg.channels,
        strides=_strides(cfg),
        dropout=cfg.dropout,
    )


def _monai_norm(norm: str) -> str | tuple:
    n = norm.lower()
    return ("instance", {"affine": True}) if n == "instance" else n


class UNetPlusPlus(nn.Module):
    """U-Net++ (Zhou et al. 2018) on MONAI's ``BasicUNetPlusPlus`` returning one logits tensor.

    MONAI returns a list of heads. Here ``forward`` returns the mean of the four nested decoder heads
    (the paper's "accurate mode"), so every head gets gradients and the output has the input's spatial size;
    ``heads(x)`` returns the four heads (shallowest first) for a deep-supervision loss.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNetPlusPlus

        c = cfg.channels
        self.net = BasicUNetPlusPlus(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            features=(*c, c[0]),
            deep_supervision=True,
            norm=_monai_norm(cfg.norm),
            dropout=cfg.dropout,
        )

    def heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.net(x)
        y = outs[0]
        for o in outs[1:]:
            y = y + o
        return y / len(outs)


def build_unetpp(cfg: ModelConfig) -> nn.Module:
    """U-Net++ with widths ``cfg.channels`` (exactly five levels, four downsamplings: sizes multiple of 16)."""
    _check_channels(cfg, exactly=5)
    return UNetPlusPlus(cfg)


#: the "base" preset: the widths of the U-Net papers (the "small" one is ModelConfig's default)
BASE_WIDTHS = {"channels": (32, 64, 128, 256, 512)}

#: the models of this family, merged by ``registry``
ENTRIES: dict[str, ModelEntry] = {
    "unet": ModelEntry(build_unet, multiple=_levels_multiple, presets={"base": BASE_WIDTHS}),
    "attention_unet": ModelEntry(build_attention_unet, multiple=_levels_multiple, presets={"base": BASE_WIDTHS}),
    "unetpp": ModelEntry(build_unetpp, multiple=16, presets={"base": BASE_WIDTHS}),
}
