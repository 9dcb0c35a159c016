"""bioimage.io packages out and in: a small trained model exported, tested with bioimageio.core (offline), read
back, and predicted through the tiled predictor with every weights format, equal to the checkpoint."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from helpers import drain, predict_arrays
from training._synth import blob_data, tiny_cfg, trained_blob_model

from napari_medseg.core.errors import MedsegError
from napari_medseg.sharing import describe_model_file, export_bioimageio, open_model_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 2D U-Net trained for a few steps on blobs, its checkpoint and an image like its data."""
    tmp = tmp_path_factory.mktemp("trained")
    ckpt, img = trained_blob_model(tmp)
    return tmp, ckpt, img


@pytest.fixture(scope="module")
def package(trained):
    tmp, ckpt, img = trained
    res = export_bioimageio(ckpt, tmp / "model.zip", name="blobs unet", authors=["Test Author"],
                            test_image=img[None].astype(np.float32))
    return res


def test_package_passes_bioimageio_core_test_for_every_weights_format(package):
    assert package.test_passed is True, package.test_log
    assert set(package.formats) == {"pytorch_state_dict", "torchscript", "onnx"}
    for fmt in package.formats:  # every format reproduced the test output
        assert f"passed: Reproduce test outputs from test inputs ({fmt})" in package.test_log
    names = set(zipfile.ZipFile(package.path).namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy", "weights.pt", "weights.ts",
            "weights.onnx"} <= names


def test_package_describes_the_model(package, trained):
    import yaml

    rdf = yaml.safe_load(zipfile.ZipFile(package.path).read("rdf.yaml"))
    inp, out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert [p["id"] for p in inp["preprocessing"] if p["id"] != "ensure_dtype"] == ["scale_linear", "clip"]
    assert [p["id"] for p in out["postprocessing"] if p["id"] != "ensure_dtype"] == ["softmax"]
    assert out["axes"][1]["channel_names"] == ["background", "foreground"]
    w = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (w["import_from"], w["callable"]) == ("napari_medseg.models", "build_model_from_dict")
    assert rdf["config"]["napari_medseg"]["classes"]["names"] == ["background", "foreground"]
    readme = zipfile.ZipFile(package.path).read("README.md").decode()
    assert "## Validation" in readme and "Intended use" in readme and "blobs" in readme.lower()
    info = describe_model_file(package.path)
    assert (info.kind, info.in_channels, info.spatial_dims, info.classes) == ("bioimageio", 1, 2, ("foreground",))
    assert info.trainable and info.architecture == "unet"


def _predict(model, tmp, name, **kw):
    return predict_arrays(tmp / "img.tif", model, tmp / f"{name}.zarr", **kw)


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "torchscript", "onnx"])
def test_every_weights_format_predicts_like_the_checkpoint(trained, package, weights):
    tmp, ckpt, _ = trained
    ref_l, ref_p = _predict(ckpt, tmp, "ref")
    opened = open_model_file(package.path, weights=weights)
    lab, probs = _predict(opened.module, tmp, weights, norm=opened.norm, classes=opened.classes)
    assert np.abs(probs - ref_p).max() < 2e-3  # float16 output
    assert (lab == ref_l).mean() > 0.9999


def test_the_package_path_predicts_directly(trained, package):
    """``predict(path_to_package)``: preprocessing, classes and windows come from the package."""
    tmp, ckpt, _ = trained
    ref_l, _ = _predict(ckpt, tmp, "ref2")
    lab, _ = _predict(package.path, tmp, "direct")
    assert np.array_equal(lab, ref_l)


def test_a_package_of_our_architecture_is_a_starting_point(trained, package, tmp_path):
    from napari_medseg.training import train
    from napari_medseg.training.rounds import resolve_init

    init = resolve_init(package.path)
    ck = torch.load(trained[1], weights_only=True)
    src = ck["teacher_state_dict"] if "teacher_state_dict" in ck and ck.get("teacher_state_dict") else ck["state_dict"]
    assert set(init.state_dict) == set(src)
    assert init.checkpoint.norm.mode == "steps"
    events, res = drain(train(tiny_cfg(tmp_path, steps=2, library=False), blob_data(), init=str(package.path)))
    assert res.last_checkpoint is not None


def test_a_torchscript_or_onnx_file_is_not_a_starting_point(trained, tmp_path):
    from napari_medseg.models.export import export_checkpoint
    from napari_medseg.training.rounds import resolve_init

    onnx = export_checkpoint(trained[1], tmp_path / "m.onnx", format="onnx", size=64)
    with pytest.raises(MedsegError, match="cannot be trained further"):
        resolve_init(onnx.path)


def test_a_3d_model_exports_and_passes(tmp_path):
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), num_res_units=0)
    ck = save_checkpoint(tmp_path / "v.pt", Checkpoint(cfg, build_model(cfg).state_dict(), ClassSchema(),
                                                      NormConfig.ct_window(40, 400),
                                                      meta={"pixel_size": [2.0, 0.8, 0.8], "unit": "mm"}))
    res = export_bioimageio(ck, tmp_path / "v.zip", size=16, formats=("pytorch_state_dict", "onnx"))
    assert res.test_passed, res.test_log
    info = describe_model_file(res.path)
    assert info.spatial_dims == 3 and info.unit == "millimeter" and info.pixel_size == (2.0, 0.8, 0.8)


def test_bad_export_arguments_are_clear(trained, tmp_path):
    with pytest.raises(MedsegError, match="formats"):
        export_bioimageio(trained[1], tmp_path / "x.zip", formats=("onnx",))
    with pytest.raises(MedsegError, match="licen"):
        export_bioimageio(trained[1], tmp_path / "x.zip", license="not-a-licence", run_test=False,
                          formats=("pytorch_state_dict",))
    with pytest.raises(MedsegError, match="test image"):
        export_bioimageio(trained[1], tmp_path / "x.zip", test_image=np.zeros((3, 10, 10)), run_test=False,
                          formats=("pytorch_state_dict",))
    assert not (tmp_path / "x.zip").exists()


def test_cli_export_writes_a_tested_package(trained, tmp_path, capsys):
    from napari_medseg.cli import main

    tmp, ckpt, _ = trained
    rc = main(["export", str(ckpt), "--out", str(tmp_path / "cli"), "--test-image", str(tmp / "img.tif"),
               "--author", "A. Person", "--size", "64"])
    assert rc == 0, capsys.readouterr()
    assert "test passed" in capsys.readouterr().out
    assert (tmp_path / "cli.zip").is_file()
    rc = main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y.zip")])
    assert rc == 2


def test_fine_tuning_a_package_with_per_image_statistics_fixes_them_on_the_training_images(package, tmp_path):
    """A package of our architecture whose preprocessing is scale_range (per-image percentiles): training from
    it computes the percentiles once over the training images and keeps them in its checkpoints."""
    import yaml

    from napari_medseg.models import load_checkpoint
    from napari_medseg.training import train

    folder = tmp_path / "pkg"
    zipfile.ZipFile(package.path).extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["inputs"][0]["preprocessing"] = [{"id": "scale_range", "kwargs": {
        "axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.0}}]
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    opened = open_model_file(folder)
    assert opened.norm.needs_data
    _, res = drain(train(tiny_cfg(tmp_path, steps=2, library=False), blob_data(), init=str(folder)))
    norm = load_checkpoint(res.last_checkpoint).norm
    assert norm.mode == "steps" and not norm.needs_data
    assert [s["id"] for s in norm.steps] == ["scale_linear"]
