"""Late-fusion ``fusion_unet`` (models/fusion.py) and the two-modality proof (seed-inventory D3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_medseg.core.errors import MedsegError
from napari_medseg.models import ModelConfig, build_model
from napari_medseg.models.export import export_onnx, export_torchscript
from napari_medseg.models.registry import preset, required_multiple
from napari_medseg.samples.multimodal import two_modality_and

TINY = dict(channels=(4, 8, 16), num_res_units=1)


def _zscore(x: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, x.ndim))
    return (x - x.mean(axis=axes, keepdims=True)) / x.std(axis=axes, keepdims=True)


def _data(n: int, seed: int, contrast: str, shape=(64, 64)):
    xs, ys = zip(*[two_modality_and(shape, seed=seed + i, contrast=contrast) for i in range(n)])
    return torch.from_numpy(np.stack([_zscore(x) for x in xs])), torch.from_numpy(np.stack(ys)).long()


def _train_and_dice(name: str, chans: list[int], contrast: str = "same", steps: int = 120, seed: int = 0) -> float:
    """Train a small model for ``steps`` (batch 4, Adam, CE + Dice) on 16 images; Dice of the class on 6 others."""
    torch.manual_seed(seed)
    xtr, ytr = _data(16, 100, contrast)
    xte, yte = _data(6, 900, contrast)
    xtr, xte = xtr[:, chans], xte[:, chans]
    cfg = ModelConfig(name=name, in_channels=len(chans), out_channels=2, channels=(8, 16, 32), num_res_units=1)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (4,), generator=g)
        out = model(xtr[idx])
        p, y = out.softmax(1)[:, 1], (ytr[idx] == 1).float()
        loss = F.cross_entropy(out, ytr[idx]) + 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(xte).argmax(1) == 1
    truth = yte == 1
    return 2 * (pred & truth).sum().item() / max(1, pred.sum().item() + truth.sum().item())


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here on one torch thread (conftest.py)."""


def test_the_class_needs_both_modalities():
    """Seed-inventory D3 (fast 2D version; benchmarks/bench_fusion.py has the 3-seed one): with both channels a
    small model finds "bright in ch0 AND bright in ch1"; either channel alone cannot (< 0.7 Dice)."""
    both = _train_and_dice("unet", [0, 1])
    alone = [_train_and_dice("unet", [0]), _train_and_dice("unet", [1])]
    late = _train_and_dice("fusion_unet", [0, 1])
    assert both >= 0.85 and late >= 0.85, (both, late)
    assert max(alone) <= 0.7, alone
    assert min(both, late) - max(alone) >= 0.2


def test_the_synthetic_ceiling_for_one_channel_is_below_0_7():
    """Predicting a whole channel's bright region (the best a one-channel model can do) stays under 0.7 Dice."""
    for seed in range(5):
        for contrast in ("same", "different"):
            x, y = two_modality_and((64, 64), seed=seed, contrast=contrast)
            a = (x[0] > 0.5)
            both = y.astype(bool)
            assert 2 * (a & both).sum() / (a.sum() + both.sum()) < 0.75
            assert both.sum() > 0


def test_each_encoder_sees_only_its_modality_and_the_output_uses_both():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="fusion_unet", in_channels=2, out_channels=3, **TINY)).eval()
    x = torch.randn(1, 2, 32, 32)
    x2 = x.clone()
    x2[:, 1] += torch.randn(1, 32, 32)
    with torch.no_grad():
        f, f2 = model.modality_features(x), model.modality_features(x2)
        for a, b in zip(f[0], f2[0]):  # encoder 0 does not see channel 1
            torch.testing.assert_close(a, b)
        assert not torch.allclose(f[1][-1], f2[1][-1])
        assert not torch.allclose(model(x), model(x2))
    assert len(model.encoders) == 2 and [t.shape[1] for t in f[0]] == [4, 8, 16]


def test_wrong_number_of_channels_is_a_clear_error_and_one_channel_works():
    model = build_model(ModelConfig(name="fusion_unet", in_channels=3, **TINY))
    with pytest.raises(MedsegError, match="built for 3 input channels .* got an input with 2"):
        model(torch.randn(1, 2, 16, 16))
    one = build_model(ModelConfig(name="fusion_unet", in_channels=1, **TINY))
    assert one(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)
    with pytest.raises(MedsegError, match="at least two positive channel widths"):
        build_model(ModelConfig(name="fusion_unet", channels=(8,)))


def test_3d_shapes_sizes_and_presets():
    cfg = ModelConfig(name="fusion_unet", spatial_dims=3, in_channels=2, out_channels=4, **TINY)
    assert build_model(cfg)(torch.randn(1, 2, 16, 24, 8)).shape == (1, 4, 16, 24, 8)
    assert required_multiple(cfg) == 4
    assert preset("fusion_unet", "base").channels == (32, 64, 128, 256, 512)
    assert preset("fusion_unet", "small").channels == ModelConfig().channels
    # parameters grow with the number of encoders
    n = [sum(p.numel() for p in build_model(cfg.replace(in_channels=k)).parameters()) for k in (1, 2)]
    assert n[1] > 1.4 * n[0]


def test_export_torchscript_and_onnx(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="fusion_unet", in_channels=2, out_channels=3, **TINY))
    x = torch.randn(1, 2, 32, 32)
    res = export_torchscript(model, x, tmp_path / "m.ts")
    assert res.max_abs_diff <= 1e-4 and res.dynamic_spatial
    pytest.importorskip("onnxruntime")
    res = export_onnx(model, x, tmp_path / "m.onnx", opset=17)
    assert res.max_abs_diff <= 1e-4 and res.dynamic_spatial
