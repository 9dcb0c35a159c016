"""The Train widget's live preview layer: semi-transparent over the image (on the canvas too), an opacity the
user sets kept, and only the pixels the model is sure of drawn (the others 0, transparent): early in a run
the unfiltered preview was a noisy guess over the whole view."""

from __future__ import annotations

import numpy as np

from napari_medseg._napari.widgets.train import PREVIEW_LAYER, TrainWidget


def _region_prediction(labels, probs=None):
    from napari_medseg.inference.region import RegionPrediction

    region = tuple(slice(0, n) for n in labels.shape)
    return RegionPrediction(labels, probs, None, region, 0, (0.0,) * labels.ndim, (1.0,) * labels.ndim)


def test_live_preview_shows_only_the_pixels_the_model_is_sure_of(monkeypatch):
    """Early in a run the model calls most pixels something, unsure: the preview keeps a class only where
    its probability is at least ``min_confidence`` (0.8 unless the widget says otherwise); elsewhere 0,
    drawn transparent."""
    import napari_medseg.inference as inference
    from napari_medseg._napari.jobs.train_job import MIN_CONFIDENCE, make_preview_hook
    from napari_medseg._napari.layers import LatestValue, ViewRequest

    assert MIN_CONFIDENCE == 0.8
    labels = np.array([[1, 2, 0], [2, 1, 2]], np.uint8)
    top = np.array([[0.95, 0.5, 0.99], [0.85, 0.9, 0.4]])  # the winning class's probability
    probs = np.stack([1 - top, top, np.zeros_like(top)]).astype(np.float16)
    asked: dict = {}

    def predict(*args, **kwargs):
        asked.update(kwargs)
        return _region_prediction(labels, probs)

    monkeypatch.setattr(inference, "predict_region", predict)
    view = LatestValue(ViewRequest(0, (slice(0, 2), slice(0, 3))))
    opts = LatestValue({"every_s": 0.0})
    hook = make_preview_hook(None, view, opts, {"norm": object()}, "cpu", max_share=1.0)
    pred = hook(None, None, 0)
    assert asked["with_probs"] is True
    np.testing.assert_array_equal(pred.labels, [[1, 0, 0], [2, 1, 0]])
    assert pred.probs is None  # not kept for the main thread
    opts.set({"every_s": 0.0, "min_confidence": 0.9})  # the widget's *min confidence*
    np.testing.assert_array_equal(hook(None, None, 1).labels, [[1, 0, 0], [0, 1, 0]])
    opts.set({"every_s": 0.0, "min_confidence": 0.0})  # 0: every pixel
    np.testing.assert_array_equal(hook(None, None, 2).labels, labels)


def test_min_confidence_reaches_the_preview_and_is_remembered(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    w = TrainWidget(make_napari_viewer())
    assert w.preview_confidence.value() == 0.8
    w.preview_confidence.setValue(0.65)
    assert w._preview_opts.get()["min_confidence"] == 0.65
    assert w._settings_values()["preview_confidence"] == 0.65


def test_preview_layer_is_semi_transparent_and_keeps_the_users_opacity(make_napari_viewer, qtbot):
    """The preview Labels layer is added at opacity 0.5 and drawn so over the image (a class colour over
    black shows at half its intensity on the canvas); a later preview keeps the opacity the user set."""
    from napari_medseg._napari.widgets.train import PREVIEW_OPACITY, show_prediction
    from napari_medseg.core.classes import ClassSchema

    viewer = make_napari_viewer(show=True)  # a hidden canvas draws nothing
    image = viewer.add_image(np.zeros((64, 64), np.uint8), name="img", contrast_limits=(0, 255))
    classes = ClassSchema(names=("background", "disc"), colors=("#9e9e9e", "#ff0000"))
    labels = np.zeros((64, 64), np.uint8)
    labels[8:56, 8:56] = 1
    show_prediction(viewer, _region_prediction(labels), classes, uncertainty=False, image=image)
    layer = viewer.layers[PREVIEW_LAYER]
    assert PREVIEW_OPACITY == 0.5 and layer.opacity == 0.5
    qtbot.waitUntil(lambda: layer.visible, timeout=3000)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    red, green = (int(v) for v in shot[h // 2, w // 2, :2])
    assert 100 <= red <= 155 and green < 30, shot[h // 2, w // 2]  # half of #ff0000 over black
    layer.opacity = 0.8  # the user's choice
    show_prediction(viewer, _region_prediction(labels), classes, uncertainty=False, image=image)
    assert viewer.layers[PREVIEW_LAYER] is layer and layer.opacity == 0.8
