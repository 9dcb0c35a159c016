"""Grad-CAM and attention maps: shapes and ranges, the default layer, and faithfulness on a trained model."""

from __future__ import annotations

import pytest
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.models import ModelConfig, build_model
from napari_medseg.models.explain import attention_maps, deepest_layer, explain, gradcam


def _discs(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs (class 1) at random places on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = torch.rand(n, 1, size, size, generator=g) * 0.3
    y = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(2):
            cy, cx = torch.randint(10, size - 10, (2,), generator=g).tolist()
            d = (yy - cy) ** 2 + (xx - cx) ** 2 < 49
            x[i, 0][d] += 0.6
            y[i][d] = 1
    return x, y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    net = build_model(ModelConfig(channels=(8, 16, 32), num_res_units=1))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for s in range(60):
        x, y = _discs(8, seed=s)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def test_gradcam_maps_are_in_0_1_at_input_size_and_follow_the_class(trained):
    x, y = _discs(4, seed=100)
    cam = gradcam(trained, x, 1)
    assert cam.shape == (4, 64, 64) and float(cam.min()) >= 0 and float(cam.max()) <= 1
    assert torch.allclose(cam.flatten(1).amax(1), torch.ones(4))
    assert cam[y == 1].mean() > 10 * cam[y == 0].mean()  # high on the discs it explains, ~0 elsewhere
    assert deepest_layer(trained, x) == "model.1.submodule.1"  # MONAI UNet's bottleneck level (1/4 here)
    with pytest.raises(MedsegError, match="not a channel"):
        gradcam(trained, x, 5)
    with pytest.raises(MedsegError, match="no layer"):
        gradcam(trained, x, 1, layer="nowhere")


def test_gradcam_is_faithful(trained):
    """Masking the top 10 % Grad-CAM pixels lowers the class's probability more than masking a random 10 %."""
    x, _ = _discs(10, seed=200)
    cam = gradcam(trained, x, 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the class's mean probability over the pixels predicted as it (the explained ones)
        p = torch.softmax(trained(x), 1)
        pred = p.argmax(1) == 1
        base = p[:, 1][pred].mean()
        top = cam.flatten(1) >= cam.flatten(1).quantile(0.9, dim=1, keepdim=True)
        rnd = torch.rand(cam.flatten(1).shape, generator=g) < 0.1
        drop = {}
        for what, m in (("top", top), ("random", rnd)):
            xm = x.clone().flatten(2)
            xm[:, 0][m] = 0.0
            drop[what] = float(base - torch.softmax(trained(xm.view_as(x)), 1)[:, 1][pred].mean())
    assert drop["top"] > 2 * max(drop["random"], 1e-4), drop


def test_attention_maps_one_per_gate_in_0_1():
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="attention_unet", channels=(4, 8, 16), out_channels=3)).eval()
    x = torch.rand(2, 1, 32, 32)
    maps = explain(net, x, "attention")
    assert len(maps) == 2 and all(m.shape == (2, 32, 32) for m in maps)
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in maps)
    with pytest.raises(MedsegError, match="no attention gates"):
        attention_maps(build_model(ModelConfig(channels=(4, 8), num_res_units=0)), x)
    with pytest.raises(MedsegError, match="kind must be"):
        explain(net, x, "saliency")


