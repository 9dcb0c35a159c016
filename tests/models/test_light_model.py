"""``light_unet`` (models/light_family.py): size targets, shapes 2D/3D, gradients, options honoured, size rule,
export and checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError
from napari_medseg.models import (
    Checkpoint,
    ModelConfig,
    available_models,
    build_model,
    check_input_size,
    load_model,
    preset,
    required_multiple,
    save_checkpoint,
)
from napari_medseg.models.light_family import LightBlock, LightUNet


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _cfg(nd: int = 2, **kw) -> ModelConfig:
    return preset("light_unet", spatial_dims=nd, **{"in_channels": 2, "out_channels": 3, **kw})


def _x(cfg: ModelConfig, size: int | None = None, batch: int = 1, seed: int = 0) -> torch.Tensor:
    size = size or (64 if cfg.spatial_dims == 2 else 32)
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, cfg.in_channels) + (size,) * cfg.spatial_dims, generator=g)


def test_registered_with_presets():
    assert "light_unet" in available_models()
    small = preset("light_unet")
    assert small.channels == (8, 16, 32, 64, 128) and small.act == "relu" and small.num_res_units == 1
    assert small.norm == "instance"  # weight-average friendly (light_family docstring)
    assert preset("light_unet", "base").channels == (16, 32, 64, 128, 256)
    assert isinstance(build_model(small), LightUNet)


@pytest.mark.parametrize("nd", [2, 3])
def test_parameters_at_most_an_eighth_of_the_default_unet(nd):
    light = _params(build_model(preset("light_unet", spatial_dims=nd)))
    unet = _params(build_model(ModelConfig(spatial_dims=nd)))
    assert light * 8 <= unet, (light, unet)
    # and below the small training U-Net (TrainConfig's default) too
    from napari_medseg.training.config import DEFAULT_MODEL

    assert light < _params(build_model(DEFAULT_MODEL.replace(spatial_dims=nd)))


@pytest.mark.parametrize("nd", [2, 3])
def test_shapes_batches_and_finite_output(nd):
    cfg = _cfg(nd)
    model = build_model(cfg).eval()
    x = _x(cfg, batch=2)
    with torch.no_grad():
        y = model(x)
        y0 = model(x[:1])
    assert y.shape == (2, 3, *x.shape[2:]) and torch.isfinite(y).all()
    torch.testing.assert_close(y0, y[:1], atol=1e-5, rtol=1e-5)  # batch items independent in eval
    # another valid size, not square
    x2 = torch.randn(1, 2, *((48, 80) if nd == 2 else (32, 48, 64)))
    check_input_size(cfg, tuple(x2.shape[2:]))
    with torch.no_grad():
        assert model(x2).shape == (1, 3, *x2.shape[2:])


@pytest.mark.parametrize("nd", [2, 3])
def test_gradients_reach_every_parameter_and_a_step_lowers_the_loss(nd):
    torch.manual_seed(0)
    cfg = _cfg(nd)
    model = build_model(cfg).train()
    x = _x(cfg, batch=2)
    target = torch.randint(0, 3, (2, *x.shape[2:]))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing[:5]}"
    torch.optim.SGD(model.parameters(), lr=0.05).step()
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(x), target) < loss


def test_size_rule_matches_the_unet():
    for ch in [(8, 16, 32, 64, 128), (8, 16, 32), (4, 8)]:
        cfg = _cfg(channels=ch)
        assert required_multiple(cfg) == 2 ** (len(ch) - 1) == required_multiple(ModelConfig(channels=ch))
        size = 2 * required_multiple(cfg)
        with torch.no_grad():
            assert build_model(cfg).eval()(_x(cfg, size)).shape[2:] == (size, size)
    with pytest.raises(MedsegError, match="multiples of 16"):
        check_input_size(_cfg(), (40, 64))


def test_options_are_honoured():
    def count(m: nn.Module, kind: type) -> int:
        return sum(isinstance(x, kind) for x in m.modules())

    relu = build_model(_cfg(act="relu"))
    prelu = build_model(_cfg(act="prelu"))
    assert count(relu, nn.ReLU) > 0 and count(relu, nn.PReLU) == 0
    assert count(prelu, nn.PReLU) == count(relu, nn.ReLU)
    assert count(build_model(_cfg(norm="batch")), nn.BatchNorm2d) > 0
    inst = build_model(_cfg(norm="instance"))
    assert count(inst, nn.InstanceNorm2d) > 0 and count(inst, nn.BatchNorm2d) == 0
    assert count(build_model(_cfg(nd=3, norm="batch")), nn.BatchNorm3d) > 0
    # widths: the stem makes channels[0], the bottleneck channels[-1]
    m = build_model(_cfg(channels=(6, 12, 24)))
    assert m.stem[0].out_channels == 6 and m.downs[-1].pw.out_channels == 24
    # blocks per level: encoder levels 1..4 (level 0 is the stem alone) and decoder levels 0..3
    n_levels = 5
    for n in (0, 1, 2):
        assert count(build_model(_cfg(num_res_units=n)), LightBlock) == n * 2 * (n_levels - 1)
    assert count(build_model(_cfg(dropout=0.2)), nn.Dropout) == 1
    assert count(build_model(_cfg()), nn.Dropout) == 0


def test_bad_configs_say_what_is_wrong():
    with pytest.raises(MedsegError, match="at least two"):
        build_model(_cfg(channels=(8,)))
    with pytest.raises(MedsegError, match="instance or batch"):
        build_model(_cfg(norm="group"))
    with pytest.raises(MedsegError, match="num_res_units"):
        build_model(_cfg(num_res_units=-1))
    with pytest.raises(MedsegError, match="dropout"):
        build_model(_cfg(dropout=1.0))


def test_block_is_an_inverted_residual():
    blk = LightBlock(2, 8, "batch", "relu").eval()
    assert blk.expand.out_channels == 16 and blk.dw.groups == 8 and blk.project.out_channels == 8
    x = torch.randn(2, 8, 16, 16)
    nn.init.zeros_(blk.project.weight)
    nn.init.zeros_(blk.project.bias)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), x)  # a zero branch leaves the residual: identity


def test_only_the_stem_input_and_the_head_output_are_at_full_resolution():
    """The CPU-time rule of the design: every feature map inside is at half resolution or coarser."""
    cfg = _cfg()
    model = build_model(cfg).eval()
    full: list[str] = []
    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            mod.register_forward_hook(
                lambda m, i, o, name=name: full.append(name) if o.shape[-1] == 64 else None)
    with torch.no_grad():
        model(_x(cfg, 64))
    assert full == ["head"]


@pytest.mark.parametrize("nd", [2, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_channels_last_and_checkpoint_round_trip(nd, norm, tmp_path):
    cfg = _cfg(nd, norm=norm)
    torch.manual_seed(1)
    model = build_model(cfg)
    # train a few steps (batch norm: running statistics that are not the defaults, and must travel)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(2):
        opt.zero_grad()
        model(_x(cfg, batch=2, seed=i)).square().mean().backward()
        opt.step()
    model.eval()
    path = save_checkpoint(tmp_path / "m.pt", Checkpoint(model_config=cfg, state_dict=model.state_dict()))
    loaded, ck = load_model(path)
    assert ck.model_config == cfg and not loaded.training
    x = _x(cfg, seed=5)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(loaded(x), ref)
        fmt = torch.channels_last if nd == 2 else torch.channels_last_3d
        y = model.to(memory_format=fmt)(x.contiguous(memory_format=fmt))
    torch.testing.assert_close(y.contiguous(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("nd", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_export_torchscript_and_onnx_with_free_sizes(nd, tmp_path):
    from napari_medseg.models.export import export_onnx, export_torchscript, supports_dynamic_spatial

    cfg = _cfg(nd)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert supports_dynamic_spatial(model)
    x = _x(cfg)
    ts = export_torchscript(model, x, tmp_path / "m.ts")
    assert ts.dynamic_spatial and ts.max_abs_diff <= 1e-4
    ort = pytest.importorskip("onnxruntime")
    res = export_onnx(model, x, tmp_path / "m.onnx")
    assert res.dynamic_spatial and res.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    other = torch.randn(2, 2, *((96, 160) if nd == 2 else (32, 48, 64)))
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"image": other.numpy()})[0], model(other).numpy(), atol=1e-4)


def test_bfloat16_autocast_forward_and_backward():
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = _x(cfg)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
    err = (y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)
    assert err < 0.1, f"bf16 logits differ by {float(err):.3f} of their range"
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(_x(cfg, batch=2)).float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
