"""Training from painted objects: the sampler derives the object boundary class in every patch, dense masks
get it from their object regions, ``napari-medseg train --objects``, and a short training run that learns to
split two touching discs painted with only a background stroke between them."""

import json
import time

import numpy as np
import pytest

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.objects.boundaries import mark_boundaries
from napari_medseg.training import TrainingData, TrainingItem
from napari_medseg.training.sampler import BOUNDARY_WIDTH, PatchSampler

NUC = ClassSchema(("background", "nucleus")).with_objects(["nucleus"])  # store: 1 bg, 2 nucleus, 3 boundary


def _discs(shape=(64, 64), r=11, seed=0):
    """(image, dense 0/1 mask, paint) for two overlapping discs (centres 2r - 8 apart: a contact line 17 px long):
    the paint holds both discs as nucleus, background around them and a one-pixel background stroke along their
    contact line, nothing else."""
    yy, xx = np.indices(shape)
    cy, cx = shape[0] // 2, shape[1] // 2
    left = (yy - cy) ** 2 + (xx - (cx - r + 4)) ** 2 <= r * r
    right = (yy - cy) ** 2 + (xx - (cx + r - 4)) ** 2 <= r * r
    mask = (left | right).astype(np.uint8)
    rng = np.random.default_rng(seed)
    img = (mask * 120 + 60 + rng.normal(0, 8, shape)).clip(0, 255).astype(np.uint8)
    img[:, cx] = np.where(mask[:, cx] > 0, 90, img[:, cx])  # a faint darker seam between the two nuclei
    paint = mask + 1
    paint[:, cx][mask[:, cx] > 0] = 1  # the background stroke
    return img, mask, paint.astype(np.uint8)


def _data(paint, mask=None, img=None, shape=(64, 64)):
    img = img if img is not None else np.zeros(shape, np.uint8)
    return TrainingData([TrainingItem(ImageSource([img], "YX", (1.0, 1.0), name="d"), paint, mask, name="d")], NUC)


def test_sampler_batches_hold_the_rims_of_the_whole_painting():
    img, mask, paint = _discs()
    s = PatchSampler(_data(paint, img=img), (24, 24), 2, val_fraction=0)
    assert not any("object boundary" in w for w in s.warnings)  # derived, not missing paint
    full = mark_boundaries(paint, NUC, BOUNDARY_WIDTH)
    assert (full == 3).any()
    seen = 0
    for k in range(30):
        i, start = s.labelled_window(np.random.default_rng(k))
        _, lab = s.labelled_patch(np.random.default_rng(k))
        win = tuple(slice(a, a + 24) for a in start)
        np.testing.assert_array_equal(lab, full[win])  # the same rims wherever the window starts
        seen += int((lab == 3).sum())
    assert seen > 0
    batch = s.batch(0, 4, 0)
    assert batch["y_l"].max() == 3


def test_unpainted_neighbours_make_no_rim_and_2d_models_on_volumes_mark_in_plane():
    lab = np.zeros((40, 40), np.uint8)
    lab[10:30, 18:21] = 2  # a nucleus scribble with nothing painted around it
    lab[2, 2:8] = 1  # some background far away
    s = PatchSampler(_data(lab, shape=lab.shape), (16, 16), 2, val_fraction=0)
    rng = np.random.default_rng(0)
    assert all(s.labelled_patch(rng)[1].max() <= 2 for _ in range(20))
    vol = np.zeros((3, 32, 32), np.uint8)
    vol[1, 8:24, 8:24] = 2
    vol[0] = 1  # background painted in the slice below only
    src = ImageSource([np.zeros(vol.shape, np.uint8)], "ZYX", (1.0, 1.0, 1.0), name="v")
    s2 = PatchSampler(TrainingData([TrainingItem(src, vol, name="v")], NUC), (16, 16), 2, val_fraction=0)
    s3 = PatchSampler(TrainingData([TrainingItem(src, vol, name="v")], NUC), (3, 16, 16), 3, val_fraction=0)
    got2 = {int(v) for _ in range(20) for v in np.unique(s2.labelled_patch(rng)[1])}
    got3 = {int(v) for _ in range(20) for v in np.unique(s3.labelled_patch(rng)[1])}
    assert 3 not in got2 and 3 in got3  # a 2D model never sees a rim made by another slice


def test_validation_patches_score_the_boundary_on_dense_masks():
    img, mask, paint = _discs((96, 96))
    s = PatchSampler(_data(paint, mask, img, (96, 96)), (16, 16), 2, val_fraction=0.5, seed=1)
    vps = s.validation_patches()
    assert vps
    for vp in vps:
        d = vp.dense
        assert d is not None and d.max() <= 2
        # every pixel of the disc within 2 px of the background is boundary in the dense mask
        win = tuple(slice(a, a + 16) for a in vp.start)
        ref = mark_boundaries(mask + 1, NUC, BOUNDARY_WIDTH)[win] - 1
        np.testing.assert_array_equal(d, ref)
        # and the sparse targets come from the same rims, on the held-out block's paint only
        np.testing.assert_array_equal(vp.labels[vp.labels > 0], mark_boundaries(paint, NUC)[win][vp.labels > 0])
    assert any((vp.dense == 2).any() for vp in vps)


