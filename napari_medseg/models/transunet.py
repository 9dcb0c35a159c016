"""TransUNet (Chen et al. 2021) on MONAI blocks, 2D and 3D, with position embeddings that follow the window.

Layout (``L`` widths ``ModelConfig.channels = (c0, ..., c[L-1])``, hidden width ``feature_size``):

* **CNN stem**: every level starts with a strided residual block (MONAI ``UnetResBlock``; ``c[i-1] -> c[i]``,
  half the size; level 0 takes the image) and adds ``num_res_units - 1`` more, so level ``i`` is at
  ``1 / 2**(i + 1)`` and the coarsest map at ``1 / 2**L`` (1/16 with four widths, as
  the paper's R50 stem). Nothing runs at full resolution but the stem's first convolution and the head (as in
  the paper, whose stem starts with a strided convolution and whose last skip is at 1/2): a CPU spends its
  time where the pixels are.
* **Transformer**: a 1 x 1 convolution turns every pixel of the coarsest map into a token (the paper's "patch
  size 1 on the CNN feature map"), a learned position embedding is added, then ``depths[0]`` MONAI
  ``TransformerBlock``s (``num_heads[0]`` heads, MLP ``4 x`` hidden) and a layer norm.
* **Cascaded upsampler** (the paper's ``DecoderCup``): a residual 3 x 3 block back to ``c[L-1]`` features, then per
  level a transposed convolution (x 2), concatenation with the CNN skip of that level and a residual block
  (MONAI ``UnetrUpBlock``), down to level 0 (1/2); a transposed 2 x 2 convolution gives full-resolution logits.

The position embedding is a parameter on a fixed reference grid (``POS_GRID``: 16 per axis in 2D, the token
grid of a 256 x 256 patch at 1/16; 8 in 3D). ``resample_grid`` resizes it to the token grid of each input (linear
interpolation up, then average pooling by an integer factor down), so a model predicts windows other than its
training patch and its state dict is the same whatever the patch; at a 256 x 256 patch (2D, four widths) it
is used as is. Sizes must be multiples of ``2 ** L``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock, UnetResBlock, UnetrUpBlock

#: per spatial dims: the reference token grid (per axis) the learned position embedding is stored on
POS_GRID = {2: 16, 3: 8}
MLP_RATIO = 4


def drop_unused_norms(blocks: nn.ModuleList) -> None:
    """MONAI's ``TransformerBlock`` always builds a cross-attention layer norm; without cross attention it is
    never used (no gradient, dead weights in every checkpoint): replace it by an identity."""
    for blk in blocks:
        if not blk.with_cross_attention:
            blk.norm_cross_attn = nn.Identity()


def resample_grid(pos: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize ``pos`` ``(1, C, *grid)`` to ``(1, C, *size)``: linear interpolation to ``size`` times an integer
    factor ``k = ceil(grid / size)`` per axis, then ``k``-average pooling. Every stored entry contributes (no
    entry is skipped when shrinking), and both steps export to ONNX at a fixed size."""
    grid = tuple(int(g) for g in pos.shape[2:])
    size = tuple(int(s) for s in size)
    if grid == size:
        return pos
    k = tuple(max(1, math.ceil(g / s)) for g, s in zip(grid, size))
    up = tuple(s * f for s, f in zip(size, k))
    if up != grid:
        pos = F.interpolate(pos, size=up, mode="bilinear" if len(size) == 2 else "trilinear", align_corners=False)
    if any(f > 1 for f in k):
        pos = (F.avg_pool2d if len(size) == 2 else F.avg_pool3d)(pos, kernel_size=k, stride=k)
    return pos


class TransUNet(nn.Module):
    """See the module docstring: ``(N, in_channels, *S) -> (N, out_channels, *S)``, ``S`` multiples of
    ``2 ** len(channels)``."""

    dynamic_spatial_export = False  # the position embedding is resized in Python per input size (export.py)

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels: tuple[int, ...],
                 hidden: int, layers: int, heads: int, blocks: int = 1, norm: str = "instance",
                 dropout: float = 0.0) -> None:
        super().__init__()
        d, c = spatial_dims, tuple(channels)
        nrm = ("instance", {"affine": True}) if norm == "instance" else norm

        def res(c_in: int, c_out: int, stride: int) -> nn.Module:
            return UnetResBlock(d, c_in, c_out, kernel_size=3, stride=stride, norm_name=nrm)

        self.encoders = nn.ModuleList()
        for i, ch in enumerate(c):  # every level halves the size: level i is at 1 / 2**(i + 1)
            first = res(in_channels if i == 0 else c[i - 1], ch, 2)
            self.encoders.append(nn.Sequential(first, *(res(ch, ch, 1) for _ in range(blocks - 1))))
        conv = nn.Conv2d if d == 2 else nn.Conv3d
        self.embed = conv(c[-1], hidden, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden, *(POS_GRID[d],) * d))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, MLP_RATIO * hidden, heads, dropout_rate=dropout,
                                                     qkv_bias=True, use_flash_attention=True)
                                    for _ in range(layers))
        drop_unused_norms(self.blocks)
        self.norm = nn.LayerNorm(hidden)
        self.conv_more = UnetResBlock(d, hidden, c[-1], kernel_size=3, stride=1, norm_name=nrm)
        self.ups = nn.ModuleList(UnetrUpBlock(d, c[i + 1], c[i], kernel_size=3, upsample_kernel_size=2,
                                              norm_name=nrm, res_block=True) for i in range(len(c) - 1))
        # half resolution -> full: one transposed 2 x 2 convolution to the classes (no full-resolution skip)
        self.head = (nn.ConvTranspose2d if d == 2 else nn.ConvTranspose3d)(c[0], out_channels, 2, stride=2)

    def tokens(self, feat: torch.Tensor) -> torch.Tensor:
        """The transformer's output on the coarsest CNN map, back as a map ``(N, hidden, *grid)``."""
        e = self.embed(feat)
        grid = tuple(e.shape[2:])
        e = e + resample_grid(self.pos_embed, grid)
        t = self.drop(e.flatten(2).transpose(1, 2))
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        return t.transpose(1, 2).reshape(e.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        y = self.conv_more(self.tokens(skips.pop()))
        for i in range(len(self.ups) - 1, -1, -1):
            y = self.ups[i](y, skips[i])
        return self.head(y)
