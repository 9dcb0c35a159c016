"""Late (per-level) multimodal fusion: ``fusion_unet``, one encoder per input channel, one decoder.

Co-registered modalities (T1/T2/FLAIR, CT+PET, CT+MRI) stacked as the channels of one image
(``io/stack.py``) can be fed to any model as early fusion (``in_channels = n``: the first convolution mixes
them). ``fusion_unet`` keeps them apart instead: each input channel gets its own encoder (same widths,
``ModelConfig.channels``, one level per width, ``len - 1`` downsamplings by 2), and at every level the
modalities' feature maps are concatenated and fused by a 1 x 1 convolution back to that level's width
(the "dual-encoder, 1 x 1 fusion" of the CT/MRI fusion papers). One U-Net decoder upsamples the fused
bottleneck with the fused skips. ``in_channels`` is the number of modalities, so no new config field is
needed; with one input channel it is a plain U-Net. Parameters grow about linearly with the number of
encoders.

Blocks are MONAI's ``UnetResBlock`` (two 3 x 3 convolutions with a residual path, the nnU-Net block) and
``UnetUpBlock`` (transposed-convolution upsampling, concatenation of the skip, then a basic conv block): tested,
2D/3D, TorchScript/ONNX-friendly, so nothing here reimplements convolution plumbing.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.base import ModelEntry
from napari_medseg.models.config import ModelConfig


def _norm(norm: str) -> str | tuple:
    n = norm.lower()
    return ("instance", {"affine": True}) if n == "instance" else n


def _act(act: str) -> str | tuple:
    return ("prelu", {"init": 0.25}) if act == "prelu" else ("relu", {"inplace": False})


class _Encoder(nn.Module):
    """One modality's encoder: a ``UnetResBlock`` per level, stride 2 from the second level on."""

    def __init__(self, nd: int, widths: tuple[int, ...], norm: str | tuple, act: str | tuple,
                 dropout: float) -> None:
        super().__init__()
        from monai.networks.blocks import UnetResBlock

        blocks, prev = [], 1
        for i, c in enumerate(widths):
            blocks.append(UnetResBlock(nd, prev, c, kernel_size=3, stride=1 if i == 0 else 2, norm_name=norm,
                                       act_name=act, dropout=dropout or None))
            prev = c
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return feats


class FusionUNet(nn.Module):
    """Late-fusion U-Net: ``encoders[k]`` sees input channel ``k`` only; ``fuse[i]`` (1 x 1 conv over the
    concatenated level-``i`` features of every encoder) feeds the decoder's skip ``i`` (the deepest: its input).

    ``modality_features(x)`` returns the per-encoder, per-level features (for tests and inspection)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetUpBlock

        widths = tuple(cfg.channels)
        if len(widths) < 2 or any(c < 1 for c in widths):
            raise MedsegError(f"fusion_unet needs at least two positive channel widths (ModelConfig.channels), "
                              f"got {widths}")
        nd, norm, act = cfg.spatial_dims, _norm(cfg.norm), _act(cfg.act)
        self.n_modalities = cfg.in_channels
        self.encoders = nn.ModuleList(_Encoder(nd, widths, norm, act, cfg.dropout) for _ in range(cfg.in_channels))
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        self.fuse = nn.ModuleList(conv(c * cfg.in_channels, c, kernel_size=1) for c in widths)
        self.up = nn.ModuleList(
            UnetUpBlock(nd, widths[i + 1], widths[i], kernel_size=3, stride=1, upsample_kernel_size=2,
                        norm_name=norm, act_name=act, dropout=cfg.dropout or None)
            for i in reversed(range(len(widths) - 1)))
        self.head = UnetOutBlock(nd, widths[0], cfg.out_channels)

    def modality_features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        if x.shape[1] != self.n_modalities:
            raise MedsegError(f"fusion_unet was built for {self.n_modalities} input channels (one encoder each), "
                              f"got an input with {x.shape[1]}")
        return [enc(x[:, k:k + 1]) for k, enc in enumerate(self.encoders)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per = self.modality_features(x)
        fused = [f(torch.cat([m[i] for m in per], dim=1)) for i, f in enumerate(self.fuse)]
        y = fused[-1]
        for j, up in enumerate(self.up):
            y = up(y, fused[len(fused) - 2 - j])
        return self.head(y)


def build_fusion_unet(cfg: ModelConfig) -> nn.Module:
    """``fusion_unet``: one encoder per input channel (modality), fused per level by 1 x 1 convs, one decoder."""
    return FusionUNet(cfg)


def _levels_multiple(cfg: ModelConfig) -> int:
    return 2 ** (len(cfg.channels) - 1)


#: the models of this family, merged by ``registry``
ENTRIES: dict[str, ModelEntry] = {
    "fusion_unet": ModelEntry(build_fusion_unet, multiple=_levels_multiple,
                              presets={"base": {"channels": (32, 64, 128, 256, 512)}}),
}
