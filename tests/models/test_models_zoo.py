"""Every registered model, 2D and 3D: shapes, gradients, channels_last, autocast, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from model_cases import NAMES, case_params, random_input, small_config

from napari_medseg.models import Checkpoint, available_models, build_model, load_model, save_checkpoint
from napari_medseg.models.registry import check_input_size, required_multiple


def test_every_model_is_registered():
    assert set(NAMES) <= set(available_models())


@pytest.mark.parametrize("name, nd", case_params())
def test_output_shape_and_channels(name, nd):
    cfg = small_config(name, nd, in_channels=3, out_channels=4)
    x = random_input(cfg, batch=2)
    check_input_size(cfg, tuple(x.shape[2:]))
    model = build_model(cfg).eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 4, *x.shape[2:])
    assert torch.isfinite(y).all()
    # batch items are independent (no batch statistics leak in eval mode)
    with torch.no_grad():
        y0 = model(x[:1])
    torch.testing.assert_close(y0, y[:1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, nd", case_params())
def test_single_channel_ct_and_multi_sequence_mri(name, nd):
    for c_in, c_out in [(1, 2), (4, 3)]:
        cfg = small_config(name, nd, in_channels=c_in, out_channels=c_out)
        x = random_input(cfg)
        with torch.no_grad():
            assert build_model(cfg).eval()(x).shape == (1, c_out, *x.shape[2:])


@pytest.mark.parametrize("name, nd", case_params())
def test_gradients_reach_every_parameter(name, nd):
    torch.manual_seed(0)
    cfg = small_config(name, nd)
    model = build_model(cfg).train()
    x = random_input(cfg)
    target = torch.randint(0, cfg.out_channels, (1, *x.shape[2:]))
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # every top-level module with parameters gets a non-zero gradient somewhere
    for child_name, child in model.named_children():
        grads = [p.grad.abs().sum() for p in child.parameters()]
        if grads:
            assert sum(grads) > 0, f"all-zero gradient in {child_name}"
    # one optimiser step lowers the loss on the same batch
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.step()
    with torch.no_grad():
        loss2 = torch.nn.functional.cross_entropy(model(x), target)
    assert loss2 < loss


@pytest.mark.parametrize("name, nd", case_params())
def test_channels_last_gives_the_same_output(name, nd):
    cfg = small_config(name, nd)
    model = build_model(cfg).eval()
    x = random_input(cfg)
    fmt = torch.channels_last if nd == 2 else torch.channels_last_3d
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=fmt)
        y = model_cl(x.contiguous(memory_format=fmt))
    assert x.contiguous(memory_format=fmt).is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y.contiguous(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, nd", case_params())
def test_bfloat16_autocast_forward_and_backward(name, nd):
    cfg = small_config(name, nd)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # 3D U-Nets (plain, attention, nested) at 32^3 end in a 2x2x2 bottleneck, where torch 2.13's CPU bf16 convolution
    # backward returns non-finite weight gradients now and then for the *same* seeded weights and input
    # (13 of 300 and 23 of 200 repeats in one process; 0 of 600 at 48^3, whose bottleneck is 3x3x3): a backend
    # fault of tiny inputs, not of the model. 48^3 keeps the check about the model.
    # fusion_unet is such a U-Net too (15 of 100 fresh seeded repeats at 32^3 with one thread, 0 of 100 at 48^3).
    # TransUNet's 3D test size (64, five widths) ends the same way (a 2x2x2 token grid): 96 gives 3x3x3
    size = 48 if (nd == 3 and name in ("unet", "attention_unet", "unetpp", "fusion_unet")) else (
        96 if (nd == 3 and name == "transunet") else None)
    x = random_input(cfg) if size is None else torch.randn(
        (1, cfg.in_channels) + (size,) * 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.shape == ref.shape
    assert torch.isfinite(y).all()
    # bf16 keeps 8 bits of mantissa (~2-3 significant digits) and the error compounds over ~10-20 layers: the
    # logits agree to a few percent of their range (0.1 leaves room for that, not for a wrong op)
    err = (y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)
    assert err < 0.1, f"bf16 logits differ by {float(err):.3f} of their range"
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing and not bad, f"no gradient: {missing[:3]}; non-finite gradient: {bad[:3]}"


@pytest.mark.parametrize("name, nd", case_params(slow_3d=("swin_unetr", "unetpp")))
def test_checkpoint_round_trip(name, nd, tmp_path):
    cfg = small_config(name, nd, in_channels=2, out_channels=3)
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "m.pt", Checkpoint(model_config=cfg, state_dict=model.state_dict()))
    loaded, ckpt = load_model(path)
    assert ckpt.model_config == cfg
    x = random_input(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert not loaded.training


@pytest.mark.parametrize("name", NAMES)
def test_required_multiple_and_minimum_are_accepted(name):
    cfg = small_config(name, 2)
    m = required_multiple(cfg)
    from napari_medseg.models.registry import min_input_size

    lo = min_input_size(cfg)
    assert lo % m == 0
    check_input_size(cfg, (lo, lo + m))
    x = torch.randn(1, cfg.in_channels, lo, lo + m)
    model = build_model(cfg).train()  # training mode: instance norm needs > 1 pixel at the bottleneck
    assert model(x).shape == (1, cfg.out_channels, lo, lo + m)
