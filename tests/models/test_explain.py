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
