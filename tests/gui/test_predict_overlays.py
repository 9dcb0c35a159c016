"""The Predict widget's overlays (issue: the preview is opaque and noisy early on; preview and result layers
pile up): the preview of the view is semi-transparent and draws only the pixels the model is sure of, and
a second preview or a second run on the same output replaces its layer instead of adding one."""

from __future__ import annotations

import numpy as np
import pytest
from predict_gui_helpers import (
    assert_idle,
    assert_one_sentence,
    make_checkpoint,
    make_widget,
    noise_image,
    wait_idle,
)

from napari_medseg._napari.jobs.predict_job import RESULT_SUFFIX, confident_labels
from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg._napari.widgets.predict_preview import (
    MIN_CONFIDENCE,
    PREVIEW_OPACITY,
    PREVIEW_SUFFIX,
    region_at_level,
)
from napari_medseg.core.source import ImageSource


@pytest.fixture
def viewer(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    return make_napari_viewer()


def _of_output(viewer, out) -> list:
    return [lay for lay in viewer.layers if medseg_meta(lay).get("ngff_path") == "labels/prediction"
            and str(medseg_meta(lay).get("path")) == str(out)]


def test_second_run_on_the_same_output_replaces_its_layer(viewer, qtbot, tmp_path):
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m.pt")))
    out = tmp_path / "out.zarr"
    w.out_edit.setText(str(out))
    w.predict()
    wait_idle(qtbot, w)
    first = viewer.layers["img" + RESULT_SUFFIX]
    first.name = "my result"  # the user renames it and puts it under the image
    viewer.layers.move(viewer.layers.index(first), 0)
    w.predict()  # the same run again: resumed (nothing left to do), shown again
    wait_idle(qtbot, w)
    assert w.status.text().startswith("done")
    assert [lay.name for lay in viewer.layers] == ["my result", "img"]  # in its place, with its name
    assert len(_of_output(viewer, out)) == 1

    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m2.pt", seed=1)))  # another model, same output
    w.predict()
    wait_idle(qtbot, w)
    assert_idle(w)
    assert_one_sentence(w.status.text())
    assert "holds a different prediction run" in w.status.text() and "overwrite=True" not in w.status.text()
    assert "Tick 'replace another run's output'" in w.messages.entries[-1][2]
    assert [lay.name for lay in viewer.layers] == ["my result", "img"]  # the refused run removes nothing
    w.overwrite_check.setChecked(True)
    w.predict()
    wait_idle(qtbot, w)
    assert w.status.text().startswith("done")
    assert len(_of_output(viewer, out)) == 1 and len(viewer.layers) == 2


def test_preview_is_semi_transparent_and_hides_unsure_pixels(viewer, qtbot, tmp_path):
    """An untrained model labels most pixels of a view, with low confidence: the preview draws the few it is
    sure of (MIN_CONFIDENCE), over the image at half opacity; a second preview reuses the layer."""
    from napari_medseg.inference import predict_region
    from napari_medseg.models import load_checkpoint

    w = make_widget(viewer)
    ck = make_checkpoint(tmp_path / "m.pt")
    w.ckpt_edit.setText(str(ck))
    assert w.preview_box.confidence_spin.value() == MIN_CONFIDENCE == 0.9
    w.preview_box.preview()
    qtbot.waitUntil(lambda: not w.preview_box.running, timeout=60_000)
    layer = viewer.layers["img" + PREVIEW_SUFFIX]
    assert layer.opacity == PREVIEW_OPACITY == 0.5
    assert medseg_meta(layer)["read_only"]  # the Train widget does not offer it as labels to train on
    assert tuple(layer.scale) == (0.5, 0.5)
    assert "preview of 300 x 260 pixels at level 0" in w.status.text()

    src = ImageSource(levels=[noise_image()], axes="YX", pixel_size=(0.5, 0.5))
    ref = predict_region(str(ck), src, 0, (slice(0, 300), slice(0, 260)), load_checkpoint(ck).norm, with_probs=True)
    shown = np.asarray(layer.data)
    np.testing.assert_array_equal(shown, confident_labels(ref.labels, ref.probs, 0.9))
    assert (ref.labels > 0).mean() > 0.3  # what an unthresholded preview would draw: noise
    assert (shown > 0).mean() < 0.1

    layer.opacity = 0.8  # the user's choice
    w.preview_box.confidence_spin.setValue(0.0)  # every pixel
    w.preview_box.preview()
    qtbot.waitUntil(lambda: not w.preview_box.running, timeout=60_000)
    assert viewer.layers["img" + PREVIEW_SUFFIX] is layer and len(viewer.layers) == 2  # the same layer
    np.testing.assert_array_equal(np.asarray(layer.data), ref.labels)
    assert layer.opacity == 0.8


def test_preview_failure_says_why(viewer, qtbot, tmp_path):
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m3d.pt", spatial_dims=3)))
    w.preview_box.preview()
    qtbot.waitUntil(lambda: not w.preview_box.running, timeout=60_000)
    assert w.preview_box.preview_btn.isEnabled()
    assert w.status.text() == "Preview failed: a 3D model cannot predict a 2D image; use a 2D model."
    assert w.messages.entries[-1][1] == "error"
    assert [lay.name for lay in viewer.layers] == ["img"]


def test_confident_labels_and_region_at_level():
    labels = np.array([[1, 2], [0, 2]], np.uint8)
    probs = np.array([[[0.95, 0.2], [0.5, 0.1]], [[0.05, 0.8], [0.5, 0.9]]], np.float16)
    np.testing.assert_array_equal(confident_labels(labels, probs, 0.9), [[1, 0], [0, 2]])
    assert confident_labels(labels, probs, 0.0) is labels
    src = ImageSource(levels=[np.zeros((4000, 3000), np.uint8), np.zeros((2000, 1500), np.uint8)], axes="YX",
                      pixel_size=(1.0, 1.0))
    assert region_at_level((slice(100, 301), slice(0, 3000)), src, 1, max_px=1024) == (slice(50, 151),
                                                                                      slice(238, 1262))
    with pytest.raises(Exception, match="level 2 does not exist"):
        region_at_level((slice(0, 10), slice(0, 10)), src, 2)


def test_a_whole_image_result_hides_the_previews_of_its_view(viewer, qtbot, tmp_path):
    """Half-transparent layers over the same pixels mix their colours, and every visible layer costs a
    software-OpenGL viewer a share of each frame (issue 23): once a whole-image result is shown, the overlays
    of that image (the widget's own preview, the Train widget's live preview and the "where to paint next" heat
    map over it) are hidden, said once in the log. A live preview beside the image, and a run whose result the
    user hid, leave them as they are."""
    from napari_medseg._napari.widgets.guidance_parts import HEATMAP_ROLE
    from napari_medseg._napari.widgets.predict_preview import hide_covered_overlays
    from napari_medseg._napari.widgets.train import PREVIEW_LAYER

    w = make_widget(viewer)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m.pt")))
    w.preview_box.preview()
    qtbot.waitUntil(lambda: not w.preview_box.running, timeout=60_000)
    ours = viewer.layers["img" + PREVIEW_SUFFIX]
    live = viewer.add_labels(np.zeros((40, 40), np.uint8), name=PREVIEW_LAYER, scale=(0.5, 0.5), translate=(20, 20))
    heat = viewer.add_image(np.zeros((10, 9), np.float32), name="where to paint next", scale=(15.0, 15.0),
                            metadata={"napari_medseg": {"role": HEATMAP_ROLE}})
    qtbot.waitUntil(lambda: ours.visible, timeout=5_000)
    w.out_edit.setText(str(tmp_path / "out.zarr"))
    w.predict()
    wait_idle(qtbot, w)
    result = viewer.layers["img" + RESULT_SUFFIX]
    qtbot.waitUntil(lambda: result.visible, timeout=5_000)
    assert not ours.visible and not live.visible and not heat.visible and result.visible
    told = [text for _, _, text in w.messages.entries if text.startswith("Hidden while the whole-image result")]
    assert len(told) == 1 and "'img preview'" in told[0] and f"'{PREVIEW_LAYER}'" in told[0]
    assert ours in viewer.layers and live in viewer.layers and heat in viewer.layers  # hidden, not removed

    result.visible = False  # the user hides the result and shows the previews: a second run leaves them so
    ours.visible = live.visible = True
    w.predict()  # resumed (nothing left to do), its layer shown again in the place of the hidden one
    wait_idle(qtbot, w)
    assert ours.visible and live.visible and not viewer.layers["img" + RESULT_SUFFIX].visible

    live.translate = (1000.0, 1000.0)  # a live preview of somewhere else (beyond the image) stays shown
    assert hide_covered_overlays(viewer, viewer.layers["img"]) == ["img" + PREVIEW_SUFFIX]
    assert live.visible and not ours.visible
    assert len([t for _, _, t in w.messages.entries if t.startswith("Hidden while")]) == 1  # said once
