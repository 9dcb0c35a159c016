"""A package from elsewhere: channel-last input axes, per-image percentile normalisation (``scale_range``),
one sigmoid output channel, TorchScript weights. napari-medseg's tiled prediction of an image must equal what
bioimageio.core itself predicts for the whole image; plain ONNX files with a sidecar predict the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import torch.nn as nn

from napari_medseg.inference.predictor import run_predict
from napari_medseg.sharing import describe_model_file, open_model_file


class ChannelLastNet(nn.Module):
    """(B, Y, X, C) -> (B, 1, Y, X) logits of a sigmoid: a per-pixel (1x1) network, so tiling is exact."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(2, 8, 1), nn.Tanh(), nn.Conv2d(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 3, 1, 2)) * 4.0


def _preprocess(x: np.ndarray) -> np.ndarray:
    """scale_range(1, 99) per channel over y, x of a (B, Y, X, C) sample, as bioimage.io defines it."""
    lo = np.percentile(x, 1, axis=(0, 1, 2), keepdims=True)
    hi = np.percentile(x, 99, axis=(0, 1, 2), keepdims=True)
    return ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as b

    d = tmp_path_factory.mktemp("foreign")
    net = ChannelLastNet().eval()
    x = (np.random.default_rng(0).random((1, 48, 40, 2)) * np.array([100.0, 3000.0])).astype(np.float32)
    with torch.no_grad():
        y = torch.sigmoid(net(torch.from_numpy(_preprocess(x)))).numpy()
    np.save(d / "in.npy", x)
    np.save(d / "out.npy", y)
    torch.jit.trace(net, torch.from_numpy(_preprocess(x))).save(str(d / "net.ts"))
    (d / "README.md").write_text("# foreign\n\n## Validation\n\nnone\n")
    size = b.ParameterizedSize(min=16, step=8)
    inp = b.InputTensorDescr(
        id=b.TensorId("raw"), axes=[b.BatchAxis(), b.SpaceInputAxis(id=b.AxisId("y"), size=size),
                                    b.SpaceInputAxis(id=b.AxisId("x"), size=size),
                                    b.ChannelAxis(channel_names=[b.Identifier("dapi"), b.Identifier("gfp")])],
        test_tensor=b.FileDescr(source=d / "in.npy"), data=b.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[b.ScaleRangeDescr(kwargs=b.ScaleRangeKwargs(axes=[b.AxisId("batch"), b.AxisId("y"),
                                                                         b.AxisId("x")],
                                                                   min_percentile=1, max_percentile=99))])
    ref = {"tensor_id": b.TensorId("raw")}
    out = b.OutputTensorDescr(
        id=b.TensorId("cells"), axes=[b.BatchAxis(), b.ChannelAxis(channel_names=[b.Identifier("cell")]),
                                      b.SpaceOutputAxis(id=b.AxisId("y"), size=b.SizeReference(**ref, axis_id=b.AxisId("y"))),
                                      b.SpaceOutputAxis(id=b.AxisId("x"), size=b.SizeReference(**ref, axis_id=b.AxisId("x")))],
        test_tensor=b.FileDescr(source=d / "out.npy"), data=b.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=[b.SigmoidDescr()])
    tv = b.Version(torch.__version__.split("+")[0])
    descr = b.ModelDescr(name="foreign cells", description="a model from another tool", authors=[b.Author(name="X")],
                         cite=[b.CiteEntry(text="x", url="https://example.org")], license=b.LicenseId("MIT"),
                         documentation=b.FileDescr(source=d / "README.md"), inputs=[inp], outputs=[out],
                         weights=b.WeightsDescr(torchscript=b.TorchscriptWeightsDescr(source=d / "net.ts",
                                                                                       pytorch_version=tv)))
    return save_bioimageio_package(descr, output_path=d / "foreign.zip"), net, d


def test_a_foreign_package_is_described(foreign):
    info = describe_model_file(foreign[0])
    assert (info.in_channels, info.spatial_dims, info.classes, info.trainable) == (2, 2, ("cell",), False)
    opened = open_model_file(foreign[0])
    assert opened.window_rule == ((16, 8), (16, 8)) and opened.norm.needs_data


