"""``napari-medseg predict --instances`` and ``--instances-only``: objects of each prediction, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from infer_helpers import small_unet, textured_rgb  # noqa: E402
from test_tiled import assert_same_objects  # noqa: E402
from tiled_helpers import SCHEMA, discs_2d, write_prediction  # noqa: E402

from napari_medseg.cli import main  # noqa: E402
from napari_medseg.core.classes import ClassSchema  # noqa: E402
from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, save_checkpoint  # noqa: E402
from napari_medseg.objects.instances import find_objects  # noqa: E402
from napari_medseg.objects.tiled import read_objects  # noqa: E402


def _ckpt(path: Path, classes: ClassSchema, seed: int = 0) -> Path:
    n = classes.n_classes
    model = small_unet(3, n, seed=seed)
    # sharpen the untrained model's softmax (larger logits): confident noisy classes, so that object pixels pass
    # the predictor's object margin (inference.output.OBJECT_MARGIN) and many small objects are found
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(50)
        if last.bias is not None:
            last.bias.mul_(50)
    cfg = ModelConfig(in_channels=3, out_channels=n, channels=(4, 8), num_res_units=0, norm="batch")
    return save_checkpoint(path, Checkpoint(cfg, model.state_dict(), norm=NormConfig.uint8(3), classes=classes))


@pytest.fixture
def slide(tmp_path):
    p = tmp_path / "s0.tif"
    tifffile.imwrite(p, textured_rgb(160, 200, seed=0), tile=(64, 64), photometric="rgb")
    return p


def test_predict_with_instances(tmp_path, slide, capsys):
    ckpt = _ckpt(tmp_path / "m.pt", SCHEMA)
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(slide), "--out", str(out), "--window", "64", "--tissue-mask", "off",
            "--device", "cpu", "--instances", "--halo", "200", "--instance-block", "64"]
    assert main(args) == 0
    cap = capsys.readouterr()
    pz = out / "s0.prediction.zarr"
    pred = zarr.open_group(str(pz), mode="r")["labels/prediction/0"][...]
    whole = find_objects(pred, SCHEMA, min_seed=10)  # the CLI default
    assert whole.n > 10  # the untrained model's noisy classes: small objects (tests/objects/test_tiled.py: block borders)
    lab, cls = read_objects(pz)
    assert_same_objects(lab, cls, whole.labels, whole.classes)
    assert f"{whole.n} objects" in cap.out
    # --instances-only on the existing prediction, other settings: the pass is redone with them
    assert main(["predict", "--instances-only", str(pz), "--min-size", "1000000", "--halo", "200"]) == 0
    assert "no objects" in capsys.readouterr().out
    assert read_objects(pz)[0].max() == 0


def test_instances_only_and_errors(tmp_path, slide, capsys):
    pz = write_prediction(tmp_path / "a.prediction.zarr", discs_2d())
    assert main(["predict", "--instances-only", str(pz), "--halo", "32", "--instance-block", "128"]) == 0
    out = capsys.readouterr().out
    n = find_objects(discs_2d(), SCHEMA, min_seed=10).n  # the CLI default
    assert f"{n} objects" in out and "nucleus" in out
    empty = write_prediction(tmp_path / "e.prediction.zarr", np.ones((100, 120), np.uint8))
    assert main(["predict", "--instances-only", str(empty)]) == 0
    assert "no objects" in capsys.readouterr().out
    # not a prediction; a model without object classes (refused before anything is predicted)
    assert main(["predict", "--instances-only", str(tmp_path)]) == 2
    assert "is not a napari-medseg prediction" in capsys.readouterr().err
    plain = _ckpt(tmp_path / "plain.pt", ClassSchema(("background", "tumour")))
    assert main(["predict", str(plain), str(slide), "--out", str(tmp_path / "o"), "--window", "64",
                 "--device", "cpu", "--instances"]) == 2
    assert "no object classes" in capsys.readouterr().err and not (tmp_path / "o" / "s0.prediction.zarr").exists()
    assert main(["predict", str(plain), "--instances-only", str(pz)]) == 2
    assert "takes prediction zarrs only" in capsys.readouterr().err
    assert main(["predict", str(plain), str(slide)]) == 2
    assert "missing: --out" in capsys.readouterr().err
    assert main(["predict", "--instances-only", str(pz), "--halo", "-1"]) == 2
    assert ">= 0" in capsys.readouterr().err


def test_blank_slide_says_no_tissue(tmp_path, capsys):
    """A slide with no tissue (glass only): the run says so and how to predict anyway, and finds no objects."""
    blank = tmp_path / "blank.tif"
    tifffile.imwrite(blank, np.full((300, 300, 3), 245, np.uint8), tile=(64, 64), photometric="rgb")
    ckpt = _ckpt(tmp_path / "m.pt", SCHEMA)
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(blank), "--out", str(out), "--window", "64", "--device", "cpu",
                 "--instances"]) == 0
    cap = capsys.readouterr()
    assert "no tissue found" in cap.err and "--tissue-mask off" in cap.err
    assert "no objects" in cap.out
    # with the mask off the same slide is predicted everywhere, without the warning
    assert main(["predict", str(ckpt), str(blank), "--out", str(out), "--window", "64", "--device", "cpu",
                 "--tissue-mask", "off", "--overwrite"]) == 0
    assert "no tissue found" not in capsys.readouterr().err