def test_explain_a_region_of_an_image(trained, tmp_path):
    """The engine the Predict widget's 'Explain view' runs: a region read, normalised, padded to a size the model
    takes, explained and cropped; placed like the preview."""
    import numpy as np

    from napari_medseg.core.source import ImageSource
    from napari_medseg.inference.explain_region import explain_region
    from napari_medseg.models import Checkpoint, save_checkpoint
    from napari_medseg.models.normalization import NormConfig

    x, y = _discs(1, size=96, seed=300)
    img = (x[0, 0].numpy() * 255).clip(0, 255).astype(np.uint8)
    src = ImageSource(levels=[img], axes="YX", pixel_size=(0.5, 0.5), name="discs", path=None)
    cfg = ModelConfig(channels=(8, 16, 32), num_res_units=1)
    ck = save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg, trained.state_dict(), norm=NormConfig("range", (0.0,),
                                                                                                    (255.0,))))
    res = explain_region(ck, src, 0, (slice(10, 80), slice(5, 95)))  # 70 x 90: padded to 72 x 92 inside
    assert res.maps[0].shape == (70, 90) and res.maps[0].min() >= 0 and res.maps[0].max() <= 1
    assert res.translate == (5.0, 2.5) and res.scale == (0.5, 0.5)
    inside = y[0, 10:80, 5:95].numpy() == 1
    assert res.maps[0][inside].mean() > 5 * res.maps[0][~inside].mean()
    with pytest.raises(MedsegError, match="outside the image"):
        explain_region(ck, src, 0, (slice(200, 300), slice(0, 10)))
    # a bare module carries no normalisation: a uint8 image is read as 0-255, another type must name one
    bare = explain_region(trained, src, 0, (slice(10, 80), slice(5, 95)))
    assert bare.maps[0][inside].mean() > 5 * bare.maps[0][~inside].mean()  # (padded to 32s: not equal to res)
    floats = ImageSource(levels=[img.astype(np.float32)], axes="YX", pixel_size=(0.5, 0.5), name="f", path=None)
    with pytest.raises(MedsegError, match="not uint8: pass the model's normalisation"):
        explain_region(trained, floats, 0, (slice(10, 80), slice(5, 95)))
    ok = explain_region(trained, floats, 0, (slice(10, 80), slice(5, 95)), NormConfig("range", (0.0,), (255.0,)))
    assert np.allclose(ok.maps[0], bare.maps[0], atol=1e-5)  # the same numbers as the uint8 image's default


def test_explain_command_writes_the_map(trained, tmp_path):
    """``napari-medseg explain``: the same map as the engine, as a float32 TIFF; bad regions are one sentence."""
    import numpy as np
    import tifffile

    from napari_medseg.cli import main
    from napari_medseg.inference.explain_region import explain_region
    from napari_medseg.models import Checkpoint, save_checkpoint
    from napari_medseg.models.normalization import NormConfig

    x, _ = _discs(1, size=96, seed=301)
    img = tmp_path / "discs.tif"
    tifffile.imwrite(img, (x[0, 0].numpy() * 255).clip(0, 255).astype(np.uint8))
    ck = save_checkpoint(tmp_path / "m.pt", Checkpoint(ModelConfig(channels=(8, 16, 32), num_res_units=1),
                                                       trained.state_dict(), norm=NormConfig("range", (0.0,), (255.0,))))
    out = tmp_path / "cam.tif"
    assert main(["explain", str(img), "--model", str(ck), "--region", "8:72,16:80", "--out", str(out)]) == 0
    got = tifffile.imread(out)
    from napari_medseg.io.reader import open_image

    ref = explain_region(ck, open_image(img), 0, (slice(8, 72), slice(16, 80))).maps[0]
    assert got.dtype == np.float32 and got.shape == (64, 64)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert main(["explain", str(img), "--model", str(ck), "--region", "8:4,16:80", "--out", str(out)]) == 2


# --- transformer attention (rollout for global self-attention, received attention for Swin windows) ---------------

def _vit_config(name: str, nd: int, depth: int = 2) -> ModelConfig:
    return ModelConfig(name=name, spatial_dims=nd, in_channels=1, out_channels=3, channels=(4, 8, 16),
                       num_res_units=1, feature_size=12, depths=(depth,), num_heads=(3,))


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("name,nd,size", [("unetr", 2, 64), ("unetr", 3, 32), ("transunet", 2, 32),
                                          ("swin_unet", 2, 32), ("nnformer", 2, 32)])
