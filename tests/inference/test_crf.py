"""Edge-aware refinement (``inference.crf``, ``inference.crf_pass``): what it does to a noisy prediction, that
tiles equal the whole image, resumption and the clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from helpers import predict_arrays
from infer_helpers import zarr_source

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference.crf import CRFConfig, refine, scaled_image
from napari_medseg.inference.crf_pass import JOURNAL, refine_prediction, run_refine


def _two_regions(h: int = 64, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A dark left half, a bright right half; class probabilities that are noisy near the edge."""
    img = np.zeros((1, h, w), np.float32)
    img[:, :, w // 2:] = 1.0
    truth = (np.arange(w)[None, :] >= w // 2).repeat(h, 0)
    rng = np.random.default_rng(0)
    p1 = np.clip(truth * 0.8 + 0.1 + rng.normal(0, 0.3, (h, w)), 0.01, 0.99).astype(np.float32)
    return img, np.stack([1 - p1, p1])


def test_refine_snaps_a_noisy_prediction_to_the_image_edge():
    img, p = _two_regions()
    truth = (np.arange(64)[None, :] >= 32).repeat(64, 0)
    before = (p.argmax(0) == truth).mean()
    q = refine(torch.from_numpy(p), scaled_image(torch.from_numpy(img)), CRFConfig(iterations=5, radius=3))
    after = (q.argmax(0).numpy() == truth).mean()
    assert before < 0.95  # the noise flips some pixels
    assert after > 0.99
    assert torch.allclose(q.sum(0), torch.ones(64, 64), atol=1e-5)


def test_refine_keeps_pixels_outside_valid_unchanged_and_does_not_listen_to_them():
    img, p = _two_regions()
    valid = np.ones((64, 64), bool)
    valid[:, :8] = False
    pt = torch.from_numpy(p)
    q = refine(pt, scaled_image(torch.from_numpy(img)), CRFConfig(radius=3), torch.from_numpy(valid))
    assert torch.equal(q[:, :, :8], pt[:, :, :8])
    poisoned = pt.clone()
    poisoned[:, :, :8] = torch.tensor([0.0, 1.0])[:, None, None]
    q2 = refine(poisoned, scaled_image(torch.from_numpy(img)), CRFConfig(radius=3), torch.from_numpy(valid))
    assert torch.allclose(q2[:, :, 8:], q[:, :, 8:])


def test_a_block_with_its_halo_equals_the_whole_image():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.random((3, 80, 90)).astype(np.float32))
    p = torch.softmax(torch.from_numpy(rng.normal(0, 1, (2, 80, 90)).astype(np.float32)), 0)
    cfg = CRFConfig(iterations=3, radius=2)
    std = img.flatten(1).std(1)
    whole = refine(p, scaled_image(img, std), cfg)
    h = cfg.halo
    y0, y1, x0, x1 = 30, 50, 40, 70
    part = refine(p[:, y0 - h:y1 + h, x0 - h:x1 + h], scaled_image(img[:, y0 - h:y1 + h, x0 - h:x1 + h], std), cfg)
    assert torch.allclose(part[:, h:-h, h:-h], whole[:, y0:y1, x0:x1], atol=1e-6)
    short = refine(p[:, y0 - 1:y1 + 1, x0 - 1:x1 + 1], scaled_image(img[:, y0 - 1:y1 + 1, x0 - 1:x1 + 1], std), cfg)
    assert not torch.allclose(short[:, 1:-1, 1:-1], whole[:, y0:y1, x0:x1], atol=1e-6)  # the halo matters


def test_refine_3d():
    rng = np.random.default_rng(2)
    p = torch.softmax(torch.from_numpy(rng.normal(0, 1, (3, 6, 20, 20)).astype(np.float32)), 0)
    img = torch.from_numpy(rng.random((1, 6, 20, 20)).astype(np.float32))
    q = refine(p, scaled_image(img), CRFConfig(iterations=2, radius=1))
    assert q.shape == p.shape and torch.allclose(q.sum(0), torch.ones(6, 20, 20), atol=1e-5)


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"radius": 40}, {"sigma_xy": -1.0}, {"w_spatial": float("nan")}])
def test_bad_settings_are_clear_errors(bad):
    with pytest.raises(MedsegError, match="CRF"):
        CRFConfig(**bad)
    with pytest.raises(MedsegError, match="unknown CRF settings"):
        CRFConfig.from_dict({"radious": 3})


