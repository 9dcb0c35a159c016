"""Swin family: ``swin_unetr`` (MONAI's SwinUNETR) and ``swin_unet`` (Swin-Unet, see ``swin_unet.py``).

Both take ``(N, in_channels, *spatial)`` (NCHW / NCDHW) and return logits of the same spatial size. Width is
``ModelConfig.feature_size`` (the embedding width C; stage ``i`` has ``C * 2**i`` features), depth and heads
per stage come from ``depths`` / ``num_heads``, ``window_size`` is the attention window (per axis).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn as nn
from monai.networks.nets import SwinUNETR

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.base import ModelEntry
from napari_medseg.models.config import ModelConfig

log = logging.getLogger(__name__)

SWIN_UNET_PATCH = 4
SWIN_UNETR_PATCH = 2


def _check_stages(cfg: ModelConfig, exactly: int | None = None) -> None:
    d, h = cfg.depths, cfg.num_heads
    if exactly is not None and len(d) != exactly:
        raise MedsegError(f"{cfg.name} has exactly {exactly} Swin stages: give {exactly} depths and heads, "
                          f"e.g. depths (2, 2, 2, 2) and num_heads (3, 6, 12, 24); got depths {d}")
    if len(d) != len(h) or len(d) < 2:
        raise MedsegError(f"{cfg.name} needs as many depths as num_heads (at least 2 stages); "
                          f"got depths {d} and num_heads {h}")
    if any(v < 1 for v in d + h) or cfg.window_size < 1 or cfg.feature_size < 1:
        raise MedsegError(f"{cfg.name} needs positive depths, heads, window_size and feature_size")
    widths = [cfg.feature_size * 2**i for i in range(len(d))]
    bad = [(w, n) for w, n in zip(widths, h) if w % n]
    if bad:
        raise MedsegError(f"{cfg.name}: stage widths {widths} (feature_size {cfg.feature_size} doubling per stage) "
                          f"must divide by their heads {h}; e.g. feature_size 24 with heads (3, 6, 12, 24)")


class MedsegSwinUNETR(SwinUNETR):
    """MONAI's SwinUNETR whose size check raises ``MedsegError`` (same weights, same state dict keys)."""

    @torch.jit.unused
    def _check_input_size(self, spatial_shape) -> None:
        m = self.patch_size**5
        shape = tuple(int(s) for s in spatial_shape)
        if any(s % m for s in shape):
            raise MedsegError(f"swin_unetr needs spatial sizes that are multiples of {m}; got {shape}. "
                              f"Crop or pad to e.g. {max(m, round(shape[0] / m) * m)} "
                              f"(check_input_size names the nearest valid sizes)")


def _swin_unet_multiple(cfg: ModelConfig) -> int:
    return SWIN_UNET_PATCH * 2 ** (len(cfg.depths) - 1)


def build_swin_unetr(cfg: ModelConfig) -> nn.Module:
    """MONAI's SwinUNETR (Hatamizadeh et al. 2022): Swin encoder, convolutional decoder; 2D and 3D.

    Needs ``feature_size`` divisible by 12 and four stages; sizes multiple of 32. Requires ``einops``.
    """
    _check_stages(cfg, exactly=4)
    if cfg.feature_size % 12:
        raise MedsegError(f"swin_unetr needs feature_size divisible by 12 (e.g. 12, 24, 48); got {cfg.feature_size}")
    if importlib.util.find_spec("einops") is None:
        raise MedsegError("swin_unetr needs the 'einops' package (MONAI uses it); install it with "
                          "'pip install einops' or choose swin_unet")
    model = MedsegSwinUNETR(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        patch_size=SWIN_UNETR_PATCH,
        depths=cfg.depths,
        num_heads=cfg.num_heads,
        window_size=cfg.window_size,
        feature_size=cfg.feature_size,
        norm_name=cfg.norm,
        drop_rate=cfg.dropout,
        spatial_dims=cfg.spatial_dims,
    )
    model.dynamic_spatial_export = False  # window clamping/padding depend on the size (see export.py)
    return model


def build_swin_unet(cfg: ModelConfig) -> nn.Module:
    """Swin-Unet (Cao et al. 2021) on MONAI's Swin blocks; 2D and 3D; sizes multiple of 4 * 2**(stages-1)."""
    from napari_medseg.models.swin_unet import SwinUnet

    _check_stages(cfg)
    return SwinUnet(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        embed_dim=cfg.feature_size,
        depths=cfg.depths,
        num_heads=cfg.num_heads,
        window_size=cfg.window_size,
        patch_size=SWIN_UNET_PATCH,
        drop_rate=cfg.dropout,
    )


#: the models of this family, merged by ``registry``
ENTRIES: dict[str, ModelEntry] = {
    # SwinUNETR's full-resolution convolutional decoder makes feature_size 24 twice as slow on a CPU: halve it
    "swin_unetr": ModelEntry(build_swin_unetr, multiple=SWIN_UNETR_PATCH**5,
                             presets={"small": {"feature_size": 12}, "base": {"feature_size": 48}}),
    "swin_unet": ModelEntry(build_swin_unet, multiple=_swin_unet_multiple, min_size=_swin_unet_multiple,
                            presets={"base": {"feature_size": 96}}),
}