def test_transformer_map_leaves_the_model_as_it_was(name, nd, size):
    """Input-sized, finite, in [0, 1]; the model's output is bit-identical, its state dict, hooks, attention
    settings and training flag as before."""
    from napari_medseg.models.explain import _global_blocks

    torch.manual_seed(0)
    if name == "nnformer":
        cfg = ModelConfig(name=name, spatial_dims=nd, in_channels=1, out_channels=3, feature_size=12,
                          depths=(2, 2, 2), num_heads=(3, 3, 3), window_size=4)
    elif name == "swin_unet":
        cfg = ModelConfig(name=name, spatial_dims=nd, in_channels=1, out_channels=3, feature_size=12,
                          depths=(2, 2), num_heads=(3, 3), window_size=4)
    else:
        cfg = _vit_config(name, nd)
    net = build_model(cfg).eval()
    x = torch.randn((2, 1) + (size,) * nd)
    keys = list(net.state_dict())
    settings = [(b.save_attn, b.use_flash_attention) for b in _global_blocks(net)]
    with torch.no_grad():
        before = net(x)
    (m,) = explain(net, x, "transformer")
    with torch.no_grad():
        after = net(x)
    assert m.shape == (2,) + (size,) * nd and torch.isfinite(m).all()
    assert float(m.min()) >= 0 and float(m.max()) <= 1 and float(m.max()) == 1.0
    assert torch.equal(before, after)
    assert list(net.state_dict()) == keys and _hooks(net) == 0 and not net.training
    assert [(b.save_attn, b.use_flash_attention) for b in _global_blocks(net)] == settings
    net.train()
    explain(net, x, "transformer")
    assert net.training


def test_the_hooks_go_even_on_error():
    net = build_model(_vit_config("unetr", 2)).train()
    with pytest.raises(MedsegError, match="multiples of 16"):
        explain(net, torch.randn(1, 1, 40, 40), "transformer")
    assert _hooks(net) == 0 and net.training


def test_recomputed_attention_is_monais():
    """The attention the map is built from is the one the model uses: MONAI's own ``save_attn`` matrix
    (SABlock) and the probabilities its ``WindowAttention`` softmax gives (Swin)."""
    from napari_medseg.models.explain import _global_blocks, _self_attention, _window_blocks, _window_received

    torch.manual_seed(0)
    net = build_model(_vit_config("unetr", 2)).eval()
    sa = _global_blocks(net)[0]
    got = []
    h = sa.register_forward_pre_hook(lambda mod, args: got.append(_self_attention(mod, args[0], None)))
    flash, sa.use_flash_attention, sa.save_attn = sa.use_flash_attention, False, True
    try:
        with torch.no_grad():
            net(torch.randn(1, 1, 64, 64))
        torch.testing.assert_close(got[0], sa.att_mat.mean(1))
    finally:
        h.remove()
        sa.use_flash_attention, sa.save_attn, sa.att_mat = flash, False, torch.Tensor()
    swin = build_model(ModelConfig(name="swin_unet", spatial_dims=2, in_channels=1, out_channels=3, feature_size=12,
                                   depths=(2, 2), num_heads=(3, 3), window_size=4)).eval()
    wa = _window_blocks(swin)[1].attn  # a shifted block: the mask is used
    mine, theirs = [], []
    hs = [wa.register_forward_pre_hook(lambda mod, a, kw: mine.append(_window_received(mod, a[0], kw.get("mask"))),
                                       with_kwargs=True),
          wa.softmax.register_forward_hook(lambda _m, _i, out: theirs.append(out.mean(dim=(1, 2)) * out.shape[-1]))]
    try:
        with torch.enable_grad():  # the softmax path (MONAI uses flash attention under no_grad)
            swin(torch.randn(1, 1, 32, 32))
    finally:
        for h in hs:
            h.remove()
    assert any(_window_blocks(swin)[1].shift_size)
    torch.testing.assert_close(mine[0], theirs[0].detach())


def test_windows_are_placed_back_where_they_came_from():
    """Padding, cyclic shift and window partition undone: a map of pixel indices comes back as itself."""
    from monai.networks.nets.swin_unetr import get_window_size, window_partition

    from napari_medseg.models.explain import _place_windows, _window_blocks

    swin = build_model(ModelConfig(name="swin_unet", spatial_dims=3, in_channels=1, out_channels=3, feature_size=12,
                                   depths=(2, 2), num_heads=(3, 3), window_size=4))
    block = _window_blocks(swin)[1]
    for spatial in [(8, 8, 8), (6, 10, 9)]:  # 6, 10, 9: padded to the window inside the block
        idx = torch.arange(2 * torch.Size(spatial).numel(), dtype=torch.float32).view(2, *spatial)
        ws, ss = get_window_size(spatial, block.window_size, block.shift_size)
        pads = [p for s, w in zip(reversed(spatial), reversed(ws)) for p in (0, (-s) % w)]
        x = torch.roll(torch.nn.functional.pad(idx, pads, value=-1.0), tuple(-s for s in ss), dims=(1, 2, 3))
        windows = window_partition(x[..., None], ws)[..., 0]
        assert torch.equal(_place_windows(windows, block, (2, *spatial, 12)), idx)


