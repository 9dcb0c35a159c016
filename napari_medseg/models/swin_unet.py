"""Swin-Unet (Cao et al. 2021, "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation").

A pure-transformer U: patch partition + linear embedding (a ``patch_size`` strided convolution, MONAI's
``PatchEmbed``), Swin Transformer encoder stages with patch merging, a bottleneck stage, and a symmetric
decoder whose stages start with *patch expanding* (a linear layer to ``2**d * C/2`` features rearranged into
a twice finer grid: resolution doubles, width halves) and fuse the encoder skip of the same resolution
(concatenate + linear). A final ``patch_size``-fold patch expanding restores the input resolution and a 1x1
convolution projects to the classes.

The Swin blocks (shifted-window attention with relative position bias), the shift masks and patch merging
are MONAI's (``monai.networks.nets.swin_unetr``); they work for 2D and 3D, so this model does too.

Layout: the model takes ``(N, C_in, H, W)`` / ``(N, C_in, D, H, W)`` and returns logits of the same spatial
size; inside, tokens are kept channels-last ``(N, *spatial, C)``. Spatial sizes must be multiples of
``patch_size * 2 ** (len(depths) - 1)`` (32 by default). Windows larger than a stage's feature map shrink to
it; feature maps that are not a multiple of the window are padded inside the block (as in MONAI's
SwinUNETR). With ``window_size=8`` and 256 x 256 patches no stage needs padding.

Differences from the reference code: skips are taken after each encoder stage's Swin blocks (the paper's
figure) rather than before them, and ``drop_path`` defaults to 0.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

log = logging.getLogger(__name__)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *S) -> (N, *S, C), contiguous (explicit non-negative permutation: ONNX-friendly)."""
    return x.permute(0, *range(2, x.ndim), 1).contiguous()


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """(N, *S, C) -> (N, C, *S)."""
    return x.permute(0, x.ndim - 1, *range(1, x.ndim - 1))