def _predicted(tmp_path, unet2d, **kw):
    rng = np.random.default_rng(3)
    img = (rng.random((130, 600, 3)) * 255).astype(np.uint8)
    img[40:100, 50:120] //= 3
    src = zarr_source(tmp_path / "img.zarr", [img], "YXC", chunks=(64, 64, 3))
    out = tmp_path / "p.prediction.zarr"
    labels, probs = predict_arrays(src, unet2d, out, block=(64, 64), **kw)
    return src, out, labels, probs


def test_tiled_refinement_equals_the_whole_image_and_is_undone_by_cfg_none(tmp_path, unet2d):
    src, out, labels, probs = _predicted(tmp_path, unet2d)
    cfg = CRFConfig(iterations=2, radius=2)
    done = run_refine(out, src, cfg, block=64)
    tiled = np.asarray(zarr.open_group(str(out), mode="r")["labels/prediction/0"])
    p = torch.from_numpy(probs)
    p = p / p.sum(0).clamp_min(1e-12)
    img = torch.from_numpy(np.moveaxis(np.asarray(src.levels[0]), -1, 0).astype(np.float32))
    from napari_medseg.core.source import strided_sample

    whole = refine(p, scaled_image(img, torch.from_numpy(strided_sample(src).std(axis=1))), cfg).argmax(0).numpy()
    assert done.blocks == 30 and done.resumed == 0
    assert (tiled == whole).mean() >= 0.999  # float16 probabilities: ties may fall either way
    assert done.changed_pixels == int((tiled != labels).sum())
    g = zarr.open_group(str(out), mode="r")
    assert g["labels/prediction"].attrs["medseg_crf"]["iterations"] == 2
    assert "1" in g["labels/prediction"]
    lvl1 = np.asarray(g["labels/prediction/1"])
    assert np.array_equal(lvl1, tiled[::2, ::2][: lvl1.shape[0], : lvl1.shape[1]])
    run_refine(out, src, None, block=64)
    back = np.asarray(zarr.open_group(str(out), mode="r")["labels/prediction/0"])
    assert (back == labels).mean() >= 0.999  # the stored float16 probabilities' argmax: ties may differ
    assert (back != tiled).sum() > 0


def test_refinement_resumes_finished_blocks(tmp_path, unet2d):
    src, out, _, _ = _predicted(tmp_path, unet2d)
    cfg = CRFConfig(iterations=1, radius=1)
    gen = refine_prediction(out, src, cfg, block=64)
    next(gen), next(gen)
    gen.close()  # interrupted after two blocks
    assert len(list((out / JOURNAL).iterdir())) == 2
    done = run_refine(out, src, cfg, block=64)
    assert done.resumed == 2 and done.blocks == 30
    other = run_refine(out, src, CRFConfig(iterations=2, radius=1), block=64)
    assert other.resumed == 0  # other settings redo every block


def test_refinement_errors(tmp_path, unet2d):
    from napari_medseg.inference.predictor import run_predict

    src, out, _, _ = _predicted(tmp_path, unet2d)
    bare = tmp_path / "bare.prediction.zarr"
    run_predict(src, unet2d, bare, window=(64, 64), tissue_mask=False, device="cpu")
    with pytest.raises(MedsegError, match="no class probabilities"):
        run_refine(bare, src)
    with pytest.raises(MedsegError, match="not a napari-medseg prediction"):
        run_refine(tmp_path / "nothing.zarr", src)
    other = zarr_source(tmp_path / "o.zarr", [np.zeros((40, 40, 3), np.uint8)], "YXC")
    with pytest.raises(MedsegError, match="another image"):
        run_refine(out, other)


