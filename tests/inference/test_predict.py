"""The tiled predictor equals MONAI's sliding_window_inference (Gaussian) on 2D, 3D and slice-wise input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from infer_helpers import halve, monai_probs, read_labels, read_probs, small_unet, textured_rgb, zarr_source

from napari_medseg.core.classes import ClassSchema
from napari_medseg.inference import (
    BlockDone,
    PredictDone,
    PredictStart,
    open_prediction,
    predict,
    run_predict,
)
from napari_medseg.inference.tiling import WindowGrid


@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("block", [(96, 96), (64, 128), (512, 512)])
def test_gaussian_equals_monai_2d(tmp_path, rgb_source, unet2d, overlap, block):
    out = tmp_path / "o.zarr"
    res = run_predict(rgb_source, unet2d, out, window=(64, 64), overlap=overlap, batch_size=3, tissue_mask=False,
                      write_probs="float32", device="cpu", block=block)
    img = np.asarray(rgb_source.levels[0]).transpose(2, 0, 1)
    ref = monai_probs(unet2d, img, (64, 64), overlap)
    got = read_probs(out)
    assert np.abs(got - ref).max() < 1e-5
    assert (read_labels(out) == ref.argmax(0)).mean() == 1.0
    grid = WindowGrid((300, 350), (64, 64), overlap)
    assert res.windows_computed == grid.n_windows  # each window once, whatever the blocks
    assert res.stats["decode_ratio"] == 1.0  # each source tile decoded once (halos come from the cache)
    assert not res.cancelled and res.blocks_done == res.blocks_total


def test_image_smaller_than_window_is_padded_like_monai(tmp_path, unet2d):
    img = textured_rgb(40, 50)
    src = zarr_source(tmp_path / "s.zarr", [img], "YXC")
    out = tmp_path / "o.zarr"
    run_predict(src, unet2d, out, window=(64, 64), tissue_mask=False, write_probs="float32", device="cpu")
    ref = monai_probs(unet2d, img.transpose(2, 0, 1), (64, 64), 0.25)
    assert np.abs(read_probs(out) - ref).max() < 1e-5


@pytest.mark.parametrize("dtype,codec", [("float32", "lz4"), ("float16", "lz4"), ("uint8", "zstd")])
def test_probability_codec_follows_dtype(tmp_path, unet2d, dtype, codec):
    """float probabilities compress ~1.6x with either codec: lz4 writes them 4x faster than zstd; uint8
    probabilities and labels keep zstd (20-40x). Both read back as written."""
    import zarr

    src = zarr_source(tmp_path / "s.zarr", [textured_rgb(90, 100)], "YXC")
    out = tmp_path / "o.zarr"
    run_predict(src, unet2d, out, window=(64, 64), tissue_mask=False, write_probs=dtype, device="cpu")
    root = zarr.open_group(str(out), mode="r")
    assert root["probs/0"].compressors[0].cname == codec
    assert root["labels/prediction/0"].compressors[0].cname == "zstd"
    probs = read_probs(out)
    assert probs.dtype == np.dtype(dtype) and probs.shape[1:] == (90, 100)
    scale = 255.0 if dtype == "uint8" else 1.0
    assert np.allclose(probs.sum(0) / scale, 1.0, atol=0.02)


def test_predict_level_1_grey(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (260, 200), dtype=np.uint8)
    src = zarr_source(tmp_path / "g.zarr", [img, halve(img, (0, 1))], "YX", pixel_size=(0.25, 0.25))
    model = small_unet(in_channels=1, out_channels=2)
    out = tmp_path / "o.zarr"
    res = run_predict(src, model, out, level=1, window=(32, 32), tissue_mask=False, write_probs="float32", device="cpu")
    ref = monai_probs(model, halve(img, (0, 1))[None], (32, 32), 0.25)
    assert res.shape == (130, 100)
    assert np.abs(read_probs(out) - ref).max() < 1e-5
    lab = open_prediction(out)[0]
    assert lab.pixel_size == (0.5, 0.5)
    assert lab.metadata["translate"] == [0.125, 0.125]  # level-1 pixel centres in level-0 microns


def test_volume_3d_model_equals_monai(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.integers(0, 255, (40, 70, 60), dtype=np.uint8)
    src = zarr_source(tmp_path / "v.zarr", [vol], "ZYX", pixel_size=(2.0, 1.0, 1.0), unit="millimeter",
                      chunks=(16, 32, 32))
    model = small_unet(in_channels=1, out_channels=2, dims=3)
    out = tmp_path / "o.zarr"
    run_predict(src, model, out, window=(16, 32, 32), overlap=0.5, batch_size=2, tissue_mask="auto",
                write_probs="float32", device="cpu", block=(16, 48, 48))
    ref = monai_probs(model, vol[None], (16, 32, 32), 0.5)
    assert np.abs(read_probs(out) - ref).max() < 1e-5
    assert (read_labels(out) == ref.argmax(0)).all()


def test_2d_model_over_volume_slice_by_slice(tmp_path):
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 255, (2, 6, 70, 90), dtype=np.uint8)  # CZYX, two sequences
    src = zarr_source(tmp_path / "v.zarr", [vol], "CZYX", pixel_size=(3.0, 1.0, 1.0), unit="millimeter",
                      chunks=(2, 2, 32, 32))
    model = small_unet(in_channels=2, out_channels=3)
    out = tmp_path / "o.zarr"
    run_predict(src, model, out, window=(32, 32), overlap=0.25, tissue_mask=False, write_probs="float32",
                device="cpu", block=(4, 48, 48))
    got = read_probs(out)
    for z in range(vol.shape[1]):
        ref = monai_probs(model, vol[:, z], (32, 32), 0.25)
        assert np.abs(got[:, z] - ref).max() < 1e-5


def test_crop_blend_takes_the_nearest_window(tmp_path, rgb_source, unet2d):
    out = tmp_path / "o.zarr"
    run_predict(rgb_source, unet2d, out, window=(64, 64), overlap=0.5, blend="crop", tissue_mask=False,
                write_probs="float32", device="cpu", block=(96, 96))
    got = read_probs(out)
    img = np.asarray(rgb_source.levels[0]).transpose(2, 0, 1).astype(np.float32) / 255
    grid = WindowGrid((300, 350), (64, 64), 0.5, "crop")
    with torch.inference_mode():
        for w in list(grid.indices())[::5]:
            (y0, y1), (x0, x1) = grid.window_box(w)
            p = torch.softmax(unet2d(torch.from_numpy(img[None, :, y0:y1, x0:x1])), 1)[0].numpy()
            (a, b), (c, d) = grid.output_box(w)
            assert np.abs(got[:, a:b, c:d] - p[:, a - y0:b - y0, c - x0:d - x0]).max() < 1e-5
    assert np.allclose(got.sum(0), 1.0, atol=1e-5)


def test_events_progress_and_tta(tmp_path, rgb_source, unet2d):
    events = []
    res = run_predict(rgb_source, unet2d, tmp_path / "o.zarr", window=(64, 64), tta=True, tissue_mask=False,
                      device="cpu", block=(128, 128), on_event=events.append)
    starts = [e for e in events if isinstance(e, PredictStart)]
    dones = [e for e in events if isinstance(e, BlockDone)]
    assert len(starts) == 1 and starts[0].total_blocks == 9 and starts[0].shape == (300, 350)
    assert [d.done for d in dones] == list(range(1, 10)) and all(d.total == 9 for d in dones)
    assert isinstance(events[-1], PredictDone) and events[-1].blocks_done == 9
    assert res.windows_computed > 0
    # TTA: flips averaged; differs from plain prediction but stays a probability map
    run_predict(rgb_source, unet2d, tmp_path / "p.zarr", window=(64, 64), tissue_mask=False, device="cpu",
                block=(128, 128), write_probs="float32", tta=True)
    p = read_probs(tmp_path / "p.zarr")
    assert np.allclose(p.sum(0), 1.0, atol=1e-5)


def test_output_pyramid_and_colors(tmp_path, unet2d):
    img = textured_rgb(1100, 700)
    src = zarr_source(tmp_path / "s.zarr", [img], "YXC", chunks=(128, 128, 3))
    out = tmp_path / "o.zarr"
    classes = ClassSchema(names=("background", "tumour", "stroma"))
    run_predict(src, unet2d, out, classes=classes, window=(64, 64), tissue_mask=False, write_probs="uint8",
                device="cpu", block=(256, 256))
    lab, probs = open_prediction(out)[:2]
    assert lab.kind == "labels" and probs.kind == "image"
    shapes = [tuple(a.shape) for a in lab.levels]
    assert shapes == [(1100, 700), (550, 350), (275, 175)]
    assert lab.metadata["colors"][1] == classes.prediction_colors()[1]
    assert probs.levels[0].shape == (3, 1100, 700) and probs.levels[0].dtype == np.uint8
    # labels = argmax of the probabilities at every level (level 1: of the 2x2-mean probabilities), wherever
    # the uint8 quantisation leaves a clear winner
    for k in range(3):
        pk = np.sort(read_probs(out, k).astype(np.int16), axis=0)
        clear = pk[-1] - pk[-2] >= 2
        assert (read_labels(out, k) == read_probs(out, k).argmax(0))[clear].all()
    import zarr

    from napari_medseg.io.ngff_meta import parse_multiscales

    ms = parse_multiscales(dict(zarr.open_group(str(out / "labels" / "prediction"), mode="r").attrs))
    assert ms["axes"] == "YX" and ms["scales"][1] == [1.0, 1.0]


def test_cancel_leaves_consistent_store(tmp_path, rgb_source, unet2d):
    cancel = threading.Event()
    out = tmp_path / "o.zarr"
    gen = predict(rgb_source, unet2d, out, window=(64, 64), tissue_mask=False, device="cpu", block=(64, 64),
                  cancel=cancel)
    done = 0
    result = None
    try:
        while True:
            ev = next(gen)
            if isinstance(ev, BlockDone):
                done += 1
                if done == 5:
                    cancel.set()
    except StopIteration as stop:
        result = stop.value
    assert result.cancelled and 5 <= result.blocks_done < result.blocks_total
    from napari_medseg.inference.output import read_manifest

    assert read_manifest(out)["status"] == "cancelled"
    journal = sorted((out / "medseg" / "journal").iterdir())
    assert len(journal) == result.blocks_done
    lab = read_labels(out)  # readable; unfinished blocks read as 0
    assert lab.shape == (300, 350)


@pytest.mark.gpu
def test_cuda_matches_cpu(tmp_path, rgb_source, unet2d):
    """On a GPU: without AMP equal to MONAI within 1e-4; with AMP the labels agree almost everywhere."""
    img = np.asarray(rgb_source.levels[0]).transpose(2, 0, 1)
    ref = monai_probs(unet2d, img, (64, 64), 0.25)
    run_predict(rgb_source, unet2d, tmp_path / "a.zarr", window=(64, 64), tissue_mask=False, write_probs="float32",
                device="cuda", amp=False, block=(96, 96))
    assert np.abs(read_probs(tmp_path / "a.zarr") - ref).max() < 1e-4
    run_predict(rgb_source, unet2d, tmp_path / "b.zarr", window=(64, 64), tissue_mask=False, device="cuda",
                amp=True, block=(96, 96))
    assert (read_labels(tmp_path / "b.zarr") == ref.argmax(0)).mean() > 0.99


def test_volume_window_given_for_every_axis_runs_slice_by_slice(tmp_path):
    vol = np.random.default_rng(4).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    src = zarr_source(tmp_path / "v.zarr", [vol], "ZYX", pixel_size=(2.0, 1.0, 1.0))
    model = small_unet(1, 2)
    res = run_predict(src, model, tmp_path / "o.zarr", window=(32, 32, 32), tissue_mask=False, device="cpu")
    assert res.shape == (3, 40, 50) and res.blocks_done == res.blocks_total
