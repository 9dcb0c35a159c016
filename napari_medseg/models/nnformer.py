"""An nnFormer-style hybrid (Zhou et al. 2021, "nnFormer: Interleaved Transformer for Volumetric
Segmentation"), 3D and 2D, on MONAI's Swin blocks and the project's ``swin_unet`` parts.

What makes it nnFormer rather than Swin-Unet (each as in the paper; the code is ours):

- **convolutional embedding**: two strided 3 x 3 (x 3) convolutions (GELU, layer norm) turn the image into
  tokens at 1/4 of its size, instead of a linear patch partition; stages are joined by strided 2 x 2 (x 2)
  convolutions (the paper's convolutional down-sampling) and, in the decoder, transposed ones;
- **local attention** in every encoder and decoder stage: shifted-window Swin blocks (``swin_unet.SwinStage``);
- **global attention at the bottleneck**: full self-attention over every token of the coarsest map (MONAI
  ``TransformerBlock``), where the volume is small enough for it;
- **skip attention** instead of concatenation: at each decoder level the up-sampled decoder tokens are the queries
  and the encoder's skip tokens the keys and values, window by window (``SkipAttention``), then a residual MLP;
- **deep supervision**: ``heads(x)`` returns a logit map per decoder level, each resampled to the input's size,
  coarsest first and the model's output (the finest) last (``output_of_heads = "last"``); training weights them
  with ``deep_supervision`` (``training/boundary.py``).

Windows follow the input (MONAI's ``get_window_size`` clamps a window to a smaller map; maps that are not a
multiple are padded inside), so no crop size is baked in. Widths: ``feature_size * 2**i`` per stage; depths and
heads per stage from ``depths`` / ``num_heads`` (the last entry is the bottleneck's global attention). Sizes must be
multiples of ``4 * 2**(stages - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_medseg.models.swin_unet import SwinStage, _channels_first, _channels_last

STEM = 4  # the convolutional embedding's down-sampling


class LayerNormCF(nn.Module):
    """Layer norm over the channels of a channels-first map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_first(self.norm(_channels_last(x)))


class SkipAttention(nn.Module):
    """Decoder tokens attend to the encoder's skip tokens in local windows: ``(N, *S, C)`` twice -> ``(N, *S, C)``."""

    def __init__(self, dim: int, heads: int, window: Sequence[int]) -> None:
        super().__init__()
        self.window = tuple(int(w) for w in window)
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        from monai.networks.nets.swin_unetr import get_window_size, window_partition, window_reverse

        spatial = tuple(int(s) for s in x.shape[1:-1])
        win, _ = get_window_size(spatial, self.window, tuple(0 for _ in spatial))
        pad = [p for s, w in zip(reversed(spatial), reversed(win)) for p in (0, (w - s % w) % w)]
        q, kv = self.norm_q(x), self.norm_kv(skip)
        if any(pad):
            q, kv = F.pad(q, [0, 0, *pad]), F.pad(kv, [0, 0, *pad])
        padded = tuple(int(s) for s in q.shape[1:-1])
        qw, kw = window_partition(q, win), window_partition(kv, win)
        out, _ = self.attn(qw, kw, kw, need_weights=False)
        out = window_reverse(out, win, (x.shape[0], *padded))
        out = out[(slice(None), *(slice(0, s) for s in spatial))]
        x = x + out
        return x + self.mlp(self.norm_mlp(x))


