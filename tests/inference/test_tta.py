"""Test-time augmentation modes: flips and the dihedral group (4 rotations x mirror) average the model over
transformed windows; the dihedral average is itself equivariant to rotations, which a plain model is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference.modelrun import WindowRunner, tta_identity, tta_mode
from napari_medseg.models import ModelConfig, build_model


@pytest.fixture
def net():
    torch.manual_seed(0)
    return build_model(ModelConfig(channels=(4, 8), num_res_units=0, out_channels=3)).eval()


def test_dihedral_average_is_rotation_equivariant(net):
    x = torch.rand(2, 1, 32, 32)
    plain = WindowRunner(net, torch.device("cpu"), batch_size=2)
    tta = WindowRunner(net, torch.device("cpu"), batch_size=2, tta="dihedral")
    rot = lambda t: torch.rot90(t, 1, (2, 3))  # noqa: E731
    assert (plain(rot(x)) - rot(plain(x))).abs().max() > 1e-3  # the model alone is not
    assert torch.allclose(tta(rot(x)), rot(tta(x)), atol=1e-5)
    assert torch.allclose(tta(torch.flip(x, [2])), torch.flip(tta(x), [2]), atol=1e-5)
    assert torch.allclose(tta(x).sum(1), torch.ones(2, 32, 32), atol=1e-5)  # still probabilities


def test_flips_mode_is_the_old_boolean(net):
    x = torch.rand(1, 1, 32, 32)
    a = WindowRunner(net, torch.device("cpu"), batch_size=1, tta=True)(x)
    b = WindowRunner(net, torch.device("cpu"), batch_size=1, tta="flips")(x)
    assert torch.equal(a, b)
    assert tta_identity(True) is True and tta_identity(False) is False and tta_identity("dihedral") == "dihedral"


def test_bad_tta_choices(net):
    with pytest.raises(MedsegError, match="unknown test-time augmentation"):
        tta_mode("rotate")
    with pytest.raises(MedsegError, match="square 2D windows"):
        WindowRunner(net, torch.device("cpu"), batch_size=1, tta="dihedral")(torch.rand(1, 1, 32, 48))


def _with_config(dims: int = 2):
    from napari_medseg.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=dims, in_channels=3, out_channels=3, channels=(4, 8, 16), num_res_units=0)
    net = build_model(cfg).eval()
    net.medseg_config = cfg  # what resolve_model reads for a live module
    return net, cfg


def test_multiscale_windows_follow_the_model_size_rule():
    from napari_medseg.inference.modelrun import resolve_model, tta_windows

    net, _ = _with_config()
    loaded = resolve_model(net)
    assert tta_windows(loaded, (64, 64)) == ((48, 48), (64, 64), (80, 80))  # 0.75, 1, 1.25; multiples of 4
    assert tta_windows(loaded, (256, 128)) == ((192, 96), (256, 128), (320, 160))
    assert tta_windows(loaded, (8, 8)) == ((8, 8), (12, 12))  # 6 is below the minimum (8): not run twice
    with pytest.raises(MedsegError, match="too small to take another scale"):
        tta_windows(loaded, (4, 4))
    with pytest.raises(MedsegError, match="window sizes are known"):
        tta_windows(resolve_model(build_model(ModelConfig(channels=(4, 8), num_res_units=0))), (64, 64))


def test_multiscale_average_is_the_mean_of_the_rescaled_passes():
    import torch.nn.functional as F

    net, _ = _with_config()
    x = torch.rand(2, 3, 32, 32)
    wins = ((24, 24), (32, 32), (40, 40))
    got = WindowRunner(net, torch.device("cpu"), batch_size=2, tta="multiscale", scaled_windows=wins,
                       cpu_nhwc=False)(x)
    with torch.inference_mode():
        ref = torch.softmax(net(x), 1)
        for w, aa in (((24, 24), True), ((40, 40), False)):
            y = torch.softmax(net(F.interpolate(x, size=w, mode="bilinear", align_corners=False, antialias=aa)), 1)
            ref += F.interpolate(y, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, ref / 3, atol=1e-6, rtol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    assert (got - WindowRunner(net, torch.device("cpu"), batch_size=2)(x)).abs().max() > 1e-3
    with pytest.raises(MedsegError, match="scaled windows"):
        WindowRunner(net, torch.device("cpu"), tta="multiscale")


def test_multiscale_tta_in_the_tiled_predictor_is_tile_consistent(tmp_path, rgb_source):
    from infer_helpers import read_probs

    from napari_medseg.inference import run_predict

    net, _ = _with_config()
    outs = []
    for i, block in enumerate([(64, 64), (192, 256)]):
        run_predict(rgb_source, net, tmp_path / f"{i}.zarr", window=(64, 64), tta="multiscale", tissue_mask=False,
                    device="cpu", block=block, write_probs="float32")
        outs.append(read_probs(tmp_path / f"{i}.zarr"))
    assert np.abs(outs[0] - outs[1]).max() < 1e-5  # the same windows whatever the blocks
    assert np.allclose(outs[0].sum(0), 1.0, atol=1e-5)
    run_predict(rgb_source, net, tmp_path / "plain.zarr", window=(64, 64), tissue_mask=False, device="cpu",
                write_probs="float32")
    assert np.abs(read_probs(tmp_path / "plain.zarr") - outs[0]).max() > 1e-3
