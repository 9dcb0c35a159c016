"""The prediction zoom: the model sees each window resampled by a factor and its probabilities come back to the
image's pixels (for objects smaller or larger than those the model learnt from)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference.modelrun import WindowRunner, resolve_model, scaled_window
from napari_medseg.models import ModelConfig, build_model


def _net():
    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=2, in_channels=3, out_channels=3, channels=(4, 8, 16), num_res_units=0)
    net = build_model(cfg).eval()
    net.medseg_config = cfg  # what resolve_model reads for a live module
    return net


def test_the_zoomed_window_follows_the_model_size_rule():
    loaded = resolve_model(_net())
    assert scaled_window(loaded, (64, 64), 2.0, "a zoom") == (128, 128)
    assert scaled_window(loaded, (64, 48), 1.3, "a zoom") == (84, 64)  # multiples of 4
    assert scaled_window(loaded, (64, 64), 0.05, "a zoom") == (8, 8)  # not below the model's minimum


def test_the_runner_resamples_in_and_back():
    net = _net()
    x = torch.rand(2, 3, 32, 32)
    got = WindowRunner(net, torch.device("cpu"), batch_size=2, cpu_nhwc=False, zoom_window=(64, 64))(x)
    with torch.inference_mode():
        y = torch.softmax(net(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)), 1)
        ref = F.interpolate(y, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    assert got.shape == (2, 3, 32, 32) and torch.allclose(got.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    plain = WindowRunner(net, torch.device("cpu"), batch_size=2, cpu_nhwc=False)(x)
    assert (got - plain).abs().max() > 1e-3  # the model did see another scale
    # with flips the zoom applies to every flipped pass
    flips = WindowRunner(net, torch.device("cpu"), batch_size=2, cpu_nhwc=False, tta="flips", zoom_window=(64, 64))(x)
    assert torch.allclose(flips.sum(1), torch.ones(2, 32, 32), atol=1e-5) and (flips - got).abs().max() > 1e-4
    with pytest.raises(MedsegError, match="do not combine"):
        WindowRunner(net, torch.device("cpu"), tta="multiscale", scaled_windows=((24, 24), (32, 32)),
                     zoom_window=(64, 64))


def test_zoom_in_the_tiled_predictor(tmp_path, rgb_source):
    from infer_helpers import read_probs

    from napari_medseg.inference import run_predict

    net = _net()
    outs = []
    for i, block in enumerate([(64, 64), (192, 256)]):
        r = run_predict(rgb_source, net, tmp_path / f"{i}.zarr", window=(64, 64), zoom=1.5, tissue_mask=False,
                        device="cpu", block=block, write_probs="float32")
        outs.append(read_probs(tmp_path / f"{i}.zarr"))
    assert np.abs(outs[0] - outs[1]).max() < 1e-5  # tile-consistent: the same windows whatever the blocks
    assert outs[0].shape[1:] == tuple(rgb_source.shape[:2])  # written at the image's own pixels
    assert np.allclose(outs[0].sum(0), 1.0, atol=1e-5)
    run_predict(rgb_source, net, tmp_path / "plain.zarr", window=(64, 64), tissue_mask=False, device="cpu",
                write_probs="float32")
    assert np.abs(read_probs(tmp_path / "plain.zarr") - outs[0]).max() > 1e-3
    # another zoom is another job: a resumed run never mixes two
    with pytest.raises(MedsegError, match="settings.zoom"):
        run_predict(rgb_source, net, tmp_path / "0.zarr", window=(64, 64), zoom=2.0, tissue_mask=False,
                    device="cpu", block=(64, 64), write_probs="float32")
    assert r is not None


@pytest.mark.parametrize("zoom, match", [(0.1, "between 0.25 and 4"), (5, "between 0.25 and 4"),
                                         (float("nan"), "between 0.25 and 4"), ("big", "must be a number")])
def test_bad_zooms_are_refused_before_anything_is_written(tmp_path, rgb_source, zoom, match):
    from napari_medseg.inference import run_predict

    with pytest.raises(MedsegError, match=match):
        run_predict(rgb_source, _net(), tmp_path / "o.zarr", window=(64, 64), zoom=zoom, device="cpu")
    assert not (tmp_path / "o.zarr").exists()


def test_zoom_and_multiscale_tta_are_refused_together(tmp_path, rgb_source):
    from napari_medseg.inference import run_predict

    with pytest.raises(MedsegError, match="do not combine"):
        run_predict(rgb_source, _net(), tmp_path / "o.zarr", window=(64, 64), zoom=2, tta="multiscale",
                    device="cpu")
