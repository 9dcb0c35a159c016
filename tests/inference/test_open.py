"""Results open as a multiscale Labels layer over the image, colored like the classes."""

from __future__ import annotations

import numpy as np
import pytest
from infer_helpers import textured_rgb, zarr_source

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.inference import open_prediction, run_predict


@pytest.fixture
def prediction(tmp_path, unet2d):
    img = textured_rgb(1100, 600)
    src = zarr_source(tmp_path / "s.zarr", [img, img[::2, ::2].copy()], "YXC", chunks=(128, 128, 3),
                      pixel_size=(0.25, 0.25))
    classes = ClassSchema(names=("background", "tumour", "stroma"), colors=("#000000", "#ff0000", "#00ff00"))
    out = tmp_path / "slide.prediction.zarr"
    run_predict(src, unet2d, out, classes=classes, level=1, window=(64, 64), tissue_mask=False,
                write_probs="uint8", device="cpu")
    return out, classes


def test_open_prediction_sources(prediction):
    out, classes = prediction
    lab, probs = open_prediction(out)
    assert lab.kind == "labels" and len(lab.levels) == 2 and lab.levels[0].shape == (550, 300)
    assert lab.pixel_size == (0.5, 0.5) and lab.metadata["translate"] == [0.125, 0.125]
    assert lab.metadata["colors"][1] == pytest.approx((1.0, 0.0, 0.0, 0.7))
    assert lab.metadata["classes"] == ["background", "tumour", "stroma"]
    assert probs.axes == "CYX" and probs.channel_names == classes.names
    assert int(np.asarray(lab.levels[1]).max()) <= 2


def test_io_reader_opens_the_output_too(prediction):
    out, classes = prediction
    from napari_medseg.io.reader import open_path

    srcs = open_path(out)
    labels = [s for s in srcs if s.kind == "labels"]
    assert labels and labels[0].levels[0].shape == (550, 300)
    assert labels[0].metadata["colors"][2] == pytest.approx((0.0, 1.0, 0.0, 0.7), abs=0.01)


def test_napari_labels_layer_from_layer_data(prediction):
    napari = pytest.importorskip("napari")
    from napari_medseg._napari.layerdata import prediction_layer_data

    out, classes = prediction
    (data, kw, kind), (pdata, pkw, pkind) = prediction_layer_data(out)
    assert kind == "labels" and pkind == "image"
    layer = napari.layers.Labels(data, **kw)
    assert layer.multiscale and layer.data.shape == (550, 300)
    assert np.allclose(layer.colormap.map(np.array([1]))[0], (1.0, 0.0, 0.0, 0.7), atol=0.01)
    assert tuple(layer.translate) == (0.125, 0.125) and tuple(layer.scale) == (0.5, 0.5)
    img = napari.layers.Image(pdata, **{k: v for k, v in pkw.items() if k != "channel_axis"})
    assert img.multiscale


def test_open_prediction_of_something_else(tmp_path):
    with pytest.raises(MedsegError, match="not a napari-medseg prediction"):
        open_prediction(tmp_path)