def test_predict_with_crf_refines_and_reports_progress(tmp_path, unet2d):
    from helpers import drain

    from napari_medseg.inference.events import PredictDone, Refining
    from napari_medseg.inference.predictor import predict

    src, out, labels, probs = _predicted(tmp_path, unet2d)
    out2 = tmp_path / "crf.prediction.zarr"
    events, res = drain(predict(src, unet2d, out2, window=(64, 64), tissue_mask=False, block=(64, 64),
                                crf={"iterations": 2, "radius": 2}))
    steps = [e for e in events if isinstance(e, Refining)]
    assert [e.done for e in steps] == list(range(1, 31)) and isinstance(events[-1], PredictDone)
    g = zarr.open_group(str(out2), mode="r")
    assert "probs" in g  # written for the refinement
    refined = np.asarray(g["labels/prediction/0"])
    assert 0 < (refined != labels).sum() < 0.5 * labels.size
    with pytest.raises(MedsegError, match="crf must be"):
        drain(predict(src, unet2d, tmp_path / "x.zarr", crf="yes"))


def test_rerun_without_crf_restores_and_cancel_reports_unfinished(tmp_path, unet2d):
    import threading

    from helpers import drain

    from napari_medseg.inference.events import PredictDone, Refining
    from napari_medseg.inference.predictor import predict

    src, out, labels, _ = _predicted(tmp_path, unet2d)
    kw = dict(window=(64, 64), tissue_mask=False, block=(64, 64), write_probs="float16")
    cancel = threading.Event()
    gen = predict(src, unet2d, out, crf={"iterations": 1, "radius": 1}, cancel=cancel, **kw)
    events = []
    for ev in gen:
        events.append(ev)
        if isinstance(ev, Refining) and ev.done == 3:
            cancel.set()
    done = events[-1]
    assert isinstance(done, PredictDone) and done.cancelled  # stopped while refining: not reported as done
    assert sum(isinstance(e, Refining) for e in events) == 3
    _, res = drain(predict(src, unet2d, out, crf={"iterations": 1, "radius": 1}, **kw))  # resumes the refinement
    g = zarr.open_group(str(out), mode="r")
    assert g["labels/prediction"].attrs["medseg_crf"]["iterations"] == 1
    events, _ = drain(predict(src, unet2d, out, **kw))  # the same job without the CRF: the model's labels back
    assert any(isinstance(e, Refining) for e in events)
    back = np.asarray(zarr.open_group(str(out), mode="r")["labels/prediction/0"])
    assert (back == labels).mean() >= 0.999
    assert not zarr.open_group(str(out), mode="r")["labels/prediction"].attrs["medseg_crf"]


def test_volumes_are_refined_slice_by_slice(tmp_path):
    from infer_helpers import small_unet

    from napari_medseg.inference.crf_pass import run_refine

    rng = np.random.default_rng(4)
    vol = (rng.random((6, 96, 100)) * 255).astype(np.uint8)
    src = zarr_source(tmp_path / "v.zarr", [vol], "ZYX", pixel_size=(2.0, 0.5, 0.5), chunks=(2, 48, 48))
    model = small_unet(1, 2)
    out = tmp_path / "v.prediction.zarr"
    labels, probs = predict_arrays(src, model, out, block=(2, 48, 48))
    cfg = CRFConfig(iterations=2, radius=2)
    done = run_refine(out, src, cfg)
    tiled = np.asarray(zarr.open_group(str(out), mode="r")["labels/prediction/0"])
    p = torch.from_numpy(probs)
    p = p / p.sum(0).clamp_min(1e-12)
    from napari_medseg.core.source import strided_sample

    img = scaled_image(torch.from_numpy(vol[None].astype(np.float32)), torch.from_numpy(strided_sample(src).std(axis=1)))
    want = np.stack([refine(p[:, z], img[:, z], cfg).argmax(0).numpy() for z in range(6)])
    assert done.blocks == 3 * 2 * 3  # Z blocks of the chunks (2 slices), in-plane blocks of 48 px
    assert (tiled == want).mean() >= 0.999


def test_crf_numbers_must_be_numbers():
    with pytest.raises(MedsegError, match="whole number"):
        CRFConfig(iterations=2.5)
    with pytest.raises(MedsegError, match="whole number"):
        CRFConfig(radius=True)
    assert CRFConfig(sigma_xy=3).sigma_xy == 3.0
