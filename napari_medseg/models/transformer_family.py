"""Global-attention family: ``transunet`` (``transunet.py``) and ``unetr`` (MONAI's UNETR), 2D and 3D.

Both put a plain ViT (global self-attention over every token) in the encoder; ``ModelConfig.feature_size`` is
the transformer's hidden width, ``depths = (layers,)`` and ``num_heads = (heads,)`` (one entry each: a ViT
has one stage). ``transunet`` takes its CNN widths from ``channels``; ``unetr`` uses ``channels[0]`` as its
decoder's base width (MONAI's ``feature_size``: ``c0, 2 c0, 4 c0, 8 c0``).

Position embeddings are learned on a fixed reference grid and resized to each input's token grid
(``transunet.resample_grid``), so the state dict does not depend on the patch size and a model predicts
windows other than its training patch. Because the resizing is Python control flow on the input size, the
graphs export to TorchScript / ONNX at a fixed size (``dynamic_spatial_export = False``, like the Swin models).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import UNETR

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.base import ModelEntry
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.transunet import MLP_RATIO, POS_GRID, TransUNet, drop_unused_norms, resample_grid

#: UNETR's patch size (MONAI fixes it at 16: four 2x upsamplings back to full resolution)
UNETR_PATCH = 16
NORMS = ("instance", "batch")


def _check_vit(cfg: ModelConfig) -> tuple[int, int, int]:
    """``(hidden, layers, heads)`` from ``cfg``, or a ``MedsegError`` naming the fields and valid values."""
    if len(cfg.depths) != 1 or len(cfg.num_heads) != 1:
        raise MedsegError(f"{cfg.name} has one transformer stage: give depths (layers,) and num_heads (heads,), "
                          f"e.g. depths (6,) and num_heads (4,) (registry.preset({cfg.name!r}) sets them); "
                          f"got depths {cfg.depths} and num_heads {cfg.num_heads}")
    hidden, layers, heads = cfg.feature_size, cfg.depths[0], cfg.num_heads[0]
    if hidden < 1 or layers < 1 or heads < 1:
        raise MedsegError(f"{cfg.name} needs a positive feature_size (hidden width), depths and num_heads; "
                          f"got {hidden}, {cfg.depths}, {cfg.num_heads}")
    if hidden % heads:
        raise MedsegError(f"{cfg.name}: feature_size (hidden width) {hidden} must divide by num_heads {heads}, "
                          f"e.g. 192 with 4 heads or 768 with 12")
    if cfg.norm not in NORMS:
        raise MedsegError(f"{cfg.name} takes norm {' or '.join(NORMS)}, got {cfg.norm!r}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise MedsegError(f"dropout must be in [0, 1), got {cfg.dropout}")
    return hidden, layers, heads


def build_transunet(cfg: ModelConfig) -> nn.Module:
    """TransUNet (``transunet.py``): CNN stem of widths ``channels``, ViT, cascaded upsampler with skips."""
    hidden, layers, heads = _check_vit(cfg)
    if len(cfg.channels) < 2 or any(c < 1 for c in cfg.channels):
        raise MedsegError(f"transunet needs at least two positive channel widths (CNN stem levels, each halving "
                          f"the size), "
                          f"got {cfg.channels}")
    if cfg.num_res_units < 1:
        raise MedsegError(f"transunet needs num_res_units >= 1 (residual blocks per stem level), "
                          f"got {cfg.num_res_units}")
    return TransUNet(cfg.spatial_dims, cfg.in_channels, cfg.out_channels, cfg.channels, hidden, layers, heads,
                     blocks=cfg.num_res_units, norm=cfg.norm, dropout=cfg.dropout)


class MedsegUNETR(UNETR):
    """MONAI's UNETR (Hatamizadeh et al. 2022) with ``layers`` transformer blocks (MONAI fixes 12) and a
    position embedding resized to each input's token grid. Skips tap the blocks ``k * layers // 4`` (k = 1, 2,
    3: MONAI's 3, 6, 9 for 12 layers). State dict keys are MONAI's."""

    dynamic_spatial_export = False

    def __init__(self, layers: int, **kw) -> None:
        super().__init__(**kw)
        self.vit.blocks = self.vit.blocks[:layers]
        drop_unused_norms(self.vit.blocks)
        self.taps = tuple(k * layers // 4 for k in (1, 2, 3))

    def _check_size(self, shape: tuple[int, ...]) -> None:
        if any(s % UNETR_PATCH or s < UNETR_PATCH for s in shape):
            raise MedsegError(f"unetr needs spatial sizes that are multiples of {UNETR_PATCH}; got {shape} "
                              f"(check_input_size names the nearest valid sizes)")

    def _map(self, t: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            self._check_size(tuple(int(s) for s in x_in.shape[2:]))
        pe = self.vit.patch_embedding
        e = pe.patch_embeddings(x_in)
        grid = tuple(e.shape[2:])
        d = len(grid)
        pos = pe.position_embeddings.transpose(1, 2).reshape(1, -1, *(POS_GRID[d],) * d)
        t = pe.dropout(e.flatten(2).transpose(1, 2) + resample_grid(pos, grid).flatten(2).transpose(1, 2))
        hidden = []
        for blk in self.vit.blocks:
            t = blk(t)
            hidden.append(t)
        t = self.vit.norm(t)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self._map(hidden[self.taps[0]], grid))
        enc3 = self.encoder3(self._map(hidden[self.taps[1]], grid))
        enc4 = self.encoder4(self._map(hidden[self.taps[2]], grid))
        y = self.decoder5(self._map(t, grid), enc4)
        y = self.decoder4(y, enc3)
        y = self.decoder3(y, enc2)
        return self.out(self.decoder2(y, enc1))


def build_unetr(cfg: ModelConfig) -> nn.Module:
    """MONAI's UNETR, patch 16, hidden ``feature_size``, ``depths[0]`` layers, decoder width ``channels[0]``."""
    hidden, layers, heads = _check_vit(cfg)
    if not cfg.channels or cfg.channels[0] < 1:
        raise MedsegError(f"unetr takes its decoder width from channels[0] (a positive number), got {cfg.channels}")
    d = cfg.spatial_dims
    nrm = ("instance", {"affine": True}) if cfg.norm == "instance" else cfg.norm
    return MedsegUNETR(layers, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                       img_size=(UNETR_PATCH * POS_GRID[d],) * d, feature_size=cfg.channels[0], hidden_size=hidden,
                       mlp_dim=MLP_RATIO * hidden, num_heads=heads, norm_name=nrm, dropout_rate=cfg.dropout,
                       spatial_dims=d, qkv_bias=True)


def _transunet_multiple(cfg: ModelConfig) -> int:
    return 2 ** len(cfg.channels)


#: small: trains on a CPU (2.75 M parameters in 2D); base: R50-ViT-B/16-like (hidden 768, 12 layers, 12 heads; 106 M)
TRANSUNET_PRESETS = {
    "small": {"channels": (16, 32, 64, 128), "feature_size": 192, "depths": (4,), "num_heads": (4,),
              "num_res_units": 1},
    "base": {"channels": (64, 128, 256, 512), "feature_size": 768, "depths": (12,), "num_heads": (12,),
             "num_res_units": 2},
}
UNETR_PRESETS = {
    "small": {"channels": (16,), "feature_size": 192, "depths": (6,), "num_heads": (4,)},
    "base": {"channels": (16,), "feature_size": 768, "depths": (12,), "num_heads": (12,)},
}

#: the models of this family, merged by ``registry``
ENTRIES: dict[str, ModelEntry] = {
    "transunet": ModelEntry(build_transunet, multiple=_transunet_multiple, presets=TRANSUNET_PRESETS),
    "unetr": ModelEntry(build_unetr, multiple=UNETR_PATCH, presets=UNETR_PRESETS),
}
