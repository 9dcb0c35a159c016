"""``light_unet``: a U-Net of depthwise-separable inverted-residual blocks for CPUs and laptops (2D and 3D).

Design (MONAI's MedNeXt / ConvNeXt blocks, MobileNetV2's inverted residual, the layout of MONAI's UNet):

* **Block** (``LightBlock``): depthwise ``k x k`` convolution -> norm -> pointwise expansion (``x EXPANSION``)
  -> activation -> pointwise projection, plus the input (residual). The depthwise convolution runs on the
  narrow tensor and the expensive part is two 1 x 1 convolutions (matrix products, which CPUs run well). One
  norm per block (MedNeXt's order); ``ModelConfig.act`` (``relu``: quantisation friendly) and
  ``ModelConfig.norm`` (``instance`` or ``batch``) are honoured.
* **Layout**: widths ``ModelConfig.channels`` = ``(c0, ..., cL)``. A strided 3 x 3 stem takes the image to half
  resolution with ``c0`` channels and is level 0's whole encoder (as in MONAI's UNet, whose first unit is
  strided too: CPU time goes where the pixels are, so nothing but the stem's input and the head's output is
  at full resolution, and level 0 has no encoder block). Each further level halves the size with a strided
  depthwise-separable convolution (``Down``), except the last (the bottleneck, like MONAI's UNet's bottom),
  which keeps its level's size. So sizes must be multiples of ``2 ** (len(channels) - 1)``, the same rule as
  ``unet``: the two take the same patch and window sizes.
* **Decoder**: a transposed 2 x 2 convolution (stride 2), or a 1 x 1 convolution from the bottleneck, to the
  skip's width, **added** to the skip (UNeXt / LinkNet style: no concatenation, no widening), then the
  level's blocks; **head**: one transposed 2 x 2 convolution from level 0 (half resolution) to the classes.
* ``ModelConfig.num_res_units`` blocks per level: encoder levels 1.. and every decoder level (0: only the
  resampling convolutions).

The "small" preset (``ModelEntry.presets``) has widths ``(8, 16, 32, 64, 128)``, one block per level, instance
norm and ReLU: 0.09 x the default ``unet``'s parameters (146 k vs 1.63 M in 2D). Instance norm, not batch
norm, although batch norm predicts faster: the training loop predicts with a running average of the weights
by default (``eval_model="ema"``), and averaging the weights of a batch-norm net early in a run does not fit
its averaged running statistics (ISBI 2012, 66 steps: the average scored Dice 4 where the last weights scored
56; with instance norm 43 and 57). ``norm="batch"`` stays an option. Measured speed and Dice:
docs/models.md, "A light model for CPUs". No Python control flow depends on the input size, so TorchScript
and ONNX export with dynamic spatial axes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.base import ModelEntry
from napari_medseg.models.config import ModelConfig

#: pointwise expansion of each block (MedNeXt-S uses 2; ConvNeXt 4)
EXPANSION = 2
#: depthwise kernel size
KERNEL = 3
NORMS = ("instance", "batch")


def _conv(dims: int, transpose: bool = False) -> type[nn.Module]:
    if transpose:
        return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _norm(kind: str, dims: int, ch: int) -> nn.Module:
    from monai.networks.layers.utils import get_norm_layer

    name = ("instance", {"affine": True}) if kind == "instance" else kind
    return get_norm_layer(name, spatial_dims=dims, channels=ch)


def _act(kind: str) -> nn.Module:
    from monai.networks.layers.utils import get_act_layer

    return get_act_layer(kind.upper())


class LightBlock(nn.Module):
    """Depthwise k x k -> norm -> pointwise expand -> act -> pointwise project, plus the input."""

    def __init__(self, dims: int, ch: int, norm: str, act: str, expansion: int = EXPANSION,
                 kernel: int = KERNEL) -> None:
        super().__init__()
        conv = _conv(dims)
        self.dw = conv(ch, ch, kernel, padding=kernel // 2, groups=ch)
        self.norm = _norm(norm, dims, ch)
        self.expand = conv(ch, ch * expansion, 1)
        self.act = _act(act)
        self.project = conv(ch * expansion, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act(self.expand(self.norm(self.dw(x)))))


class Down(nn.Module):
    """Depthwise k x k (stride 2, or 1 into the bottleneck) -> norm -> pointwise to the new width -> act."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int, norm: str, act: str,
                 kernel: int = KERNEL) -> None:
        super().__init__()
        conv = _conv(dims)
        self.dw = conv(c_in, c_in, kernel, stride=stride, padding=kernel // 2, groups=c_in)
        self.norm = _norm(norm, dims, c_in)
        self.pw = conv(c_in, c_out, 1)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pw(self.norm(self.dw(x))))