class NnFormer(nn.Module):
    """See the module docstring: ``(N, in_channels, *S) -> (N, out_channels, *S)``."""

    dynamic_spatial_export = False  # window clamping and padding depend on the size (as the Swin models)
    output_of_heads = "last"  # heads(x)[-1] is forward(x)

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, embed_dim: int = 24,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 4, drop_rate: float = 0.0) -> None:
        super().__init__()
        from monai.networks.blocks import TransformerBlock

        from napari_medseg.models.transunet import drop_unused_norms

        d = spatial_dims
        conv = nn.Conv2d if d == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if d == 2 else nn.ConvTranspose3d
        n = len(depths)
        dims = [embed_dim * 2**i for i in range(n)]
        win = (window_size,) * d
        self.stem = nn.Sequential(conv(in_channels, embed_dim // 2, 3, stride=2, padding=1), nn.GELU(),
                                  LayerNormCF(embed_dim // 2),
                                  conv(embed_dim // 2, embed_dim, 3, stride=2, padding=1), LayerNormCF(embed_dim))
        self.encoders = nn.ModuleList(SwinStage(dims[i], depths[i], num_heads[i], win, [0.0] * depths[i],
                                                drop=drop_rate) for i in range(n - 1))
        self.downs = nn.ModuleList(nn.Sequential(conv(dims[i], dims[i + 1], 2, stride=2), LayerNormCF(dims[i + 1]))
                                   for i in range(n - 1))
        self.bottleneck = nn.ModuleList(TransformerBlock(dims[-1], 4 * dims[-1], num_heads[-1], dropout_rate=drop_rate,
                                                         qkv_bias=True) for _ in range(depths[-1]))
        drop_unused_norms(self.bottleneck)
        self.ups = nn.ModuleList(up(dims[i + 1], dims[i], 2, stride=2) for i in range(n - 1))
        self.skip_attn = nn.ModuleList(SkipAttention(dims[i], num_heads[i], win) for i in range(n - 1))
        self.decoders = nn.ModuleList(SwinStage(dims[i], depths[i], num_heads[i], win, [0.0] * depths[i],
                                                drop=drop_rate) for i in range(n - 1))
        self.head = up(dims[0], out_channels, STEM, stride=STEM)  # the final patch expanding, to the classes
        self.aux = nn.ModuleList(conv(dims[i], out_channels, 1) for i in range(1, n))  # deep-supervision heads

    def _decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The decoder's maps, coarsest first (channels-first), the bottleneck's included."""
        skips = []
        t = self.stem(x)
        for enc, down in zip(self.encoders, self.downs):
            s = enc(_channels_last(t))
            skips.append(s)
            t = down(_channels_first(s))
        shape = t.shape
        tok = t.flatten(2).transpose(1, 2)
        for blk in self.bottleneck:
            tok = blk(tok)
        t = tok.transpose(1, 2).reshape(shape)
        maps = [t]
        for i in range(len(self.ups) - 1, -1, -1):
            u = _channels_last(self.ups[i](t))
            u = self.skip_attn[i](u, skips[i])
            t = _channels_first(self.decoders[i](u))
            maps.append(t)
        return maps

    def heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits per decoder level at the input's size, coarsest first; the last is ``forward(x)``."""
        maps = self._decode(x)
        size = tuple(x.shape[2:])
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        aux = [F.interpolate(self.aux[len(maps) - 2 - i](m), size=size, mode=mode, align_corners=False)
               for i, m in enumerate(maps[:-1])]
        return [*aux, self.head(maps[-1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._decode(x)[-1])


def _multiple(cfg) -> int:
    return STEM * 2 ** (len(cfg.depths) - 1)


def build_nnformer(cfg) -> nn.Module:
    """``ModelConfig`` -> ``NnFormer``: ``feature_size`` (embedding width), ``depths`` / ``num_heads`` per stage
    (the last is the bottleneck's global attention), ``window_size``, ``dropout``."""
    from napari_medseg.core.errors import MedsegError
    from napari_medseg.models.swin_family import _check_stages

    _check_stages(cfg)
    if cfg.feature_size % 2:
        raise MedsegError(f"nnformer needs an even feature_size (its stem halves it), got {cfg.feature_size}")
    return NnFormer(cfg.spatial_dims, cfg.in_channels, cfg.out_channels, embed_dim=cfg.feature_size,
                    depths=cfg.depths, num_heads=cfg.num_heads, window_size=cfg.window_size, drop_rate=cfg.dropout)


def _entries() -> dict:
    from napari_medseg.models.base import ModelEntry

    return {"nnformer": ModelEntry(build_nnformer, multiple=_multiple, min_size=_multiple,
                                   presets={"small": {"window_size": 4},
                                            "base": {"feature_size": 96, "window_size": 4}})}


#: the models of this module, merged by ``registry``
ENTRIES = _entries()
