import json

import numpy as np
import pytest

from napari_medseg.cli import main
from napari_medseg.core.errors import MedsegError
from napari_medseg.models.checkpoint import load_checkpoint
from napari_medseg.training import datasets, sparsify

from ._synth import blobs


def test_scribbles_and_pixels_are_deterministic_subsets():
    _, m = blobs((128, 128), n=10, seed=3)
    for fn in (sparsify.scribbles, sparsify.random_pixels):
        a, b = fn(m, 0.05, seed=1), fn(m, 0.05, seed=1)
        assert np.array_equal(a, b) and not np.array_equal(a, fn(m, 0.05, seed=2))
        painted = a > 0
        assert np.array_equal(a[painted] - 1, m[painted])  # the paint agrees with the mask
        assert 0.02 < painted.mean() < 0.08
        assert set(np.unique(a[painted])) == {1, 2}  # both classes get paint
    assert sparsify.keep_cases(10, 3, seed=0) == sparsify.keep_cases(10, 3, seed=0)
    assert len(sparsify.keep_cases(10, 0.5)) == 5
    with pytest.raises(MedsegError):
        sparsify.keep_cases(4, 9)
    with pytest.raises(MedsegError):
        sparsify.scribbles(m, 0.0)


def _write_pairs(root, n=3, shape=(64, 64)):
    import imageio.v3 as iio

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, m = blobs(shape, seed=i)
        iio.imwrite(root / "images" / f"c{i}.png", img)
        iio.imwrite(root / "masks" / f"c{i}.png", (m * 255).astype(np.uint8))
    iio.imwrite(root / "images" / "lonely.png", img)  # no mask: skipped


def test_folder_pairs_to_training_data(tmp_path):
    _write_pairs(tmp_path)
    pairs = datasets.load_folder(tmp_path)
    assert [p.name for p in pairs] == ["c0", "c1", "c2"] and set(np.unique(pairs[0].mask)) == {0, 1}
    td = datasets.make_training_data(pairs, sparse="scribbles", fraction=0.1, cases=2, seed=0)
    labelled = [it for it in td.items if it.labels is not None]
    assert len(labelled) == 2 and all(it.dense_mask is not None for it in td.items)
    assert td.classes.names == ("background", "class 1")
    with pytest.raises(MedsegError, match="not a folder"):
        datasets.load_pairs(tmp_path / "images", tmp_path / "images_missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsegError, match="no image"):
        datasets.load_pairs(tmp_path / "images", tmp_path / "empty")


def test_nifti_pairs(tmp_path):
    nib = pytest.importorskip("nibabel")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img, m = blobs((20, 24, 28), seed=1)
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img.astype(np.int16), aff), tmp_path / "images" / "v.nii.gz")
    nib.save(nib.Nifti1Image(m.astype(np.uint8), aff), tmp_path / "masks" / "v.nii.gz")
    (pair,) = datasets.load_folder(tmp_path)
    assert pair.image.spatial_dims == 3 and pair.mask.shape == pair.image.shape
    # the mask follows the image through the same reorientation: bright voxels are the mask's
    a = np.asarray(pair.image.levels[0])
    assert a[pair.mask == 1].mean() > a[pair.mask == 0].mean() + 50


def test_cli_trains_from_folders_and_writes_a_log(tmp_path, capsys):
    _write_pairs(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tmp_path / "data"), "--label-fraction", "0.1", "--labelled-cases", "2",
               "--steps", "3", "--patch-size", "32", "--batch-size", "2", "--channels", "8,16", "--val-every", "3",
               "--threads", "1", "--workers", "0", "--out", str(out), "--no-progress", "--classes", "cells"])
    assert rc == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["result"]["steps"] == 3 and len(log["steps"]) == 3 and log["data"]["labelled"] == 2
    ck = load_checkpoint(log["result"]["last_checkpoint"])
    assert ck.classes.names == ("background", "cells") and ck.model_config.channels == (8, 16)
    out_err = capsys.readouterr()
    assert "done (steps)" in out_err.out
    # the CLI's default: semi-supervised learning chosen by the extent of the paint, and the choice said
    assert log["config"]["semi"] == "auto" and log["start"]["semi"] in ("pseudo_label", "none")
    assert f"unpainted pixels: {log['start']['semi_reason']}" in out_err.err


def test_cli_label_image_and_bad_arguments(tmp_path, capsys):
    import imageio.v3 as iio

    img, m = blobs((64, 64))
    iio.imwrite(tmp_path / "img.png", img)
    lab = np.where(np.random.default_rng(0).random(m.shape) < 0.1, m + 1, 0).astype(np.uint8)
    iio.imwrite(tmp_path / "lab.png", lab)
    rc = main(["train", "--image", str(tmp_path / "img.png"), "--labels", str(tmp_path / "lab.png"), "--steps", "2",
               "--patch-size", "32", "--channels", "8,16", "--batch-size", "2", "--out", str(tmp_path / "r"),
               "--no-progress", "--threads", "1"])
    assert rc == 0
    rc = main(["train", "--data", str(tmp_path), "--image", str(tmp_path / "img.png"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "exactly one data source" in capsys.readouterr().err


def test_cli_trains_from_a_label_store(tmp_path):
    import imageio.v3 as iio

    label_store = pytest.importorskip("napari_medseg.labels.store")
    img, m = blobs((96, 96))
    iio.imwrite(tmp_path / "img.png", img)
    store = label_store.LabelStore.create(tmp_path / "img.labels.zarr", (96, 96), chunks=(32, 32))
    lab = np.where(np.random.default_rng(0).random(m.shape) < 0.05, m + 1, 0).astype(np.uint8)
    lab[:, 64:] = 0  # paint in two thirds of the chunks only
    store.write((slice(0, 96), slice(0, 96)), lab)
    store.close() if hasattr(store, "close") else None
    rc = main(["train", "--image", str(tmp_path / "img.png"), "--labels", str(tmp_path / "img.labels.zarr"),
               "--steps", "2", "--patch-size", "32", "--channels", "8,16", "--batch-size", "2", "--out",
               str(tmp_path / "r"), "--no-progress", "--threads", "1", "--val-fraction", "0"])
    assert rc == 0
    log = json.loads((tmp_path / "r" / "train_log.json").read_text())
    assert log["result"]["steps"] == 2 and log["data"]["classes"] == ["background", "foreground"]
