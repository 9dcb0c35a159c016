"""Swin-Unet building blocks: the shift mask, patch expanding, window padding."""

from __future__ import annotations

import pytest
import torch
from model_cases import small_config

from napari_medseg.models import ModelConfig, build_model
from napari_medseg.models.swin_unet import PatchExpand, SwinUnet, shift_window_mask


@pytest.mark.parametrize("dims, window, shift", [((16, 16), (4, 4), (2, 2)), ((8, 12), (4, 4), (2, 2)),
                                                  ((14, 14), (7, 7), (3, 3)), ((8, 8, 8), (4, 4, 4), (2, 2, 2)),
                                                  ((8, 16, 8), (4, 8, 4), (2, 4, 2))])
def test_shift_mask_equals_monai(dims, window, shift):
    from monai.networks.nets.swin_unetr import compute_mask

    assert torch.equal(shift_window_mask(dims, window, shift), compute_mask(list(dims), window, shift, "cpu"))


@pytest.mark.parametrize("nd", [2, 3])
def test_patch_expand_doubles_resolution_and_halves_width(nd):
    torch.manual_seed(0)
    pe = PatchExpand(16, nd)
    x = torch.randn(2, *(3,) * nd, 16)
    y = pe(x)
    assert y.shape == (2, *(6,) * nd, 8)
    # token (1, 2[, 0]) sub-position (1, 0[, 1]) holds chunk (1, 0[, 1]) of that token's linear output
    lin = pe.expand(x)
    pos, sub = (1, 2, 0)[:nd], (1, 0, 1)[:nd]
    k = sum(s * 2 ** (nd - 1 - i) for i, s in enumerate(sub))
    chunk = lin[(0, *pos)][k * 8:(k + 1) * 8]
    fine = tuple(2 * p + s for p, s in zip(pos, sub))
    torch.testing.assert_close(y[(0, *fine)], pe.norm(chunk))


def test_final_expand_is_patch_size_fold():
    pe = PatchExpand(12, 2, scale=4, out_dim=12)
    assert pe(torch.randn(1, 5, 7, 12)).shape == (1, 20, 28, 12)


def test_sizes_that_need_window_padding_still_work():
    # 96 with window 8: stages 24, 12 (padded to 16), 6 and 3 (window shrinks to the map)
    cfg = ModelConfig(name="swin_unet", feature_size=12, num_heads=(3, 3, 3, 3), window_size=8)
    model = build_model(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 160)).shape == (1, 2, 96, 160)


def test_stage_layout_follows_the_paper():
    model = build_model(small_config("swin_unet", 2))
    assert isinstance(model, SwinUnet)
    assert len(model.encoder) == 4 and len(model.merge) == 3 and len(model.decoder) == 3
    widths = [m.norm.normalized_shape[0] for m in model.expand]
    assert widths == [12, 24, 48]  # patch expanding halves 24 -> 12, 48 -> 24, 96 -> 48
    assert model.final_expand.scale == 4 and model.head.kernel_size == (1, 1)
