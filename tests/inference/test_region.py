"""Live preview: a region of one level, placed over the image, with probabilities and uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infer_helpers import halve, monai_probs, small_unet, textured_rgb, zarr_source

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference import predict_region
from napari_medseg.models import NormConfig


@pytest.fixture
def slide(tmp_path):
    img = textured_rgb(400, 500)
    return zarr_source(tmp_path / "s.zarr", [img, halve(img, (0, 1))], "YXC", chunks=(64, 64, 3)), img


def test_region_single_pass(slide, unet2d):
    src, img = slide
    r = predict_region(unet2d, src, 0, (slice(50, 150), slice(70, 231)), NormConfig.uint8(3), with_probs=True)
    assert r.labels.shape == (100, 161) and r.labels.dtype == np.uint8
    assert r.probs.shape == (3, 100, 161) and r.probs.dtype == np.float16
    assert r.uncertainty is None
    assert r.translate == (25.0, 35.0) and r.scale == (0.5, 0.5)
    # the box grows to a size the model takes (multiple of 2) with real image context, then is cropped
    x = torch.from_numpy(img[50:150, 70:232].transpose(2, 0, 1).astype(np.float32))[None] / 255
    with torch.inference_mode():
        p = torch.softmax(unet2d(x), 1)[0, :, :, :161].numpy()
    assert np.abs(r.probs.astype(np.float32) - p).max() < 2e-3
    assert (r.labels == p.argmax(0)).mean() > 0.99


def test_region_sliding_window_is_monai(slide, unet2d):
    src, img = slide
    r = predict_region(unet2d, src, 0, (slice(0, 200), slice(0, 300)), NormConfig.uint8(3), window=(64, 64),
                       with_probs=True)
    ref = monai_probs(unet2d, img[:200, :300].transpose(2, 0, 1), (64, 64), 0.25)
    assert np.abs(r.probs.astype(np.float32) - ref).max() < 1e-3


def test_region_level_1_with_uncertainty(slide, unet2d):
    src, _ = slide
    teacher = small_unet(seed=5)
    r = predict_region(unet2d, src, 1, (slice(10, 90), slice(None, None)), NormConfig.uint8(3),
                       uncertainty_model=teacher)
    assert r.labels.shape == (80, 250) and r.region == (slice(10, 90), slice(0, 250))
    assert r.uncertainty.shape == (80, 250) and r.uncertainty.dtype == np.float32
    assert r.uncertainty.min() >= 0.0 and r.uncertainty.max() <= 1.0 and r.uncertainty.max() > 0
    assert r.scale == (1.0, 1.0) and r.translate == (10 * 1.0 + 0.25, 0.25)


def test_region_volume_2d_model(tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (6, 40, 50), dtype=np.uint8)
    src = zarr_source(tmp_path / "v.zarr", [vol], "ZYX", pixel_size=(2.0, 1.0, 1.0))
    r = predict_region(small_unet(1, 2), src, 0, (slice(2, 4), slice(0, 40), slice(5, 45)), NormConfig.uint8(1))
    assert r.labels.shape == (2, 40, 40)


def test_region_bad_input(slide, unet2d):
    src, _ = slide
    with pytest.raises(MedsegError, match="outside the image"):
        predict_region(unet2d, src, 0, (slice(500, 600), slice(0, 10)), NormConfig.uint8(3))
    with pytest.raises(MedsegError, match="level 3 does not exist"):
        predict_region(unet2d, src, 3, (slice(0, 10), slice(0, 10)), NormConfig.uint8(3))
    with pytest.raises(MedsegError, match="input channel"):
        predict_region(small_unet(1, 2), src, 0, (slice(0, 10), slice(0, 10)), NormConfig.uint8(1))


def test_region_leaves_a_training_model_as_it_was(slide):
    src, _ = slide
    student, teacher = small_unet(), small_unet(seed=3)
    student.train()
    teacher.train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    predict_region(student, src, 0, (slice(0, 64), slice(0, 64)), NormConfig.uint8(3), uncertainty_model=teacher)
    assert student.training and teacher.training  # the preview does not switch training off
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nor touch BatchNorm statistics


def test_region_equals_the_tiled_prediction(tmp_path, unet2d):
    """The preview runs the tiled predictor's parts: over the same pixels, the same probabilities (here the
    whole image as the region; the tiled run in several blocks)."""
    from infer_helpers import read_labels, read_probs

    from napari_medseg.inference import run_predict

    img = textured_rgb(200, 300)
    src = zarr_source(tmp_path / "s.zarr", [img], "YXC", chunks=(64, 64, 3))
    region = (slice(0, 200), slice(0, 300))
    kw = dict(tissue_mask=False, device="cpu", write_probs="float32", block=(128, 128))
    # Gaussian sliding window
    run_predict(src, unet2d, tmp_path / "win.zarr", window=(64, 64), overlap=0.25, **kw)
    r = predict_region(unet2d, src, 0, region, NormConfig.uint8(3), window=(64, 64), with_probs=True,
                       probs_dtype="float32")
    assert r.probs.dtype == np.float32
    assert np.abs(r.probs - read_probs(tmp_path / "win.zarr")).max() < 1e-4
    assert (r.labels == read_labels(tmp_path / "win.zarr")).mean() > 0.999
    # one window over the whole view
    run_predict(src, unet2d, tmp_path / "one.zarr", window=(200, 300), blend="crop", **kw)
    r = predict_region(unet2d, src, 0, region, NormConfig.uint8(3), with_probs=True, probs_dtype="float32")
    assert np.abs(r.probs - read_probs(tmp_path / "one.zarr")).max() < 1e-4


def test_region_volume_2d_model_with_uncertainty(tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (6, 40, 50), dtype=np.uint8)
    src = zarr_source(tmp_path / "v.zarr", [vol], "ZYX", pixel_size=(2.0, 1.0, 1.0))
    region = (slice(2, 4), slice(0, 40), slice(5, 45))
    for window in (None, (32, 32)):
        r = predict_region(small_unet(1, 2), src, 0, region, NormConfig.uint8(1), window=window,
                           uncertainty_model=small_unet(1, 2, seed=1))
        assert r.labels.shape == r.uncertainty.shape == (2, 40, 40)
        assert r.uncertainty.min() >= 0.0 and 0.0 < r.uncertainty.max() <= 1.0


def test_read_box_pads_clips_and_moves_channels(tmp_path):
    """``core.source.read_box``, the one box reader of the preview and the tiled predictor's tiles."""
    from napari_medseg.core.source import box_index, channels_to, read_box

    img = textured_rgb(40, 50)
    src = zarr_source(tmp_path / "s.zarr", [img], "YXC", chunks=(16, 16, 3))
    a = read_box(src, 0, [(-3, 10), (45, 55)])
    assert a.shape == (3, 13, 10) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[:, 3:, :5], img[:10, 45:].transpose(2, 0, 1))
    assert not a[:, :3].any() and not a[:, :, 5:].any()
    b = read_box(src, 0, [(-3, 10), (45, 55)], pad=None, channels_last=True)
    np.testing.assert_array_equal(b, img[:10, 45:])
    lazy = src.levels[0][box_index(src, 0, [(0, 8), (0, 50)])[0]]  # the tile reader's lazy slice
    assert not isinstance(lazy, np.ndarray)
    np.testing.assert_array_equal(channels_to(src, np.asarray(lazy), True), read_box(src, 0, [(0, 8), (0, 50)],
                                                                                     channels_last=True))
    assert read_box(src, 0, [(60, 70), (0, 4)]).shape == (3, 10, 4)  # all outside: all padding