def test_folder_masks_get_the_boundary_class():
    from napari_medseg.training.datasets import Pair, make_training_data

    img, mask, _ = _discs()
    src = ImageSource([img], "YX", (1.0, 1.0), name="d")
    td = make_training_data([Pair("d", src, mask)], classes=NUC)
    it = td.items[0]
    assert set(np.unique(it.dense_mask)) == {0, 1, 2} and set(np.unique(it.labels)) == {1, 2, 3}
    # prediction values: 1 nucleus, 2 its rim (2 px wide, inside the region)
    mid = mask.shape[1] // 2
    assert it.dense_mask[32, mid - 7] == 1 and (it.dense_mask[32, mid - 18:mid - 16] == 2).all()
    assert it.dense_mask[32, mid - 16] == 1 and it.dense_mask[32, mid - 19] == 0
    assert (it.dense_mask[26:39, mid] == 1).all()  # the discs touch along a line: one region, no rim inside
    np.testing.assert_array_equal(it.labels, it.dense_mask + 1)
    plain = make_training_data([Pair("d", src, mask)])
    assert set(np.unique(plain.items[0].labels)) == {1, 2}


def _write_pairs(root, n=3):
    import imageio.v3 as iio

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, mask, _ = _discs(seed=i)
        iio.imwrite(root / "images" / f"c{i}.png", img)
        iio.imwrite(root / "masks" / f"c{i}.png", mask * 255)
    return root


def test_cli_objects_option(tmp_path, capsys):
    from napari_medseg.cli import main
    from napari_medseg.models.checkpoint import load_checkpoint

    data = _write_pairs(tmp_path / "data")
    common = ["train", "--data", str(data), "--steps", "2", "--patch-size", "32", "--batch-size", "2",
              "--channels", "8,16", "--threads", "1", "--workers", "0", "--no-progress", "--val-fraction", "0"]
    assert main([*common, "--classes", "nucleus", "--objects", "nucleus", "--out", str(tmp_path / "r")]) == 0
    # the separation weights are on by default with object classes, and the start line says so
    assert "the pixels between close objects weigh 11x (--contact-weight)" in capsys.readouterr().err
    log = json.loads((tmp_path / "r" / "train_log.json").read_text())
    assert log["start"]["contact_weight"] == 10.0
    assert log["data"]["classes"] == ["background", "nucleus", "object boundary"]
    ck = load_checkpoint(log["result"]["last_checkpoint"])
    assert ck.classes.objects == ("nucleus",) and ck.classes.boundary_value == 2
    assert ck.model_config.out_channels == 3
    assert main([*common, "--classes", "nucleus", "--objects", "cell", "--out", str(tmp_path / "x")]) == 2
    assert "'cell' is not one of the classes" in capsys.readouterr().err
    assert main([*common, "--objects", "background", "--out", str(tmp_path / "x")]) == 2
    assert "background" in capsys.readouterr().err


def test_class_file_keeps_objects(tmp_path):
    from napari_medseg.cli.train import _class_file, _keep_objects, _with_objects

    f = tmp_path / "c.json"
    f.write_text(json.dumps(NUC.to_dict()))
    assert _class_file(f) == NUC
    assert _keep_objects(ClassSchema(("background", "nucleus")), NUC) == NUC
    with pytest.raises(MedsegError, match="not one of the classes"):
        _with_objects(NUC, ["gland"])


def test_short_training_learns_to_split_touching_discs(tmp_path):
    """Two touching discs painted as one nucleus region split by a background stroke: after a short training the
    model predicts the boundary between them and find_objects returns two objects."""
    torch = pytest.importorskip("torch")
    from napari_medseg.models.config import ModelConfig
    from napari_medseg.objects.instances import find_objects
    from napari_medseg.training import TrainConfig, run_training
    from napari_medseg.training.metrics import sliding_window_predict

    torch.manual_seed(0)
    img, mask, paint = _discs((64, 64))
    t0 = time.perf_counter()
    cfg = TrainConfig(model=ModelConfig(name="unet", spatial_dims=2, channels=(16, 32, 64), num_res_units=1),
                      patch_size=(64,), batch_size=4, steps=150, lr=3e-3, val_fraction=0, val_every=10**6,
                      checkpoint_dir=str(tmp_path / "ck"), num_workers=0, warmup_steps=5, threads=2,
                      eval_model="student", seed=0)
    res = run_training(cfg, _data(paint, img=img))
    prob = sliding_window_predict(res.model, img[None], res.norm, (64, 64))
    pred = prob.argmax(0).numpy()
    elapsed = time.perf_counter() - t0
    mid = mask.shape[1] // 2
    assert (pred[28:37, mid - 1:mid + 2] == 2).mean() > 0.5, "the contact line is predicted as boundary"
    obj = find_objects(pred, NUC, min_size=20)
    assert obj.n == 2, f"{obj.n} objects after {elapsed:.1f} s"
    left, right = obj.labels[32, mid - 8], obj.labels[32, mid + 8]
    assert left and right and left != right
    # the checkpoint records the painted objects' size (what predict's zoom="auto" matches)
    from scipy import ndimage as ndi

    from napari_medseg.inference.modelrun import resolve_model
    from napari_medseg.objects.sizes import median_diameter

    painted = median_diameter(ndi.label(paint == 2)[0])  # store value 2: nucleus
    assert resolve_model(res.last_checkpoint).object_diameter == pytest.approx(painted, rel=1e-6)
    # the control: the same paint without the stroke says "one object", and the model learns that too
    res = run_training(cfg.replace(checkpoint_dir=str(tmp_path / "ck2")), _data(mask + 1, img=img))
    pred = sliding_window_predict(res.model, img[None], res.norm, (64, 64)).argmax(0).numpy()
    assert find_objects(pred, NUC, min_size=20).n == 1