class LightUNet(nn.Module):
    """See the module docstring. ``(N, in_channels, *S) -> (N, out_channels, *S)`` logits, ``S`` multiples of
    ``2 ** (len(channels) - 1)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, d, n = cfg.channels, cfg.spatial_dims, cfg.num_res_units
        conv, convt = _conv(d), _conv(d, transpose=True)
        last = len(c) - 1

        def blocks(ch: int) -> nn.Sequential:
            return nn.Sequential(*(LightBlock(d, ch, cfg.norm, cfg.act) for _ in range(n)))

        # level 0's encoder is the stem alone: blocks at half resolution cost the most (module docstring)
        self.stem = nn.Sequential(conv(cfg.in_channels, c[0], 3, stride=2, padding=1), _norm(cfg.norm, d, c[0]),
                                  _act(cfg.act))
        self.downs = nn.ModuleList(Down(d, c[i - 1], c[i], 1 if i == last else 2, cfg.norm, cfg.act)
                                   for i in range(1, len(c)))
        self.encs = nn.ModuleList(blocks(c[i]) for i in range(1, len(c)))
        # ups[i] takes level i + 1 to level i; the bottleneck keeps its size (1 x 1), the others double it
        self.ups = nn.ModuleList((conv(c[i + 1], c[i], 1) if i + 1 == last else convt(c[i + 1], c[i], 2, stride=2))
                                 for i in range(last))
        self.decs = nn.ModuleList(blocks(c[i]) for i in range(last))
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = convt(c[0], cfg.out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down, enc in zip(self.downs, self.encs):
            skips.append(enc(down(skips[-1])))
        y = self.drop(skips.pop())
        for i in range(len(self.ups) - 1, -1, -1):
            y = self.decs[i](self.ups[i](y) + skips[i])
        return self.head(y)


def build_light_unet(cfg: ModelConfig) -> nn.Module:
    """The light U-Net (module docstring) with widths ``cfg.channels``."""
    if len(cfg.channels) < 2 or any(ch < 1 for ch in cfg.channels):
        raise MedsegError(f"{cfg.name} needs at least two positive channel widths, got {cfg.channels}")
    if cfg.norm not in NORMS:
        raise MedsegError(f"{cfg.name} takes norm {' or '.join(NORMS)}, got {cfg.norm!r}")
    if cfg.num_res_units < 0:
        raise MedsegError(f"{cfg.name} needs num_res_units >= 0 (blocks per level), got {cfg.num_res_units}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise MedsegError(f"dropout must be in [0, 1), got {cfg.dropout}")
    return LightUNet(cfg)


def _multiple(cfg: ModelConfig) -> int:
    return 2 ** (len(cfg.channels) - 1)


#: the small preset: thin widths, one block per level, instance norm, ReLU; "base": the default U-Net's widths
SMALL = {"channels": (8, 16, 32, 64, 128), "num_res_units": 1, "act": "relu", "norm": "instance"}
BASE = {"channels": (16, 32, 64, 128, 256), "num_res_units": 2, "act": "relu", "norm": "instance"}

#: the models of this family, merged by ``registry``
ENTRIES: dict[str, ModelEntry] = {
    "light_unet": ModelEntry(build_light_unet, multiple=_multiple, presets={"small": SMALL, "base": BASE}),
}
