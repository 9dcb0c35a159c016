"""Small model configs for fast tests (about a second each on one CPU thread)."""

from __future__ import annotations

import pytest
import torch

from napari_medseg.models import ModelConfig

NAMES = ["unet", "attention_unet", "unetpp", "swin_unetr", "swin_unet"]
NAMES += ["fusion_unet"]  # models/fusion.py (helper H4)
NAMES += ["transunet", "unetr"]  # models/transformer_family.py (helper H1): one ViT stage, see small_config
VIT_ONE_STAGE = {"transunet", "unetr"}
# per (name, spatial_dims): the test input's spatial size (each a valid, small size)
SIZES = {2: {n: 64 for n in NAMES}, 3: {n: 32 for n in NAMES} | {"swin_unetr": 64, "transunet": 64}}


def small_config(name: str, spatial_dims: int, in_channels: int = 3, out_channels: int = 4) -> ModelConfig:
    return ModelConfig(name=name, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                       channels=(4, 8, 16, 32, 64), num_res_units=1, feature_size=12,
                       depths=(2,) if name in VIT_ONE_STAGE else (2, 2, 2, 2),
                       num_heads=(3,) if name in VIT_ONE_STAGE else (3, 3, 3, 3), window_size=4)


def case_params(slow_3d: tuple[str, ...] = ("swin_unetr",)):
    """pytest params over name x spatial_dims; the heavy 3D ones marked slow."""
    out = []
    for nd in (2, 3):
        for n in NAMES:
            marks = [pytest.mark.slow] if nd == 3 and n in slow_3d else []
            out.append(pytest.param(n, nd, id=f"{n}-{nd}d", marks=marks))
    return out


def random_input(cfg: ModelConfig, batch: int = 1, seed: int = 0) -> torch.Tensor:
    size = SIZES[cfg.spatial_dims][cfg.name]
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, cfg.in_channels) + (size,) * cfg.spatial_dims, generator=g)
