"""Prediction backends: ONNX Runtime fp32 gives torch's result through the same tiled predictor; INT8 is
calibrated on the image's tissue and stays close; conversions are cached; bad choices are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import drain, predict_arrays
from training._synth import trained_blob_model

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.backends import backend_model, calibration_batches, calibration_windows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    ckpt, _ = trained_blob_model(tmp, steps=8, shape=(160, 150), seed=3)
    return tmp, ckpt


def _predict(tmp, ckpt, name, **kw):
    return predict_arrays(tmp / "img.tif", ckpt, tmp / f"{name}.zarr", **kw)


def test_onnxruntime_backend_predicts_like_torch_and_is_cached(trained, tmp_path, monkeypatch):
    tmp, ckpt = trained
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))
    ref_l, ref_p = _predict(tmp, ckpt, "torch")
    lab, probs = _predict(tmp, ckpt, "ort", backend="onnxruntime")
    assert np.abs(probs - ref_p).max() < 2e-3  # float16 output
    assert (lab == ref_l).mean() >= 0.9999
    made = list((tmp_path / "cache" / "deploy").glob("*.onnx"))
    assert len(made) == 1
    mtime = made[0].stat().st_mtime_ns
    _predict(tmp, ckpt, "ort2", backend="onnxruntime")
    assert made[0].stat().st_mtime_ns == mtime  # converted once


def test_onnx_probabilities_within_1e4_of_torch(trained, tmp_path):
    from napari_medseg.io.reader import open_image
    from napari_medseg.models import load_checkpoint, load_model
    from napari_medseg.sharing import open_model_file

    tmp, ckpt = trained
    onnx = backend_model(ckpt, "onnxruntime", window=(64, 64), folder=tmp_path)
    net, _ = load_model(ckpt)
    ort = open_model_file(onnx).module
    src = open_image(tmp / "img.tif")
    for batch in calibration_batches(src, 0, load_checkpoint(ckpt).norm, (64, 64), 8):
        x = torch.from_numpy(batch)
        with torch.inference_mode():
            assert float((torch.softmax(net(x), 1) - torch.softmax(ort(x), 1)).abs().max()) < 1e-4


def test_int8_backend_is_calibrated_and_close(trained, tmp_path, monkeypatch):
    import onnx

    tmp, ckpt = trained
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))
    ref_l, _ = _predict(tmp, ckpt, "torch8")
    lab, _ = _predict(tmp, ckpt, "int8", backend="onnxruntime-int8")
    assert (lab == ref_l).mean() > 0.95
    int8 = next((tmp_path / "cache" / "deploy").glob("*.int8.onnx"))
    m = onnx.load(str(int8))
    assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    meta = json.loads({p.key: p.value for p in m.metadata_props}["napari_medseg"])
    assert meta["export"]["quantized"] == "int8-qdq" and meta["export"]["calibration_batches"] >= 1


def test_calibration_windows_hold_tissue():
    img = np.full((400, 400, 3), 240, np.uint8)  # white glass
    rng = np.random.default_rng(0)
    img[:, 250:] = rng.integers(60, 200, (400, 150, 3))  # tissue on the right only
    img[:, 250:, 1] //= 2  # stained: saturated
    src = ImageSource([img], "YXC", (1.0, 1.0), name="half")
    boxes = calibration_windows(src, 0, (64, 64), 12)
    assert len(boxes) == 12
    assert all(b[1][1] > 220 for b in boxes)  # every window reaches into the (slightly dilated) tissue mask


def test_bad_backend_choices(trained, tmp_path):
    tmp, ckpt = trained
    with pytest.raises(MedsegError, match="unknown prediction backend"):
        backend_model(ckpt, "tensorrt")
    with pytest.raises(MedsegError, match="checkpoint file"):
        backend_model(torch.nn.Conv2d(1, 2, 1), "onnxruntime")
    with pytest.raises(MedsegError, match="calibrate"):
        backend_model(ckpt, "onnxruntime-int8", folder=tmp_path)


def test_cli_backend(trained, tmp_path, monkeypatch, capsys):
    from napari_medseg.cli import main

    tmp, ckpt = trained
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))
    rc = main(["predict", str(ckpt), str(tmp / "img.tif"), "--out", str(tmp_path / "o"), "--backend",
               "onnxruntime", "--window", "64", "--tissue-mask", "off"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "img.prediction.zarr").is_dir()


def test_an_onnx_export_beside_its_checkpoint_opens(trained, tmp_path):
    """run/best.onnx next to run/best.json (the checkpoint's description): the ONNX's own description wins."""
    import shutil

    from napari_medseg.models.export import export_checkpoint
    from napari_medseg.sharing import describe_model_file

    tmp, ckpt = trained
    shutil.copy(ckpt, tmp_path / "best.pt")
    shutil.copy(Path(ckpt).with_suffix(".json"), tmp_path / "best.json")
    onnx = export_checkpoint(tmp_path / "best.pt", format="onnx", size=64).path
    assert onnx == tmp_path / "best.onnx"
    assert describe_model_file(onnx).spatial_dims == 2


def test_predict_many_converts_for_its_backend(trained, tmp_path, monkeypatch):
    from napari_medseg.inference.distributed import predict_many

    tmp, ckpt = trained
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))
    gen = predict_many([tmp / "img.tif"], ckpt, [tmp_path / "m.zarr"], backend="onnxruntime", window=(64, 64),
                       tissue_mask=False)
    drain(gen)
    assert list((tmp_path / "cache" / "deploy").glob("*.onnx"))  # it ran through ONNX Runtime


def test_dihedral_tta_on_a_volume_is_refused_before_writing(tmp_path):
    import tifffile

    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.inference.predictor import run_predict
    from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint

    cfg = ModelConfig(spatial_dims=3, channels=(4, 8), num_res_units=0)
    ck = save_checkpoint(tmp_path / "v.pt", Checkpoint(cfg, build_model(cfg).state_dict(), ClassSchema(),
                                                      NormConfig.uint8(1)))
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((16, 32, 32), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(MedsegError, match="square 2D windows"):
        run_predict(tmp_path / "v.tif", ck, tmp_path / "v.zarr", window=(16, 16, 16), tta="dihedral",
                    tissue_mask=False)
    assert not (tmp_path / "v.zarr").exists()
