"""A prediction opened with File > Open (the npe2 reader): the result shows, its tissue mask does not cover
the image. The mask opens hidden, faint once shown, and named after its result."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._napari.contrib.reader import read_layers
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.source import ImageSource
from napari_medseg.inference import run_predict
from napari_medseg.models import ModelConfig, build_model

PLUGIN = "napari-medseg"


@pytest.fixture
def prediction(tmp_path):
    """``slide.prediction.zarr`` of a 512 px RGB slide, half tissue, half glass, with its tissue mask."""
    rng = np.random.default_rng(0)
    img = np.full((512, 512, 3), 235, np.uint8)
    yy, xx = np.mgrid[0:512, 0:512]
    tissue = (yy - 256) ** 2 + (xx - 200) ** 2 < 150**2
    img[tissue] = np.clip(rng.normal((190, 110, 170), 25, (int(tissue.sum()), 3)), 0, 255).astype(np.uint8)
    levels = [img, img[::2, ::2].copy(), img[::4, ::4].copy()]
    src = ImageSource(levels=levels, axes="YXC", pixel_size=(0.5, 0.5), rgb=True, name="slide",
                      modality="brightfield")
    model = build_model(ModelConfig(spatial_dims=2, in_channels=3, out_channels=3, channels=(4, 8),
                                    num_res_units=0)).eval()
    out = tmp_path / "slide.prediction.zarr"
    res = run_predict(src, model, out, classes=ClassSchema(("background", "a", "b")), window=(64, 64),
                      tissue_mask=True, device="cpu")
    assert res.blocks_done
    return out


def test_reader_opens_the_tissue_mask_hidden_and_faint(prediction):
    layers = {kw["name"]: (kw, kind) for _, kw, kind in read_layers(str(prediction))}
    assert set(layers) == {"slide prediction", "slide tissue mask"}
    mask, kind = layers["slide tissue mask"]
    assert kind == "labels" and mask["visible"] is False and mask["opacity"] <= 0.3
    result, _ = layers["slide prediction"]
    assert result.get("visible", True) is True and result.get("opacity", 0.7) >= 0.7


def test_prediction_in_the_viewer_mask_hidden(make_napari_viewer, prediction):
    viewer = make_napari_viewer()
    layers = viewer.open(str(prediction), plugin=PLUGIN)
    by_name = {lay.name: lay for lay in layers}
    assert set(by_name) == {"slide prediction", "slide tissue mask"}
    mask = by_name["slide tissue mask"]
    assert not mask.visible and by_name["slide prediction"].visible
    # ticked, it is a faint tint: the tissue pixels under it keep at least 85 % of their own colour
    mask.visible = True
    tissue_rgba = mask.colormap.map(np.array([1]))[0]
    assert int(np.asarray(mask.data).max()) == 1 and tissue_rgba[3] * mask.opacity <= 0.15
