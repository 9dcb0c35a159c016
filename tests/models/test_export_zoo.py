"""Export of the zoo's newer models at their small presets: nnformer (2D, 3D) and the 3D forms of transunet,
unetr and fusion_unet to TorchScript and ONNX (each checked against PyTorch by the exporter, and here again
by running the ONNX file in onnxruntime), and an nnformer checkpoint round trip with bit-identical outputs.

Each case uses the smallest input its size rule accepts (``min_input_size``: 32 per axis for all of these)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.models import Checkpoint, build_model, load_checkpoint, load_model, preset, save_checkpoint
from napari_medseg.models.export import export_onnx, export_torchscript, supports_dynamic_spatial
from napari_medseg.models.registry import check_input_size, min_input_size

CASES = [pytest.param("nnformer", 2, id="nnformer-2d"), pytest.param("nnformer", 3, id="nnformer-3d"),
         pytest.param("transunet", 3, id="transunet-3d"), pytest.param("unetr", 3, id="unetr-3d"),
         pytest.param("fusion_unet", 3, id="fusion_unet-3d")]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here on one torch thread (conftest.py)."""


def _small(name: str, nd: int):
    # two input channels: fusion_unet then builds two encoders (its per-channel path is exercised)
    cfg = preset(name, "small", spatial_dims=nd, in_channels=2, out_channels=3)
    size = (min_input_size(cfg),) * nd
    check_input_size(cfg, size)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval(), size


@pytest.mark.parametrize("name, nd", CASES)
def test_export_torchscript_and_onnx(name, nd, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    cfg, model, size = _small(name, nd)
    x = torch.randn(1, cfg.in_channels, *size)
    with torch.no_grad():
        ref = model(x)
    assert ref.shape == (1, cfg.out_channels, *size)

    ts = export_torchscript(model, x, tmp_path / "m.ts")
    assert ts.path.is_file() and ts.max_abs_diff <= 1e-4
    assert ts.dynamic_spatial == supports_dynamic_spatial(model)
    loaded = torch.jit.load(str(ts.path))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), ref.numpy(), atol=1e-4, rtol=0)

    res = export_onnx(model, x, tmp_path / "m.onnx", opset=17)
    assert res.path.is_file() and res.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "image"
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=0)


def test_nnformer_2d_checkpoint_round_trip_is_bit_identical(tmp_path):
    cfg, model, size = _small("nnformer", 2)
    path = save_checkpoint(tmp_path / "m.pt", Checkpoint(model_config=cfg, state_dict=model.state_dict()))
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == cfg
    assert ckpt.state_dict.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.state_dict[k], v), k
    rebuilt = build_model(ckpt.model_config)
    rebuilt.load_state_dict(ckpt.state_dict, strict=True)
    loaded, _ = load_model(path)
    assert not loaded.training
    x = torch.randn(2, cfg.in_channels, *size)
    with torch.no_grad():
        ref = model(x)
        for again in (rebuilt.eval()(x), loaded(x)):
            assert torch.equal(again, ref), float((again - ref).abs().max())