def test_tiled_prediction_equals_bioimageio_core_on_the_whole_image(foreign, tmp_path):
    from bioimageio.core import predict
    from bioimageio.spec import load_model_description

    pkg, _, _ = foreign
    img = (np.random.default_rng(5).random((152, 128, 2)) * np.array([100.0, 3000.0])).astype(np.float32)
    img[40:90, 30:80, 1] += 2000  # a bright region, so percentiles matter
    tifffile.imwrite(tmp_path / "img.tif", img, photometric="minisblack", planarconfig="contig")
    run_predict(tmp_path / "img.tif", pkg, tmp_path / "p.zarr", window=(64, 64), write_probs="float16",
                tissue_mask=False)
    import zarr

    g = zarr.open_group(tmp_path / "p.zarr", mode="r")
    probs = np.asarray(g["probs"]["0"]).astype(np.float32)  # (2, Y, X): background, cell
    labels = np.asarray(g["labels"]["prediction"]["0"])
    sample = predict(model=load_model_description(pkg), inputs=img[None])
    theirs = np.asarray(next(iter(sample.members.values())).data)[0, 0]  # (Y, X) sigmoid probability
    assert np.abs(probs[1] - theirs).max() < 2e-3
    assert np.array_equal(labels, (theirs > 0.5).astype(labels.dtype))


def test_a_plain_onnx_file_with_a_sidecar_predicts(tmp_path):
    class Net(nn.Module):
        def forward(self, x):  # (B, 1, Y, X) in [0, 1] -> 3 class scores
            return torch.cat([1 - x, x, 0.5 * torch.ones_like(x)], dim=1)

    torch.onnx.export(Net(), (torch.zeros(1, 1, 32, 32),), str(tmp_path / "m.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    (tmp_path / "m.json").write_text(json.dumps({
        "classes": ["background", "bright", "middle"], "spatial_dims": 2, "in_channels": 1, "output": "softmax",
        "normalization": {"mode": "range", "low": [0], "high": [200]}, "window": {"min": 16, "step": 16}}))
    img = np.tile(np.linspace(0, 255, 100, dtype=np.float32), (60, 1)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", img)
    run_predict(tmp_path / "img.tif", tmp_path / "m.onnx", tmp_path / "o.zarr", window=(32, 32), tissue_mask=False)
    import zarr

    lab = np.asarray(zarr.open_group(tmp_path / "o.zarr", mode="r")["labels"]["prediction"]["0"])
    x = np.clip(img / 200.0, 0, 1)
    want = np.argmax(np.stack([1 - x, x, np.full_like(x, 0.5)]), axis=0)
    assert (lab == want).mean() > 0.999
    info = describe_model_file(tmp_path / "m.onnx")
    assert info.classes == ("bright", "middle") and info.kind == "onnx"
    with pytest.raises(Exception, match="takes windows of 16 \\+ k\\*16"):
        run_predict(tmp_path / "img.tif", tmp_path / "m.onnx", tmp_path / "o2.zarr", window=(40, 40),
                    tissue_mask=False)


def test_cli_predicts_with_a_package_zip_and_folder(foreign, tmp_path, capsys):
    import zipfile

    import zarr

    from napari_medseg.cli import main

    pkg = foreign[0]
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(pkg).extractall(folder)
    img = (np.random.default_rng(6).random((64, 48, 2)) * 1000).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", img, photometric="minisblack", planarconfig="contig")
    outs = []
    for i, model in enumerate((pkg, folder)):
        rc = main(["predict", str(model), str(tmp_path / "img.tif"), "--out", str(tmp_path / f"o{i}"),
                   "--tissue-mask", "off"])
        assert rc == 0, capsys.readouterr().err
        outs.append(np.asarray(zarr.open_group(tmp_path / f"o{i}" / "img.prediction.zarr", mode="r")
                               ["labels"]["prediction"]["0"]))
    assert np.array_equal(outs[0], outs[1]) and outs[0].shape == (64, 48)


def test_an_onnx_graph_with_a_fixed_batch_of_one_runs_in_batches(tmp_path):
    """torch.onnx.export without dynamic axes fixes the batch at 1; the predictor sends batches of 4."""
    net = nn.Conv2d(1, 2, 1)
    torch.onnx.export(net, (torch.zeros(1, 1, 32, 32),), str(tmp_path / "b1.onnx"), dynamo=False, input_names=["x"])
    (tmp_path / "b1.json").write_text(json.dumps({"spatial_dims": 2, "in_channels": 1, "window": {"fixed": 32},
                                                  "normalization": {"mode": "range", "low": [0], "high": [255]}}))
    img = (np.random.default_rng(2).random((80, 70)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", img)
    run_predict(tmp_path / "img.tif", tmp_path / "b1.onnx", tmp_path / "o.zarr", window=(32, 32), batch_size=4,
                tissue_mask=False)
    import zarr

    lab = np.asarray(zarr.open_group(tmp_path / "o.zarr", mode="r")["labels"]["prediction"]["0"])
    with torch.no_grad():
        want = net(torch.from_numpy(img / 255.0).float()[None, None])[0].argmax(0).numpy()
    assert (lab == want).mean() > 0.999
