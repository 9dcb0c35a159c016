"""The one bridge between ``ImageSource`` and napari (``_napari.layerdata``): layer data per role, and back."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._napari.layerdata import (
    TISSUE_OPACITY,
    from_layer,
    medseg_meta,
    prediction_colormap,
    store_colormap,
    to_layer_data,
)
from napari_medseg._napari.reference_layers import is_reference
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.source import ImageSource

CLASSES = ClassSchema(names=("background", "tumour"), colors=("#000000", "#ff0000"))


def _slide() -> ImageSource:
    levels = [np.zeros((64, 96, 3), np.uint8), np.zeros((32, 48, 3), np.uint8)]
    return ImageSource(levels=levels, axes="YXC", pixel_size=(0.25, 0.25), name="slide", path="/x/slide.svs",
                       rgb=True, modality="brightfield")


def _labels(**kw) -> ImageSource:
    return ImageSource(levels=[np.zeros((64, 96), np.uint8)], axes="YX", pixel_size=(0.5, 0.5), kind="labels",
                       **kw)


def test_a_slide_opens_as_a_multiscale_rgb_image_with_its_description():
    data, kw, kind = to_layer_data(_slide())
    assert kind == "image" and len(data) == 2 and kw["multiscale"] and kw["rgb"]
    assert kw["scale"] == (0.25, 0.25) and kw["units"] == "micrometer" and "colormap" not in kw
    assert kw["metadata"]["napari_medseg"] == {"path": "/x/slide.svs", "axes": "YXC", "modality": "brightfield",
                                               "unit": "micrometer"}


def test_a_volume_is_grey_and_channels_split():
    vol = ImageSource(levels=[np.zeros((2, 4, 8, 8), np.int16)], axes="CZYX", pixel_size=(1.0, 0.5, 0.5),
                      unit="millimeter", name="mr", channel_names=("T1", "T2"), contrast_limits=(0, 100))
    data, kw, kind = to_layer_data(vol)
    assert kind == "image" and not kw["multiscale"] and data.shape == (2, 4, 8, 8)
    assert kw["channel_axis"] == 0 and kw["name"] == ["mr [T1]", "mr [T2]"]
    assert kw["colormap"] == "gray" and kw["contrast_limits"] == [0, 100]


def test_labels_take_their_colors_and_a_tissue_mask_opens_hidden():
    _, kw, kind = to_layer_data(_labels(name="seg", metadata={"colors": {1: (1.0, 0.0, 0.0, 0.7)}}))
    assert kind == "labels" and "rgb" not in kw and kw["colormap"][1] == (1.0, 0.0, 0.0, 0.7)
    assert kw["colormap"][0] == (0.0, 0.0, 0.0, 0.0) and "translate" not in kw
    mask = _labels(name="tissue mask", metadata={"ngff_path": "labels/tissue", "translate": [1.0, 2.0]})
    _, kw, _ = to_layer_data(mask)
    assert kw["visible"] is False and kw["opacity"] == TISSUE_OPACITY and kw["translate"] == (1.0, 2.0)


def test_a_prediction_is_placed_and_its_probabilities_hidden():
    _, kw, kind = to_layer_data(_labels(name="p", metadata={"colors": {1: (1, 0, 0, 0.7)}}), role="prediction")
    assert kind == "labels" and kw["opacity"] == 0.7 and kw["translate"] == (0.0, 0.0)
    probs = ImageSource(levels=[np.zeros((2, 64, 96), np.uint8)], axes="CYX", pixel_size=(0.5, 0.5), name="p")
    _, kw, kind = to_layer_data(probs, role="prediction")
    assert kind == "image" and kw["blending"] == "additive" and kw["visible"] is False


def test_reference_labels_are_marked_and_drawn_without_background():
    _, kw, kind = to_layer_data(_labels(name="ground truth"), "reference", classes=CLASSES, visible=False)
    assert kind == "labels" and kw["visible"] is False
    assert kw["metadata"]["napari_medseg"]["classes"] == CLASSES.to_dict()
    assert kw["metadata"]["napari_medseg"]["role"] == "reference"
    assert np.allclose(kw["colormap"].map(np.array([1]))[0], 0) and kw["colormap"].map(np.array([2]))[0][0] == 1
    with pytest.raises(ValueError):
        to_layer_data(_labels(), "reference")


def test_colormaps_share_the_class_colors():
    assert np.allclose(store_colormap(CLASSES).map(np.array([2]))[0], prediction_colormap(CLASSES).map(np.array([1]))[0])
    assert np.allclose(prediction_colormap(CLASSES, alpha=1.0).map(np.array([1]))[0], (1, 0, 0, 1))


def test_a_layer_made_from_a_source_gives_the_source_back(make_napari_viewer):
    viewer = make_napari_viewer()
    data, kw, _ = to_layer_data(_slide())
    layer = viewer.add_image(data, **kw)
    src = from_layer(layer, reopen=False)
    assert src.axes == "YXC" and src.rgb and src.pixel_size == (0.25, 0.25) and len(src.levels) == 2
    assert src.path == "/x/slide.svs" and medseg_meta(layer)["modality"] == "brightfield"
    data, kw, _ = to_layer_data(_labels(name="ground truth"), "reference", classes=CLASSES)
    gt = viewer.add_labels(data, **kw)
    assert is_reference(gt)
