"""TorchScript and ONNX export, each checked against PyTorch on random input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_cases import random_input, small_config

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.models import Checkpoint, build_model, save_checkpoint
from napari_medseg.models.export import (
    ExportError,
    export_checkpoint,
    export_onnx,
    export_torchscript,
    supports_dynamic_spatial,
)
from napari_medseg.models.normalization import NormConfig

CASES = [pytest.param("unet", 2, id="unet-2d"), pytest.param("swin_unet", 2, id="swin_unet-2d"),
         pytest.param("attention_unet", 2, id="attention_unet-2d", marks=pytest.mark.slow),
         pytest.param("unetpp", 2, id="unetpp-2d", marks=pytest.mark.slow),
         pytest.param("swin_unetr", 2, id="swin_unetr-2d", marks=pytest.mark.slow),
         pytest.param("unet", 3, id="unet-3d", marks=pytest.mark.slow),
         pytest.param("swin_unet", 3, id="swin_unet-3d", marks=pytest.mark.slow)]


def _model(name: str, nd: int):
    torch.manual_seed(0)
    cfg = small_config(name, nd, in_channels=2, out_channels=3)
    return cfg, build_model(cfg)


@pytest.mark.parametrize("name, nd", CASES)
def test_torchscript_matches_pytorch(name, nd, tmp_path):
    cfg, model = _model(name, nd)
    model.train()  # export must switch to eval and back
    res = export_torchscript(model, random_input(cfg), tmp_path / "m.ts")
    assert model.training
    assert res.path.is_file() and res.format == "torchscript"
    assert res.max_abs_diff <= 1e-4
    assert res.dynamic_spatial == supports_dynamic_spatial(model)
    # independent check here too: reload, run on new random input
    loaded = torch.jit.load(str(res.path))
    x = random_input(cfg, seed=7)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model.eval()(x).numpy(), atol=1e-4)
    if res.dynamic_spatial:
        assert len(res.checked_shapes) == 2 and res.checked_shapes[1] != res.checked_shapes[0]


@pytest.mark.parametrize("name, nd", CASES)
def test_onnx_matches_pytorch(name, nd, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    cfg, model = _model(name, nd)
    x = random_input(cfg)
    res = export_onnx(model, x, tmp_path / "m.onnx", opset=17)
    assert res.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.name == "image"
    assert inp.shape[0] == "batch"  # the batch axis is always dynamic
    spatial_dynamic = all(isinstance(s, str) for s in inp.shape[2:])
    assert spatial_dynamic == supports_dynamic_spatial(model) == res.dynamic_spatial
    xb = random_input(cfg, batch=2, seed=5)
    out = sess.run(None, {"image": xb.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model.eval()(xb).numpy(), atol=1e-4)


def test_onnx_unet_takes_other_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    cfg, model = _model("unet", 2)
    res = export_onnx(model, random_input(cfg), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 2, 96, 160)
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"image": x.numpy()})[0], model.eval()(x).numpy(), atol=1e-4)


class _LiesWhenTraced(torch.nn.Module):
    """Behaves differently under tracing: the check must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 0.5 if torch.jit.is_tracing() else y


def test_mismatch_raises_and_removes_the_file(tmp_path):
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_torchscript(_LiesWhenTraced(), x, tmp_path / "bad.ts")
    assert not (tmp_path / "bad.ts").exists()
    pytest.importorskip("onnxruntime")
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(_LiesWhenTraced(), x, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert issubclass(ExportError, MedsegError)


def _checkpoint(tmp_path, name="unet"):
    cfg, model = _model(name, 2)
    ckpt = Checkpoint(model_config=cfg, state_dict=model.state_dict(),
                      classes=ClassSchema(names=("background", "tumour", "stroma")), norm=NormConfig.uint8(2))
    return save_checkpoint(tmp_path / f"{name}.pt", ckpt), model, cfg


def test_export_checkpoint_torchscript_carries_the_description(tmp_path):
    path, model, cfg = _checkpoint(tmp_path)
    res = export_checkpoint(path, format="torchscript", size=64)
    assert res.path == path.with_suffix(".ts")
    extra = {"napari_medseg.json": ""}
    loaded = torch.jit.load(str(res.path), _extra_files=extra)
    desc = json.loads(extra["napari_medseg.json"])
    assert desc["model_config"] == cfg.to_dict()
    assert desc["classes"]["names"] == ["background", "tumour", "stroma"]
    assert desc["export"]["size"] == [64, 64]
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_export_checkpoint_onnx_swin_at_the_tile_size(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path, _, cfg = _checkpoint(tmp_path, "swin_unet")
    res = export_checkpoint(path, tmp_path / "out" / "swin.onnx", format="onnx", size=(64, 96))
    assert res.path.is_file() and not res.dynamic_spatial
    assert res.checked_shapes == ((1, 2, 64, 96),)
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert json.loads(props["napari_medseg"])["model_config"]["name"] == "swin_unet"


def test_export_checkpoint_bad_inputs(tmp_path):
    path, _, _ = _checkpoint(tmp_path)
    with pytest.raises(MedsegError, match="torchscript, onnx"):
        export_checkpoint(path, format="tflite")
    with pytest.raises(MedsegError, match="multiples of 16"):
        export_checkpoint(path, format="torchscript", size=50)
    with pytest.raises(MedsegError, match="2D"):
        export_checkpoint(path, format="torchscript", size=(64, 64, 64))
    with pytest.raises(MedsegError, match="does not exist"):
        export_checkpoint(tmp_path / "nope.pt", format="onnx")


def test_onnx_without_onnxruntime_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *a, **kw):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    cfg, model = _model("unet", 2)
    with pytest.raises(ExportError, match="pip install onnxruntime"):
        export_onnx(model, random_input(cfg), tmp_path / "m.onnx")
