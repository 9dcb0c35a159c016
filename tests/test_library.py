"""The model library (``napari_medseg.sharing.library``): adding checkpoints and other model files, listing
what fits an image, finding a model by name, removing; atomic adds, name rules, damaged cards skipped,
read-only extra folders (site pre-seeding), ``napari-medseg models``, and training landing its model."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import tifffile
import torch

from napari_medseg.cli import main
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.models import Checkpoint, ModelConfig, build_model, save_checkpoint
from napari_medseg.models.checkpoint import load_checkpoint
from napari_medseg.sharing import library as lib

CLASSES = ClassSchema(("background", "nucleus", "stroma"))


def _ckpt(path, *, dims=2, channels=3, meta=None, classes=CLASSES):
    cfg = ModelConfig(name="unet", spatial_dims=dims, in_channels=channels, out_channels=classes.n_classes,
                      channels=(4, 8), num_res_units=0)
    torch.manual_seed(0)
    meta = {"pixel_size": [0.5, 0.5], "unit": "micrometer", "saved": "2026-01-02T03:04:05", "mean_dice": 0.83,
            "val_dice": {"background": 0.9, "nucleus": 0.8, "stroma": float("nan")},
            "hd95": {"nucleus": 4.0, "stroma": 6.0}, "images": ["/data/a.tif"], **(meta or {})}
    return save_checkpoint(path, Checkpoint(cfg, build_model(cfg).state_dict(), classes, meta=meta))


@pytest.fixture
def models(tmp_path, monkeypatch):
    """An empty library folder ($NAPARI_MEDSEG_MODELS), no extra folders."""
    folder = tmp_path / "library"
    monkeypatch.setenv(lib.LIBRARY_ENV, str(folder))
    monkeypatch.delenv(lib.EXTRA_ENV, raising=False)
    return folder


def _visible(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_add_list_find_remove(tmp_path, models):
    ck = _ckpt(tmp_path / "run" / "best.pt")
    e = lib.add_checkpoint(ck, "nuclei-he", parent="base-model")
    assert e.name == "nuclei-he" and e.folder == models / "nuclei-he" and e.kind == "checkpoint"
    assert (e.architecture, e.in_channels, e.spatial_dims, e.classes) == ("unet", 3, 2, ("nucleus", "stroma"))
    assert e.pixel_size == (0.5, 0.5) and e.unit == "micrometer" and e.created == "2026-01-02T03:04:05"
    assert e.training_data == ("/data/a.tif",) and e.parent == "base-model"
    assert e.metrics == {"mean_dice": 0.83, "dice_nucleus": 0.8, "hd95_nucleus": 4.0, "hd95_stroma": 6.0,
                         "hd95": 5.0}  # NaN and the background left out
    assert e.summary() == "nuclei-he  unet 2D, 3 ch, classes nucleus, stroma; Dice 0.83 (2026-01-02)"
    assert load_checkpoint(e.model_file).classes == CLASSES and (e.folder / "model.json").is_file()
    card = json.loads((e.folder / "card.json").read_text())  # strict JSON for other tools
    assert card["model_file"] == "model.pt" and card["source"] == str(ck)
    assert json.loads(json.dumps(e.to_dict()))["model_file"] == str(e.model_file)
    # defaults: a name from the classes and the date, unique; training data and parent from the meta
    e2 = lib.add_checkpoint(_ckpt(tmp_path / "b.pt", meta={"saved": "2026-03-01T00:00:00", "parent": "p"}))
    assert e2.name.startswith("nucleus-stroma-") and e2.parent == "p" and e2.training_data == ("/data/a.tif",)
    e3 = lib.add_checkpoint(ck, e2.name)
    assert e3.name == f"{e2.name}-2"
    # newest first (e2 was saved in March, the others in January: then by name)
    assert [x.name for x in lib.list_models()] == [e2.name, "nuclei-he", e3.name]
    assert lib.find("nuclei-he") == e.model_file and lib.find(str(ck)) == ck
    assert lib.name_of(e.model_file) == "nuclei-he" and lib.name_of(ck) is None
    with pytest.raises(MedsegError, match="did you mean nuclei-he"):
        lib.find("nuclei-h")
    with pytest.raises(MedsegError, match=f"does not exist.*{re.escape(str(models))}"):
        lib.find(str(tmp_path / "none.pt"))
    # overwrite replaces in place
    e4 = lib.add_checkpoint(_ckpt(tmp_path / "c.pt", meta={"mean_dice": 0.5}), "nuclei-he", overwrite=True)
    assert e4.name == "nuclei-he" and e4.metrics["mean_dice"] == 0.5
    lib.remove("nuclei-he")
    assert "nuclei-he" not in [x.name for x in lib.list_models()] and not (models / "nuclei-he").exists()
    with pytest.raises(MedsegError, match="no model 'nuclei-he'"):
        lib.remove("nuclei-he")
    assert not [n for n in _visible(models) if n.startswith(".")]  # no hidden leftovers


@pytest.mark.parametrize("name", ["with space", "../escape", ".hidden", "a/b", "", "x" * 101, "é"])
def test_name_rules(tmp_path, models, name):
    ck = _ckpt(tmp_path / "m.pt")
    with pytest.raises(MedsegError, match="not a valid model name"):
        lib.add_checkpoint(ck, name) if name else lib.check_name(name)
    assert not (models.exists() and [p for p in models.iterdir() if not p.name.startswith(".")])
    from napari_medseg.training import TrainConfig

    if name:
        with pytest.raises(MedsegError, match="model_name"):
            TrainConfig(model_name=name)
    assert lib.check_name("nuclei-he_v2.1") == "nuclei-he_v2.1" and lib.slug("nuclei H&E") == "nuclei-H-E"


def test_add_is_atomic(tmp_path, models, monkeypatch):
    ck = _ckpt(tmp_path / "m.pt")
    old = lib.add_checkpoint(ck, "keep")
    calls = []

    def failing_copy(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the weights are copied, then the disk is full
            raise OSError(28, "No space left on device")
        shutil.copyfile(src, dst)

    monkeypatch.setattr(lib, "_copy_file", failing_copy)
    with pytest.raises(MedsegError, match="No space left.*nothing was added"):
        lib.add_checkpoint(ck, "new")
    assert _visible(models) == ["keep"]  # no half entry, no hidden temporary folder
    calls.clear()
    with pytest.raises(MedsegError, match="No space left"):
        lib.add_checkpoint(_ckpt(tmp_path / "n.pt", meta={"mean_dice": 0.1}), "keep", overwrite=True)
    assert _visible(models) == ["keep"] and lib.list_models()[0].metrics["mean_dice"] == old.metrics["mean_dice"]
    # a file where the library folder should be: a clear error, nothing written
    monkeypatch.setenv(lib.LIBRARY_ENV, str(ck))
    with pytest.raises(MedsegError, match="cannot add to the model library"):
        lib.add_checkpoint(ck, "x")
    with pytest.raises(MedsegError, match="not a safe napari-medseg checkpoint|does not exist"):
        lib.add_checkpoint(tmp_path / "none.pt")


def test_damaged_cards_are_skipped(tmp_path, models, caplog):
    ck = _ckpt(tmp_path / "m.pt")
    good = lib.add_checkpoint(ck, "good")
    bad = shutil.copytree(good.folder, models / "bad")
    (bad / "card.json").write_text("{not json")
    gone = shutil.copytree(good.folder, models / "gone")
    (gone / "model.pt").unlink()
    evil = shutil.copytree(good.folder, models / "evil")
    card = json.loads((evil / "card.json").read_text())
    (evil / "card.json").write_text(json.dumps({**card, "model_file": "../good/model.pt"}))
    (models / "not-an-entry").mkdir()
    (models / ".adding-half.x").mkdir()  # an interrupted add is invisible
    with caplog.at_level(logging.WARNING, logger="napari_medseg.sharing.library"):
        assert [e.name for e in lib.list_models()] == ["good"]
    text = caplog.text
    assert "bad" in text and "gone" in text and "missing" in text and "inside the entry" in text
    with pytest.raises(MedsegError, match="card.json cannot be read"):
        lib.find("bad")


def test_fits(tmp_path, models):
    lib.add_checkpoint(_ckpt(tmp_path / "a.pt"), "rgb-2d")
    lib.add_checkpoint(_ckpt(tmp_path / "b.pt", dims=3, channels=1, meta={"pixel_size": [1, 1, 1]}), "ct-3d")
    lib.add_checkpoint(_ckpt(tmp_path / "c.pt", channels=1), "gray-2d")

    def names(**kw):
        return sorted(e.name for e in lib.list_models(**kw))

    assert names() == ["ct-3d", "gray-2d", "rgb-2d"]
    assert names(channels=3, spatial_dims=2) == ["rgb-2d"]
    assert names(channels=1, spatial_dims=3) == ["ct-3d", "gray-2d"]  # a 2D model fits a volume, slice by slice
    assert names(channels=1, spatial_dims=2) == ["gray-2d"]  # a 3D model never fits a 2D image
    assert names(spatial_dims=2) == ["gray-2d", "rgb-2d"] and names(channels=4) == []


def test_extra_read_only_folders(tmp_path, models, monkeypatch):
    site, other = tmp_path / "site", tmp_path / "other"
    lib.add_checkpoint(_ckpt(tmp_path / "a.pt"), "site-model", folder=site)
    lib.add_checkpoint(_ckpt(tmp_path / "b.pt", meta={"mean_dice": 0.1}), "shared", folder=site)
    lib.add_checkpoint(_ckpt(tmp_path / "c.pt", meta={"mean_dice": 0.2}), "shared", folder=other)
    monkeypatch.setenv(lib.EXTRA_ENV, os.pathsep.join([str(site), "", str(other), str(tmp_path / "missing")]))
    assert lib.library_folders()[:3] == [models, site, other]
    assert sorted(e.name for e in lib.list_models()) == ["shared", "site-model"]  # the first "shared" wins
    assert lib.find("shared") == site / "shared" / "model.pt"
    with pytest.raises(MedsegError, match="read-only"):
        lib.remove("site-model")
    mine = lib.add_checkpoint(_ckpt(tmp_path / "d.pt"), "site-model")  # writes go to the user's folder only
    assert mine.name == "site-model-2" and mine.folder.parent == models
    assert sorted(p.name for p in site.iterdir()) == ["shared", "site-model"]
    assert lib.name_of(site / "shared" / "model.pt") == "shared"


def test_add_files_of_other_kinds(tmp_path, models):
    """A bioimage.io package (zip, folder; its rdf.yaml alone is refused) and a TorchScript file with its sidecar."""
    from napari_medseg.sharing import export_bioimageio

    ck = _ckpt(tmp_path / "m.pt")
    pkg = export_bioimageio(ck, tmp_path / "pkg.zip", formats=("pytorch_state_dict",), run_test=False, size=16).path
    z = lib.add_file(pkg, "pkg-zip")
    assert z.kind == "bioimageio" and z.model_file.name == "package.zip" and z.classes == ("nucleus", "stroma")
    assert z.architecture == "unet" and z.spatial_dims == 2 and z.in_channels == 3
    import zipfile

    zipfile.ZipFile(pkg).extractall(tmp_path / "unpacked")
    with pytest.raises(MedsegError, match="folder or .zip"):  # never copies a yaml's whole folder
        lib.add_file(tmp_path / "unpacked" / "rdf.yaml")
    d = lib.add_file(tmp_path / "unpacked")
    assert d.model_file.is_dir() and (d.model_file / "rdf.yaml").is_file() and d.kind == "bioimageio"
    model = build_model(load_checkpoint(ck).model_config).eval()
    ts = tmp_path / "plain.ts"
    torch.jit.trace(model, torch.zeros(1, 3, 16, 16)).save(str(ts))
    (tmp_path / "plain.json").write_text(json.dumps({"classes": ["background", "cell"], "spatial_dims": 2,
                                                     "in_channels": 3, "name": "plain cells"}))
    t = lib.add_file(ts)
    assert (t.name, t.kind, t.classes, t.model_file.name) == ("plain-cells", "torchscript", ("cell",), "model.ts")
    assert (t.folder / "model.json").is_file()
    assert lib.add_file(ck).kind == "checkpoint"
    with pytest.raises(MedsegError, match="not a model file"):
        lib.add_file(tmp_path / "plain.json")
    assert len(lib.list_models()) == 4


def test_cli_models(tmp_path, models, capsys):
    ck = _ckpt(tmp_path / "m.pt")
    assert main(["models"]) == 0 and "no model yet" in capsys.readouterr().out
    assert main(["models", "add", str(ck), "--name", "nuclei-he", "--description", "H&E nuclei"]) == 0
    assert "added nuclei-he" in capsys.readouterr().out
    lib.add_checkpoint(_ckpt(tmp_path / "ct.pt", dims=3, channels=1, meta={"mean_dice": float("nan"),
                                                                           "saved": "2025-06-01T00:00:00"}), "ct")
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "ARCHITECTURE", "DIMS", "CHANNELS", "CLASSES", "DICE", "DATE"]
    assert out[1].split()[:5] == ["nuclei-he", "unet", "2D", "3", "nucleus,"] and "0.830" in out[1]
    img = tmp_path / "rgb.tif"
    tifffile.imwrite(img, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    assert main(["models", "list", "--fits", str(img), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == ["nuclei-he"] and listed[0]["description"] == "H&E nuclei"
    assert main(["models", "show", "nuclei-he"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["classes"] == ["nucleus", "stroma"] and shown["model_file"].endswith("model.pt")
    assert main(["models", "show", "nuclei"]) == 2 and "did you mean nuclei-he" in capsys.readouterr().err
    assert main(["models", "add", str(ck), "--name", "bad name"]) == 2
    assert "not a valid model name" in capsys.readouterr().err
    assert main(["models", "folder"]) == 0 and capsys.readouterr().out.strip() == str(models)
    assert main(["models", "remove", "ct"]) == 0 and [e.name for e in lib.list_models()] == ["nuclei-he"]
    capsys.readouterr()
    # predict takes a library name for the model
    out_dir = tmp_path / "pred"
    assert main(["predict", "nuclei-he", str(img), "--out", str(out_dir), "--window", "32",
                 "--tissue-mask", "off", "--device", "cpu"]) == 0
    assert (out_dir / "rgb.prediction.zarr").is_dir()


def test_training_lands_its_model(tmp_path, models, monkeypatch):
    from helpers import drain
    from training._synth import blob_data, tiny_cfg

    from napari_medseg.training import DoneEvent, WarningEvent, train

    data = blob_data((64, 64))
    cfg = tiny_cfg(tmp_path, steps=2, val_every=2, model_name="blobs")
    events, result = drain(train(cfg, data))
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.library_name == "blobs" == result.library_name
    (entry,) = lib.list_models()
    assert entry.name == "blobs" and entry.training_data == ("blobs0",) and entry.parent is None
    assert str(entry.folder) == done.library_path
    assert load_checkpoint(done.best_checkpoint).meta["images"] == ["blobs0"]
    # fine-tuning a library model: its name is the parent; a taken name gets a suffix
    cfg2 = tiny_cfg(tmp_path / "2", steps=2, val_every=2, model_name="blobs")
    events, result = drain(train(cfg2, data, init=lib.find("blobs")))
    assert result.library_name == "blobs-2"
    assert load_checkpoint(result.last_checkpoint).meta["parent"] == "blobs"
    assert {e.name: e.parent for e in lib.list_models()} == {"blobs": None, "blobs-2": "blobs"}
    # no library: nothing added; an unwritable library: a warning, the run still succeeds
    drain(train(tiny_cfg(tmp_path / "3", steps=1, val_every=1, library=False), data))
    assert len(lib.list_models()) == 2
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(lib.LIBRARY_ENV, str(blocker / "models"))
    events, result = drain(train(tiny_cfg(tmp_path / "4", steps=1, val_every=1), data))
    assert result.library_name is None and result.last_checkpoint
    assert any(isinstance(e, WarningEvent) and "not added to the model library" in e.message for e in events)


def test_cli_train_model_name_init_and_no_library(tmp_path, models, capsys):
    from training._synth import blobs, sparse_labels

    img, m = blobs((64, 64), seed=3)
    tifffile.imwrite(tmp_path / "img.tif", img)
    tifffile.imwrite(tmp_path / "lab.tif", sparse_labels(m, 0.2))
    common = ["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"), "--steps", "1",
              "--patch-size", "32", "--channels", "8,16", "--batch-size", "2", "--threads", "1", "--workers", "0",
              "--val-fraction", "0", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "r1"), "--model-name", "first"]) == 0
    assert "in the model library as first" in capsys.readouterr().out
    log = json.loads((tmp_path / "r1" / "train_log.json").read_text())
    assert log["result"]["library_name"] == "first" and log["config"]["model_name"] == "first"
    assert main([*common, "--out", str(tmp_path / "r2"), "--init", "first", "--no-library"]) == 0
    assert load_checkpoint(tmp_path / "r2" / "last.pt").meta["parent"] == "first"
    assert [e.name for e in lib.list_models()] == ["first"]
    assert main([*common, "--out", str(tmp_path / "r3"), "--init", "frist"]) == 2
    assert "did you mean first" in capsys.readouterr().err
