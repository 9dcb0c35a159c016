"""Tissue masks: found on a low level, skip background blocks and windows, exact on tissue."""

from __future__ import annotations

import numpy as np
import pytest
from infer_helpers import blobs, halve, monai_probs, read_probs, small_unet, textured_rgb, zarr_source

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.tissue import compute_tissue_mask
from napari_medseg.inference import TissueMaskReady, open_prediction, run_predict


def _slide(tmp_path, fraction, h=512, w=640, seed=0):
    tissue = blobs(h, w, fraction, seed=seed, cell=64) if fraction < 1 else np.ones((h, w), bool)
    img = textured_rgb(h, w, seed=seed, tissue=tissue)
    levels = [img]
    for _ in range(3):
        levels.append(halve(levels[-1], (0, 1)))
    return zarr_source(tmp_path / f"s{fraction}.zarr", levels, "YXC", chunks=(64, 64, 3)), tissue


def test_mask_finds_the_tissue(tmp_path):
    src, tissue = _slide(tmp_path, 0.3)
    tm = compute_tissue_mask(src, target_pixel_size=2.0)  # downsample 4 of 0.5 um
    assert tm.level == 2 and tm.mask.shape == (128, 160)
    truth = tissue[::4, ::4]
    assert abs(tm.fraction - truth.mean()) < 0.08
    assert (tm.mask & truth).sum() / truth.sum() > 0.97
    layer = tm.to_source()
    assert layer.kind == "labels" and layer.pixel_size == (2.0, 2.0)


def test_all_tissue_stays_all_tissue_and_blank_is_empty(tmp_path):
    src, _ = _slide(tmp_path, 1.0)
    assert compute_tissue_mask(src, target_pixel_size=2.0).fraction > 0.99
    blank = np.full((256, 256, 3), 236, np.uint8)
    bsrc = zarr_source(tmp_path / "b.zarr", [blank], "YXC")
    assert compute_tissue_mask(bsrc).fraction == 0.0


def test_grey_and_3d(tmp_path):
    img = np.full((256, 256), 230, np.uint8)
    img[64:192, 64:160] = 90  # dark tissue on bright glass
    src = zarr_source(tmp_path / "g.zarr", [img], "YX", modality="brightfield")
    tm = compute_tissue_mask(src, target_pixel_size=2.0, min_size=0, dilate=0)
    assert tm.method == "otsu_intensity"
    assert tm.mask[20:44, 20:36].all() and not tm.mask[:10].any()
    vol = zarr_source(tmp_path / "v.zarr", [np.zeros((4, 32, 32), np.uint8)], "ZYX", pixel_size=(1, 1, 1))
    with pytest.raises(MedsegError, match="2D slides"):
        compute_tissue_mask(vol)
    with pytest.raises(MedsegError, match="unknown tissue-mask method"):
        compute_tissue_mask(src, method="magic")


def test_background_is_skipped_and_tissue_equals_monai(tmp_path):
    src, _ = _slide(tmp_path, 0.3)
    model = small_unet()
    out = tmp_path / "o.zarr"
    events = []
    res = run_predict(src, model, out, window=(64, 64), overlap=0.25, tissue_mask="auto", write_probs="float32",
                      device="cpu", block=(96, 96), on_event=events.append)
    tm = next(e.mask for e in events if isinstance(e, TissueMaskReady))
    assert res.blocks_skipped > 0 and res.stats["windows_skipped_tissue"] > 0
    ref = monai_probs(model, np.asarray(src.levels[0]).transpose(2, 0, 1), (64, 64), 0.25)
    got = read_probs(out)
    ds = src.level_downsample(0)
    fy = tm.downsample[0] / ds[0]
    mask_full = np.kron(tm.mask, np.ones((int(fy), int(fy)), bool))[:512, :640]
    assert np.abs(got - ref)[:, mask_full].max() < 1e-5  # on tissue: exactly MONAI's
    assert got[:, ~mask_full].sum(0).min() >= 0.0
    full = tmp_path / "full.zarr"
    res_full = run_predict(src, model, full, window=(64, 64), tissue_mask=False, device="cpu", block=(96, 96))
    assert res.windows_computed < 0.75 * res_full.windows_computed
    srcs = open_prediction(out)
    assert [s.name for s in srcs] == ["img prediction", "img probabilities", "img tissue mask"]
    assert srcs[2].levels[0].shape == tm.mask.shape and srcs[2].kind == "labels"