class SwinStage(nn.Module):
    """``depth`` Swin blocks, alternating regular and shifted windows, on tokens ``(N, *spatial, C)``.

    Like MONAI's ``BasicLayer`` but channels-last in and out, with no downsampling and no einops.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Sequence[int],
                 drop_path: Sequence[float], mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformerBlock

        self.window_size = tuple(int(w) for w in window_size)
        self.shift_size = tuple(w // 2 for w in self.window_size)
        no_shift = tuple(0 for _ in self.window_size)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim=dim, num_heads=num_heads, window_size=self.window_size,
                                 shift_size=no_shift if i % 2 == 0 else self.shift_size, mlp_ratio=mlp_ratio,
                                 qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=float(drop_path[i]))
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from monai.networks.nets.swin_unetr import get_window_size

        spatial = tuple(int(s) for s in x.shape[1:-1])
        window, shift = get_window_size(spatial, self.window_size, self.shift_size)
        mask = None
        if len(self.blocks) > 1 and any(s > 0 for s in shift):
            padded = tuple((s + w - 1) // w * w for s, w in zip(spatial, window))
            mask = shift_window_mask(padded, window, shift, x.device)
        for blk in self.blocks:
            x = blk(x, mask)
        return x


@functools.lru_cache(maxsize=64)
def shift_window_mask(dims: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...],
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The shifted-window attention mask ``(n_windows, w, w)`` (0 within a region, -100 across), as MONAI's
    ``compute_mask`` but built in NumPy and cached per device: a traced or exported graph holds it as one
    constant instead of hundreds of index operations, and training neither rebuilds nor re-uploads it every
    step. Treat the result as read-only (it is shared)."""
    region = np.zeros(dims, dtype=np.float32)
    cuts = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift)]
    for cnt, idx in enumerate(itertools.product(*cuts)):
        region[idx] = cnt
    # window partition: (d0/w0, w0, d1/w1, w1, ...) -> (n_windows, prod(w))
    shape = [v for d, w in zip(dims, window) for v in (d // w, w)]
    nd = len(dims)
    order = [2 * i for i in range(nd)] + [2 * i + 1 for i in range(nd)]
    win = region.reshape(shape).transpose(order).reshape(-1, int(np.prod(window)))
    diff = win[:, None, :] - win[:, :, None]
    return torch.from_numpy(np.where(diff != 0, -100.0, 0.0).astype(np.float32)).to(device)


class PatchExpand(nn.Module):
    """Tokens ``(N, *S, C)`` -> ``(N, *(scale * S), out_dim)``: a linear layer to ``scale**d * out_dim``
    features, each token's features rearranged into a ``scale**d`` block of finer tokens, then LayerNorm.

    ``scale=2, out_dim=C // 2`` is Swin-Unet's patch expanding; ``scale=patch_size, out_dim=C`` its final
    4x expanding.
    """

    def __init__(self, dim: int, spatial_dims: int, scale: int = 2, out_dim: int | None = None) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.scale = scale
        self.out_dim = out_dim if out_dim is not None else dim // 2
        self.expand = nn.Linear(dim, scale**spatial_dims * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x)
        s, c = self.scale, self.out_dim
        if self.spatial_dims == 2:
            n, h, w, _ = x.shape
            x = x.reshape(n, h, w, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, c)
        else:
            n, d, h, w, _ = x.shape
            x = x.reshape(n, d, h, w, s, s, s, c).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(n, d * s, h * s, w * s, c)
        return self.norm(x)


class SwinUnet(nn.Module):
    """Swin-Unet for ``spatial_dims`` 2 or 3: ``(N, in_channels, *S) -> (N, out_channels, *S)``.

    ``len(depths)`` stages; stage ``i`` has width ``embed_dim * 2**i`` and ``num_heads[i]`` heads; the last
    stage is the bottleneck. Decoder stage ``i`` mirrors encoder stage ``i`` (same depth and heads).
    """

    #: window clamping and padding depend on the input size: export graphs at a fixed size (export.py)
    dynamic_spatial_export = False

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, embed_dim: int = 24,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int | Sequence[int] = 8, patch_size: int = 4, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        from monai.networks.blocks.patchembedding import PatchEmbed
        from monai.networks.layers import Conv
        from monai.networks.nets.swin_unetr import PatchMerging

        if len(depths) != len(num_heads) or len(depths) < 2:
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} need the same length >= 2")
        nd = spatial_dims
        ws = (window_size,) * nd if isinstance(window_size, int) else tuple(window_size)
        n_stages = len(depths)
        dims = [embed_dim * 2**i for i in range(n_stages)]
        for d, h in zip(dims, num_heads):
            if d % h:
                raise ValueError(f"stage width {d} is not divisible by its {h} heads")
        self.spatial_dims = nd
        self.patch_size = patch_size
        self.multiple = patch_size * 2 ** (n_stages - 1)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()

        def stage(i: int, dp: Sequence[float]) -> SwinStage:
            return SwinStage(dims[i], depths[i], num_heads[i], ws, dp, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate)

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_channels, embed_dim=embed_dim,
                                      norm_layer=None, spatial_dims=nd)  # type: ignore[arg-type]
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        starts = [sum(depths[:i]) for i in range(n_stages)]
        self.encoder = nn.ModuleList(stage(i, dpr[starts[i]:starts[i] + depths[i]]) for i in range(n_stages))
        self.merge = nn.ModuleList(PatchMerging(dims[i], nn.LayerNorm, nd) for i in range(n_stages - 1))
        self.norm = nn.LayerNorm(dims[-1])
        # decoder level i (0 = finest) mirrors encoder stage i; index by level, run from coarse to fine
        self.expand = nn.ModuleList(PatchExpand(dims[i + 1], nd) for i in range(n_stages - 1))
        self.fuse = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in range(n_stages - 1))
        self.decoder = nn.ModuleList(stage(i, dpr[starts[i]:starts[i] + depths[i]][::-1]) for i in range(n_stages - 1))
        self.norm_up = nn.LayerNorm(dims[0])
        self.final_expand = PatchExpand(dims[0], nd, scale=patch_size, out_dim=dims[0])
        self.head = Conv[Conv.CONV, nd](dims[0], out_channels, kernel_size=1, bias=False)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C_in, *S) with every S a multiple of ``self.multiple`` -> logits (N, C_out, *S)."""
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            bad = [int(s) for s in x.shape[2:] if int(s) % self.multiple]
            if bad:
                from napari_medseg.core.errors import MedsegError

                raise MedsegError(f"swin_unet needs spatial sizes that are multiples of {self.multiple}; got "
                                  f"{tuple(int(s) for s in x.shape[2:])}. Crop or pad to e.g. "
                                  f"{max(self.multiple, round(bad[0] / self.multiple) * self.multiple)}.")
        x = self.pos_drop(self.embed_norm(_channels_last(self.patch_embed(x))))
        skips: list[torch.Tensor] = []
        n_merge = len(self.merge)
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i < n_merge:
                skips.append(x)
                x = self.merge[i](x)
        x = self.norm(x)
        for i in range(n_merge - 1, -1, -1):
            x = self.expand[i](x)
            x = self.fuse[i](torch.cat([x, skips[i]], dim=-1))
            x = self.decoder[i](x)
        x = self.final_expand(self.norm_up(x))
        return self.head(_channels_first(x))


def _init_weights(m: nn.Module) -> None:
    """Swin initialisation: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