def test_rollout_is_the_product_of_the_residual_matrices():
    from napari_medseg.models.explain import rollout_received

    g = torch.Generator().manual_seed(0)
    layers = [torch.rand(2, 6, 6, generator=g).softmax(-1) for _ in range(3)]
    eye = torch.eye(6)
    r = eye.expand(2, 6, 6)
    for a in layers:  # R = A'_3 A'_2 A'_1
        r = torch.bmm(0.5 * (a + eye), r)
    torch.testing.assert_close(rollout_received(layers), r.mean(1))


def _one_token_gets_all_attention(net: torch.nn.Module, nd: int, ref_box: tuple[slice, ...]) -> None:
    """Hand-set UNETR weights: the tokens are zero but for one (its position embedding ``u``), every query is
    ``c u`` and every key the token itself, so each layer's attention goes to that token; values, projections and
    MLPs are zero, so every layer sees the same tokens."""
    from napari_medseg.models.transunet import POS_GRID

    vit = net.vit
    hidden = vit.patch_embedding.position_embeddings.shape[-1]
    u = torch.tensor([1.0, -1.0] * (hidden // 2))
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        for blk in vit.blocks:
            blk.norm1.weight.fill_(1.0)
            blk.attn.qkv.bias[:hidden] = 10 * u
            blk.attn.qkv.weight[hidden:2 * hidden] = torch.eye(hidden)
        pos = vit.patch_embedding.position_embeddings.view(1, *(POS_GRID[nd],) * nd, hidden)
        pos[(0,) + ref_box] = 4 * u


@pytest.mark.parametrize("nd", [2, 3])
def test_the_map_peaks_on_the_token_that_receives_the_attention(nd):
    """Faithfulness on a constructed case: the token all attention goes to is where the map is 1, and the
    rest of the map is far lower."""
    torch.manual_seed(0)
    net = build_model(_vit_config("unetr", nd)).eval()
    size = 64 if nd == 2 else 32  # token grid 4 x 4 (reference 16 x 16) or 2 x 2 x 2 (reference 8 x 8 x 8)
    token = (1, 2) if nd == 2 else (1, 0, 1)
    ref_box = tuple(slice(4 * t, 4 * t + 4) for t in token)  # 4 x 4 (x 4) reference entries average to it
    _one_token_gets_all_attention(net, nd, ref_box)
    (m,) = explain(net, torch.zeros((1, 1) + (size,) * nd), "transformer")
    patch = (0,) + tuple(slice(16 * t, 16 * t + 16) for t in token)
    inside = torch.zeros_like(m, dtype=torch.bool)
    inside[patch] = True
    assert inside.flatten()[m.flatten().argmax()]
    centre = (0,) + tuple(16 * t + 8 for t in token)
    assert float(m[centre]) > 0.9 and float(m[~inside].mean()) < 0.3


def test_transformer_kind_on_a_model_without_it_names_the_kinds_it_has():
    x = torch.rand(1, 1, 32, 32)
    with pytest.raises(MedsegError, match="no transformer attention.*kinds for this model: gradcam$"):
        explain(build_model(ModelConfig(channels=(4, 8), num_res_units=0)), x, "transformer")
    gates = build_model(ModelConfig(name="attention_unet", channels=(4, 8, 16), out_channels=3))
    with pytest.raises(MedsegError, match="kinds for this model: gradcam, attention$"):
        explain(gates, x, "transformer")
    with pytest.raises(MedsegError, match="no attention gates.*kinds for this model: gradcam, transformer$"):
        explain(build_model(_vit_config("unetr", 2)), torch.rand(1, 1, 64, 64), "attention")
