"""transunet and unetr: presets, position embeddings that follow the window, config errors, MONAI parity, export.

The zoo contract (shapes, gradients, channels_last, autocast, checkpoint round trip) runs on both through
``model_cases.NAMES`` in test_models_zoo.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_cases import random_input, small_config

from napari_medseg.core.errors import MedsegError
from napari_medseg.models import build_model, preset
from napari_medseg.models.export import export_onnx, export_torchscript
from napari_medseg.models.registry import check_input_size, min_input_size, required_multiple
from napari_medseg.models.transunet import POS_GRID, resample_grid


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_presets():
    small = build_model(preset("transunet", "small"))
    assert _params(small) <= 3_000_000
    assert len(small.blocks) == 4
    # four stem widths: four halvings, the token grid at 1/16 (16 x 16 tokens, the reference grid, at 256)
    assert required_multiple(preset("transunet")) == 16
    base = preset("transunet", "base")
    assert (base.feature_size, base.depths, base.num_heads) == (768, (12,), (12,))
    u = preset("unetr", "small")
    assert (u.feature_size, u.depths, u.num_heads) == (192, (6,), (4,))
    model = build_model(u)
    assert len(model.vit.blocks) == 6 and model.taps == (1, 3, 4)
    assert required_multiple(u) == 16
    assert required_multiple(preset("transunet", channels=(8, 16, 32))) == 8


def test_resample_grid_identity_average_and_every_entry_used():
    pos = torch.randn(1, 3, 16, 16)
    assert resample_grid(pos, (16, 16)) is pos
    # a divisor: plain 4 x 4 block averages
    torch.testing.assert_close(resample_grid(pos, (4, 4)), torch.nn.functional.avg_pool2d(pos, 4))
    # not a divisor (16 -> 6) and mixed up/down per axis: the right shape, and every stored entry contributes
    for size in [(6, 6), (5, 24), (32, 3)]:
        p = pos.clone().requires_grad_(True)
        out = resample_grid(p, size)
        assert out.shape == (1, 3, *size)
        out.sum().backward()
        assert (p.grad != 0).all(), size
    pos3 = torch.randn(1, 2, 8, 8, 8)
    assert resample_grid(pos3, (2, 3, 12)).shape == (1, 2, 2, 3, 12)


@pytest.mark.parametrize("name", ["transunet", "unetr"])
def test_position_embedding_follows_the_window(name):
    """A model trained at 64 predicts 96 (another token grid); its state dict does not depend on the size."""
    torch.manual_seed(0)
    cfg = small_config(name, 2, in_channels=1, out_channels=2)
    model = build_model(cfg).train()
    x = torch.randn(2, 1, 64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        y96 = model(torch.randn(1, 1, 96, 96))
        y_rect = model(torch.randn(1, 1, 64, 128))
    assert y96.shape == (1, 2, 96, 96) and y_rect.shape == (1, 2, 64, 128)
    assert torch.isfinite(y96).all()
    fresh = build_model(cfg)
    fresh.load_state_dict(model.state_dict())  # strict: same keys and shapes whatever the patch was
    x96 = torch.randn(1, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x96), model(x96))


@pytest.mark.parametrize("name", ["transunet", "unetr"])
def test_the_position_embedding_is_used(name):
    torch.manual_seed(0)
    model = build_model(small_config(name, 2)).eval()
    x = random_input(small_config(name, 2))
    pos = model.pos_embed if name == "transunet" else model.vit.patch_embedding.position_embeddings
    with torch.no_grad():
        ref = model(x)
        pos.add_(torch.randn_like(pos))
        assert (model(x) - ref).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["transunet", "unetr"])
def test_config_errors_name_the_fields(name):
    cfg = small_config(name, 2)
    with pytest.raises(MedsegError, match=r"depths \(layers,\)"):
        build_model(cfg.replace(depths=(2, 2), num_heads=(3, 3)))
    with pytest.raises(MedsegError, match="must divide by num_heads"):
        build_model(cfg.replace(feature_size=10))
    with pytest.raises(MedsegError, match="norm"):
        build_model(cfg.replace(norm="group"))
    # the default ModelConfig (Swin depths) is refused with a pointer to the preset
    with pytest.raises(MedsegError, match="preset"):
        build_model(cfg.replace(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24)))


@pytest.mark.parametrize("name", ["transunet", "unetr"])
def test_sizes_check_tells_the_truth(name):
    cfg = small_config(name, 2, in_channels=1)
    m, lo = required_multiple(cfg), min_input_size(cfg)
    assert m == (32 if name == "transunet" else 16)  # five stem widths: 1/32
    with pytest.raises(MedsegError, match=f"multiples of {m}"):
        check_input_size(cfg, (m + 8, 2 * m))
    model = build_model(cfg).train()
    assert model(torch.randn(2, 1, lo, lo + m)).shape == (2, cfg.out_channels, lo, lo + m)


def test_unetr_refuses_a_bad_size_with_a_medseg_error():
    model = build_model(small_config("unetr", 2, in_channels=1))
    with pytest.raises(MedsegError, match="multiples of 16"):
        model(torch.randn(1, 1, 72, 64))


def test_unetr_matches_monai_at_the_reference_size():
    """With 12 layers at the reference grid, the wrapper computes exactly MONAI's UNETR (same weights)."""
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    cfg = preset("unetr", in_channels=1, out_channels=2, channels=(4,), feature_size=24, depths=(12,),
                 num_heads=(2,))
    ours = build_model(cfg).eval()
    assert ours.taps == (3, 6, 9)
    size = 16 * POS_GRID[2]
    ref = UNETR(in_channels=1, out_channels=2, img_size=(size, size), feature_size=4, hidden_size=24, mlp_dim=96,
                num_heads=2, norm_name=("instance", {"affine": True}), spatial_dims=2, qkv_bias=True).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("norm_cross_attn" in k for k in missing)
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["transunet", "unetr"])
def test_export_at_a_fixed_size(name, tmp_path):
    torch.manual_seed(0)
    cfg = small_config(name, 2, in_channels=2, out_channels=3)
    model = build_model(cfg)
    x = torch.randn(1, 2, 96, 64)  # not the reference grid: the resampled embedding is traced too
    ts = export_torchscript(model, x, tmp_path / "m.ts")
    assert ts.max_abs_diff <= 1e-4 and not ts.dynamic_spatial
    ort = pytest.importorskip("onnxruntime")
    res = export_onnx(model, x, tmp_path / "m.onnx", opset=17)
    assert res.max_abs_diff <= 1e-4 and not res.dynamic_spatial
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    xb = torch.randn(2, 2, 96, 64)
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"image": xb.numpy()})[0], model.eval()(xb).numpy(), atol=1e-4)


def test_transunet_levels_halve_and_every_skip_is_used():
    torch.manual_seed(0)
    cfg = small_config("transunet", 2, in_channels=1, out_channels=2)
    model = build_model(cfg).eval()
    x = torch.randn(1, 1, 64, 64)
    seen = []
    hooks = [enc.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:]))) for enc in model.encoders]
    with torch.no_grad():
        ref = model(x)
    for h in hooks:
        h.remove()
    assert seen == [(c, 64 // 2 ** (i + 1), 64 // 2 ** (i + 1)) for i, c in enumerate(cfg.channels)]
    # the cascaded upsampler reads every CNN skip: zeroing one changes the logits
    for enc in model.encoders[:-1]:
        h = enc.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        with torch.no_grad():
            assert (model(x) - ref).abs().max() > 1e-4
        h.remove()
