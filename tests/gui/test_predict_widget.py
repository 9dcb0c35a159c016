"""The Predict widget in a real viewer: whole-image prediction appears as a multiscale Labels layer equal
to the headless predictor's output; cancel and bad inputs leave the widget usable. Failures in detail:
``test_predict_failures.py``; the preview and the reuse of layers: ``test_predict_overlays.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg._napari.jobs import predict_job as pr
from napari_medseg._napari.jobs.predict_job import RESULT_SUFFIX, RunLayers
from napari_medseg._napari.widgets import messages
from napari_medseg._napari.widgets.predict import PredictWidget
from napari_medseg.core.classes import ClassSchema
from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(name="unet", spatial_dims=2, in_channels=1, out_channels=3, channels=(8, 16, 32))
    model = build_model(cfg)
    ck = Checkpoint(cfg, model.state_dict(), classes=ClassSchema(names=("background", "a", "b")),
                    norm=NormConfig.uint8(1))
    return save_checkpoint(tmp_path / "model.pt", ck)


@pytest.fixture
def widget(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 260), dtype=np.uint8)
    viewer.add_image(img, name="img", scale=(0.5, 0.5), units="micrometer")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.window_spin.setValue(64)
    w.tissue_check.setChecked(False)
    return viewer, w, img


@pytest.mark.parametrize("in_process", [True, False], ids=["child-process", "thread"])
def test_predict_whole_image_matches_headless(widget, checkpoint, qtbot, tmp_path, in_process, monkeypatch):
    viewer, w, img = widget
    w.process_check.setChecked(in_process)
    w.ckpt_edit.setText(str(checkpoint))
    w.out_edit.setText(str(tmp_path / "gui.zarr"))
    opened_by_worker = []
    opened = RunLayers.layers_opened
    monkeypatch.setattr(RunLayers, "layers_opened", lambda self, layers: (opened_by_worker.append(layers is not None),
                                                                           opened(self, layers)))
    w.predict()
    assert w._worker is not None
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert opened_by_worker and opened_by_worker[0], "the worker should open the output for the main thread"
    name = "img" + RESULT_SUFFIX
    assert name in viewer.layers
    layer = viewer.layers[name]
    assert tuple(layer.scale) == (0.5, 0.5)
    qtbot.waitUntil(lambda: layer.visible, timeout=5_000)  # added hidden, shown a moment later
    assert tuple(layer.units) == tuple(viewer.layers["img"].units)  # else napari drops units for rendering
    # shown while blocks finish: napari's dask cache would keep the chunks read before they were written
    with layer.dask_optimized_slicing() as (_, cache):  # napari's global dask cache is off for this layer
        assert cache is None
    viewer.reset_view()
    layer.refresh()
    shown = np.asarray(layer._slice.image.raw)
    assert shown.any(), "the drawn result is empty although the prediction finished"
    gui = np.asarray(layer.data[0] if layer.multiscale else layer.data)

    from napari_medseg._napari.layerdata import from_layer
    from napari_medseg.inference import open_prediction, run_predict

    run_predict(from_layer(viewer.layers["img"]), str(checkpoint), str(tmp_path / "cli.zarr"),
                window=(64, 64), overlap=0.25, batch_size=4, tissue_mask=False)
    headless = np.asarray([s for s in open_prediction(tmp_path / "cli.zarr") if s.kind == "labels"][0].levels[0])
    assert gui.shape == img.shape
    np.testing.assert_array_equal(gui, headless)
    assert "done" in w.status.text()


def test_tissue_mask_layer_comes_hidden_at_the_end(widget, qtbot, tmp_path):
    """While blocks arrive only the result is added (adding a layer stalls the viewer), and only once a block
    is finished (a run failing before has no layer to leave behind); the run's tissue mask follows, hidden,
    when the run ends, from the layer data the worker opened."""
    viewer, w, img = widget
    run = RunLayers(viewer, viewer.layers["img"], tmp_path / "x.zarr")
    result = [np.zeros((300, 260), np.uint8), np.zeros((150, 130), np.uint8)]
    mask = [np.ones((75, 65), np.uint8)]
    opened = [(result, {"name": "x prediction", "scale": (0.5, 0.5), "translate": (0.0, 0.0)}, "labels"),
              (mask, {"name": "x tissue mask", "scale": (2.0, 2.0), "translate": (0.75, 0.75)}, "labels")]
    run.started(resumed_blocks=0)
    run.layers_opened(opened)
    assert [lay.name for lay in viewer.layers] == ["img"]  # nothing finished yet: nothing to show
    run.block_done((slice(0, 300), slice(0, 260)))
    names = [lay.name for lay in viewer.layers]
    assert "img" + RESULT_SUFFIX in names and "img tissue mask" not in names
    res = viewer.layers["img" + RESULT_SUFFIX]
    assert viewer.layers.selection.active is not res  # a result never takes the painter's layer
    qtbot.waitUntil(lambda: res.visible, timeout=5_000)  # added hidden, shown a moment later
    run.finished(blocks_done=1)
    tissue = viewer.layers["img tissue mask"]
    assert tuple(tissue.scale) == (2.0, 2.0) and tuple(tissue.translate) == (0.75, 0.75)
    qtbot.wait(100)
    assert not tissue.visible and res.visible
    run.finished(blocks_done=1)  # again (a second PredictDone): nothing is added twice
    names = [lay.name for lay in viewer.layers]
    assert names.count("img tissue mask") == 1 and names.count("img" + RESULT_SUFFIX) == 1


def test_a_result_hidden_by_the_user_stays_hidden_and_shows_the_latest_blocks_again(widget, qtbot, tmp_path):
    """Unticking the result's eye is how a user pans a slide smoothly while it is predicted (drawing the growing
    result is most of what prediction costs the viewer, docs/gui-loop.md): the run must not show it again,
    must not redraw it while hidden, and ticking it back must show the blocks finished meanwhile."""
    viewer, w, img = widget
    run = RunLayers(viewer, viewer.layers["img"], tmp_path / "x.zarr")
    levels = [np.zeros((300, 260), np.uint8), np.zeros((150, 130), np.uint8)]  # written in place as blocks finish

    def write(rows: slice, value: int) -> tuple[slice, slice]:
        for k, lev in enumerate(levels):
            lev[rows.start // 2**k:rows.stop // 2**k, :100 // 2**k] = value
        return rows, slice(0, 100)

    opened = [(levels, {"name": "x prediction", "scale": (0.5, 0.5), "translate": (0.0, 0.0)}, "labels")]
    run.started(resumed_blocks=0)
    run.layers_opened(opened)
    run.block_done(write(slice(0, 100), 1))
    res = viewer.layers["img" + RESULT_SUFFIX]
    qtbot.waitUntil(lambda: res.visible, timeout=5_000)
    viewer.reset_view()
    res.visible = False  # the user unticks the eye
    redraws = []
    res.events.set_data.connect(lambda e: redraws.append(e))
    run.last_refresh = 0.0  # the next block may redraw at once (REFRESH_S passed)
    run.block_done(write(slice(100, 200), 2))
    write(slice(200, 300), 1)
    run.finished(blocks_done=3)
    qtbot.wait(100)
    assert not res.visible, "the run showed a result layer the user had hidden"
    assert not redraws, "a hidden result layer was redrawn"
    res.visible = True  # ticked back: napari re-slices what is there now
    qtbot.waitUntil(lambda: (np.asarray(res._slice.image.raw) == 2).any(), timeout=5_000)


def test_predict_without_checkpoint_is_explained(widget, monkeypatch):
    _, w, _ = widget
    toasts: list[str] = []
    monkeypatch.setitem(messages._SHOW, "error", toasts.append)  # napari's notification
    w.predict()
    assert w._worker is None and w.predict_btn.isEnabled()
    assert toasts and "No checkpoint" in toasts[0]
    assert w.messages.entries[-1][1:] == ("error", toasts[0])  # kept in full in the widget's message log
    assert w.status.text().startswith("Prediction failed: No checkpoint yet")


def test_model_with_other_channels_is_refused(widget, tmp_path, qtbot, monkeypatch):
    viewer, w, _ = widget
    cfg = ModelConfig(name="unet", spatial_dims=2, in_channels=3, out_channels=2, channels=(8, 16))
    ck = save_checkpoint(tmp_path / "rgb.pt", Checkpoint(cfg, build_model(cfg).state_dict(), norm=NormConfig.uint8(3)))
    seen: list[str] = []
    monkeypatch.setitem(messages._SHOW, "error", seen.append)
    w.ckpt_edit.setText(str(ck))
    w.out_edit.setText(str(tmp_path / "x.zarr"))
    w.predict()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert seen and "channel" in seen[0]
    assert "channel" in w.status.text() and w.messages.entries[-1][1] == "error"
    assert w.predict_btn.isEnabled()


def test_cancel_leaves_a_resumable_output(widget, checkpoint, qtbot, tmp_path):
    viewer, w, _ = widget
    w.ckpt_edit.setText(str(checkpoint))
    out = tmp_path / "cancel.zarr"
    w.out_edit.setText(str(out))
    w.window_spin.setValue(32)
    w.predict()
    w.cancel()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert w.predict_btn.isEnabled()
    w.predict()  # resumes into the same output
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "done" in w.status.text()


def test_result_is_redrawn_only_for_blocks_in_view(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer(show=True)  # napari updates the drawn level and corners when it draws
    full = np.zeros((4096, 4096), np.uint8)
    layer = viewer.add_labels([full[::f, ::f] for f in (1, 2, 4)], name="img" + RESULT_SUFFIX,
                              scale=(0.5, 0.5))
    w = RunLayers(viewer, layer, tmp_path / "x.zarr")
    w.result = layer
    redrawn: list[bool] = []
    w.refresh = lambda overview=True, force=False: redrawn.append(overview)
    from napari_medseg._napari.layers import camera_of

    camera_of(viewer).center = (32.0, 32.0)  # world units: level-0 pixels around (64, 64)
    camera_of(viewer).zoom = 8.0
    layer.refresh()
    from napari_medseg._napari.layers import view_at_level0

    qtbot.waitUntil(lambda: view_at_level0(viewer, layer)[0][1].stop < 1000)
    region, zoomed_out = view_at_level0(viewer, layer)
    assert region[0].start < 64 < region[0].stop and not zoomed_out
    w.dirty = [(slice(3584, 4096), slice(3584, 4096))]  # far corner: not in view
    w.refresh_in_view()
    assert redrawn == [] and w.dirty == []
    w.dirty = [(slice(3584, 4096), slice(3584, 4096)), (slice(0, 128), slice(0, 128))]
    w.refresh_in_view()
    assert redrawn == [False]  # in view, at a fine level: the cached overview stays
    viewer.reset_view()
    layer.refresh()
    qtbot.waitUntil(lambda: view_at_level0(viewer, layer)[1])  # napari draws the coarsest level
    w.dirty = [(slice(3584, 4096), slice(3584, 4096))]
    w.refresh_in_view()
    assert redrawn == [False, True]  # zoomed out: everything is in view and the overview is re-read


def test_overview_level_is_numpy_refilled_by_the_worker(tmp_path):
    import dask.array as da
    import zarr

    levels = [zarr.create_array(str(tmp_path / str(i)), shape=(64 >> i, 64 >> i), chunks=(16, 16), dtype="uint8",
                                zarr_format=2, fill_value=0) for i in range(3)]
    lazy = [da.from_zarr(z) for z in levels]
    mask = [da.zeros((64, 64), dtype="uint8")]
    layers, overviews = pr.with_overview([(lazy, {"name": "r"}, "labels"), (mask, {"name": "m"}, "labels")])
    data = layers[0][0]
    assert len(overviews) == 1 and isinstance(data[-1], np.ndarray) and data[:2] == lazy[:2]
    assert layers[1][0] is mask  # one level: nothing to swap
    levels[2][:8, :8] = 3  # a block finishes in the output
    overviews[0].refill()  # within REFRESH_S of the last fill: not re-read yet
    assert not data[-1].any()
    overviews[0].refill(force=True)  # at the end (or after REFRESH_S): in place, the layer's array itself
    assert data[-1][:8, :8].min() == 3 and data[-1].sum() == 3 * 64


def test_overview_shows_the_finished_result_through_public_api(make_napari_viewer, qtbot, tmp_path, monkeypatch,
                                                               checkpoint):
    """A two-level result: napari draws its coarsest level (zoomed out, and the thumbnail) from an array it
    keeps; the worker refills that very array and ``layer.refresh()`` (public) draws it, no private reset."""
    import zarr

    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (600, 520), dtype=np.uint8), name="img")
    w = PredictWidget(viewer)
    w.window_spin.setValue(64)
    w.tissue_check.setChecked(False)
    w.ckpt_edit.setText(str(checkpoint))
    w.out_edit.setText(str(tmp_path / "o.zarr"))
    w.predict()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    layer = viewer.layers["img" + RESULT_SUFFIX]
    assert layer.multiscale and len(layer.data) == 2
    coarse = np.asarray(zarr.open_array(str(tmp_path / "o.zarr" / "labels" / "prediction" / "1"), mode="r"))
    assert coarse.any()
    np.testing.assert_array_equal(np.asarray(layer.data[-1]), coarse)  # refilled at the end
    qtbot.waitUntil(lambda: layer.visible, timeout=5_000)  # added hidden (napari draws no hidden layer)
    qtbot.waitUntil(lambda: np.asarray(layer.thumbnail)[..., 3].any(), timeout=5_000)  # drawn from that array


def _gui_and_torch_labels(viewer, checkpoint, out):
    """The labels the widget showed for 'img', and those of the plain torch float32 path with the same settings."""
    from napari_medseg._napari.layerdata import from_layer
    from napari_medseg.inference import open_prediction, run_predict

    layer = viewer.layers["img" + RESULT_SUFFIX]
    gui = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    run_predict(from_layer(viewer.layers["img"]), str(checkpoint), str(out), window=(64, 64), overlap=0.25,
                batch_size=4, tissue_mask=False)
    return gui, np.asarray([s for s in open_prediction(out) if s.kind == "labels"][0].levels[0])


def test_onnxruntime_backend_from_the_widget(widget, checkpoint, qtbot, tmp_path, monkeypatch):
    """'runs on: onnxruntime' converts the checkpoint once (into the cache folder) and gives the torch result."""
    viewer, w, img = widget
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))
    w.ckpt_edit.setText(str(checkpoint))
    w.out_edit.setText(str(tmp_path / "ort.zarr"))
    w.backend_combo.setCurrentText("onnxruntime")
    assert w._values()["backend"] == "onnxruntime"
    w.predict()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "done" in w.status.text(), w.status.text()
    assert list((tmp_path / "cache" / "deploy").glob("*.onnx"))
    gui, ref = _gui_and_torch_labels(viewer, checkpoint, tmp_path / "torch.zarr")
    assert (gui == ref).mean() >= 0.9999
    w2 = PredictWidget(viewer)  # the choice is remembered
    assert w2.backend_combo.currentText() == "onnxruntime"


def test_crf_refinement_from_the_widget(widget, checkpoint, qtbot, tmp_path):
    """'refine edges (CRF)' refines the output after the blocks; the layer shows the refined labels."""
    import zarr

    viewer, w, img = widget
    w.ckpt_edit.setText(str(checkpoint))
    w.out_edit.setText(str(tmp_path / "crf.zarr"))
    w.crf_check.setChecked(True)
    w.predict()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "done" in w.status.text(), w.status.text()
    g = zarr.open_group(str(tmp_path / "crf.zarr"), mode="r")
    assert g["labels/prediction"].attrs["medseg_crf"]["iterations"] == 5
    layer = viewer.layers["img" + RESULT_SUFFIX]
    gui = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    assert np.array_equal(gui, np.asarray(g["labels/prediction/0"]))
    assert PredictWidget(viewer).crf_check.isChecked()  # remembered


def test_bfloat16_from_the_widget(widget, checkpoint, qtbot, tmp_path, monkeypatch):
    """'runs on: torch-bf16' predicts in bfloat16 on the CPU: its own job, labels as float32's on nearly every
    pixel."""
    import json

    from napari_medseg.inference import run as run_module

    monkeypatch.setattr(run_module, "cpu_bf16_native", lambda: True)  # no warning on any CI machine
    viewer, w, img = widget
    w.ckpt_edit.setText(str(checkpoint))
    w.out_edit.setText(str(tmp_path / "bf16.zarr"))
    w.backend_combo.setCurrentText("torch-bf16")
    w.predict()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "done" in w.status.text(), w.status.text()
    runs = list((tmp_path / "bf16.zarr").rglob("run.json"))
    assert any(json.loads(r.read_text()).get("job", {}).get("settings", {}).get("precision") == "bf16"
               for r in runs), [r.read_text()[:300] for r in runs]
    gui, ref = _gui_and_torch_labels(viewer, checkpoint, tmp_path / "fp32.zarr")
    assert (gui == ref).mean() >= 0.99


def test_zoom_from_the_widget(widget, checkpoint, qtbot, tmp_path):
    """The widget's zoom reaches the predictor (the labels equal the headless run at that zoom) and is remembered."""
    from napari_medseg._napari.layerdata import from_layer
    from napari_medseg.inference import open_prediction, run_predict

    viewer, w, img = widget
    w.ckpt_edit.setText(str(checkpoint))
    w.out_edit.setText(str(tmp_path / "zoom.zarr"))
    w.window_spin.setValue(64)
    w.zoom_spin.setValue(2.0)
    assert w._values()["zoom"] == 2.0
    w.predict()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "done" in w.status.text(), w.status.text()
    layer = viewer.layers["img" + RESULT_SUFFIX]
    gui = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    for z in (2.0, 1.0):
        run_predict(from_layer(viewer.layers["img"]), str(checkpoint), str(tmp_path / f"h{z}.zarr"), window=(64, 64),
                    overlap=w._values()["overlap"], batch_size=4, tissue_mask=False, zoom=z)
    ref, plain = (np.asarray([s for s in open_prediction(tmp_path / f"h{z}.zarr") if s.kind == "labels"][0].levels[0])
                  for z in (2.0, 1.0))
    assert (gui == ref).mean() >= 0.9999
    assert (gui != plain).any()  # the zoom changed the result
    assert PredictWidget(viewer).zoom_spin.value() == 2.0
    w.zoom_spin.setValue(0.0)  # the lowest value reads "auto"
    assert w.zoom_spin.text() == "auto" and w._values()["zoom"] == "auto"
