"""The Train widget in a real viewer: Start -> events -> the preview layer changes -> Stop -> a checkpoint;
and each bad start gives a notification and leaves the widget usable."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._napari import train_widget as tw
from napari_medseg._napari.train_widget import PREVIEW_LAYER, STORE_CHOICE, TrainWidget


def _blobs(seed: int = 0, size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with bright discs, and sparse scribbles on it (store convention: 1 bg, 2 disc)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(60, 10, (size, size))
    truth = np.zeros((size, size), bool)
    for cy, cx in rng.integers(20, size - 20, (8, 2)):
        truth |= (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
    img[truth] += 120
    labels = np.zeros((size, size), np.uint8)
    labels[::9][~truth[::9]] = 1
    labels[truth & (rng.random((size, size)) < 0.2)] = 2
    return img.clip(0, 255).astype(np.uint8), labels


@pytest.fixture
def widget(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    img, labels = _blobs()
    viewer.add_image(img, name="img", units="micrometer")
    viewer.add_labels(labels, name="scribbles", units="micrometer")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.labels_combo.setCurrentText("scribbles")
    w.steps_spin.setValue(6)
    w.patch_spin.setValue(64)
    w.batch_spin.setValue(2)
    w.preview_every.setValue(0.5)
    w.out_edit.setText(str(tmp_path / "run"))
    yield viewer, w
    w.shutdown()


def _errors(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(tw, "show_error", lambda msg: seen.append(msg))
    return seen


def test_start_events_preview_stop_checkpoint(widget, qtbot, tmp_path):
    viewer, w = widget
    events: list[str] = []
    orig = w._on_event

    def record(ev):
        events.append(type(ev).__name__)
        orig(ev)

    w._on_event = record
    w.steps_spin.setValue(10_000)  # long: it must stop on request
    w.start()
    assert w._worker is not None and not w.start_btn.isEnabled()
    qtbot.waitUntil(lambda: PREVIEW_LAYER in viewer.layers, timeout=120_000)
    first = np.array(viewer.layers[PREVIEW_LAYER].data, copy=True)
    assert first.shape == (192, 192)  # the whole (small) image is in view
    assert tuple(viewer.layers[PREVIEW_LAYER].units) == tuple(viewer.layers["img"].units)
    n_steps = events.count("StepEvent")
    qtbot.waitUntil(lambda: events.count("StepEvent") >= n_steps + 3, timeout=120_000)
    w.stop()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "StartEvent" in events and "DoneEvent" in events
    assert events.count("PreviewEvent") >= 1
    assert w.start_btn.isEnabled() and w.resume_btn.isEnabled()
    last = w.session.last_checkpoint
    assert last is not None and last.is_file() and str(tmp_path / "run") in str(last)
    assert "stopped" in w.status.text()


def test_start_without_labels_notifies_and_stays_usable(widget, monkeypatch):
    viewer, w = widget
    errors = _errors(monkeypatch)
    viewer.layers["scribbles"].data = np.zeros((192, 192), np.uint8)
    w.start()
    assert w._worker is None and w.start_btn.isEnabled()
    assert errors and "Nothing is painted" in errors[0]


def test_labels_of_another_shape_are_refused(widget, monkeypatch):
    viewer, w = widget
    errors = _errors(monkeypatch)
    viewer.add_labels(np.ones((50, 60), np.uint8), name="small")
    w.labels_combo.setCurrentText("small")
    w.start()
    assert w._worker is None
    assert errors and "(50, 60)" in errors[0] and "(192, 192)" in errors[0]


def test_store_choice_without_store_is_explained(widget, monkeypatch):
    _, w = widget
    errors = _errors(monkeypatch)
    w.labels_combo.setCurrentText(STORE_CHOICE)
    w.start()
    assert w._worker is None and errors and "Annotate widget" in errors[0]


def test_missing_device_is_a_clear_error(widget, qtbot, monkeypatch):
    _, w = widget
    seen: list[str] = []
    monkeypatch.setattr("napari_medseg._napari.workers.show_error", lambda m: seen.append(m))
    monkeypatch.setattr(tw, "show_error", lambda m: seen.append(m))
    w.device_combo.addItem("cuda:7 (not here)")
    w.device_combo.setCurrentText("cuda:7 (not here)")
    w.start()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert seen and "cuda" in seen[0].lower()
    assert w.start_btn.isEnabled()


def test_two_starts_in_a_row_run_once(widget, qtbot, monkeypatch):
    _, w = widget
    infos: list[str] = []
    monkeypatch.setattr(tw, "show_info", lambda m: infos.append(m))
    w.steps_spin.setValue(10_000)
    w.start()
    first = w._worker
    w.start()
    assert w._worker is first and infos and "already running" in infos[0]
    w.stop()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)


def test_layer_deleted_and_labels_edited_while_training(widget, qtbot):
    viewer, w = widget
    w.steps_spin.setValue(10_000)
    w.start()
    qtbot.waitUntil(lambda: w._job is not None and w._worker is not None, timeout=30_000)
    viewer.layers["scribbles"].data[5:9, 5:9] = 2  # edited while training: picked up at the next refresh
    w._maybe_refresh_labels()
    assert w._labels_box.get() is not None
    viewer.layers.remove("scribbles")  # deleted while training: the run goes on with its snapshot
    w._maybe_refresh_labels()
    qtbot.wait(500)
    assert w._worker is not None
    w.stop()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert w.session.last_checkpoint is not None


def test_settings_are_remembered(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    assert w.semi_combo.currentData() == "none" and w.ema_check.isChecked()  # the measured defaults
    w.patch_spin.setValue(96)
    w.semi_combo.setCurrentIndex(w.semi_combo.findData("pseudo_label"))
    w.ema_check.setChecked(False)
    from napari_medseg._napari.settings import save_settings

    save_settings(w.SETTINGS, w._settings_values())
    w2 = TrainWidget(viewer)
    assert w2.patch_spin.value() == 96 and w2.semi_combo.currentData() == "pseudo_label" and not w2.ema_check.isChecked()
    from napari_medseg._napari.training_job import build_config
    from napari_medseg.io.classes import ClassSchema
    from napari_medseg.io.source import ImageSource

    img, _ = _blobs()
    cfg = build_config(w2._settings_values(), ImageSource([img], "YX", (1.0, 1.0), name="img"), ClassSchema(), None)
    assert cfg.semi == "pseudo_label" and cfg.eval_model == "student"


def test_an_older_mean_teacher_setting_does_not_turn_it_back_on(make_napari_viewer):
    from napari_medseg._napari.settings import save_settings

    save_settings(TrainWidget.SETTINGS, {"mean_teacher": True, "mt_weight": 1.0, "patch": 128})
    w = TrainWidget(make_napari_viewer())
    assert w.patch_spin.value() == 128 and w.semi_combo.currentData() == "none"


def test_preview_hook_caps_its_share_of_worker_time(monkeypatch):
    """A slow preview is not repeated until training has had (1 - share) / share of its cost."""
    import time

    import napari_medseg.inference as inference
    from napari_medseg._napari.layers import LatestValue, ViewRequest
    from napari_medseg._napari.training_job import make_preview_hook

    calls: list[float] = []

    def slow_preview(*args, **kwargs):
        calls.append(time.perf_counter())
        time.sleep(0.1)
        return "prediction"

    monkeypatch.setattr(inference, "predict_region", slow_preview)
    view = LatestValue(ViewRequest(0, (slice(0, 8), slice(0, 8))))
    hook = make_preview_hook(None, view, LatestValue({"every_s": 0.0}), {"norm": object()}, "cpu", max_share=0.25)
    assert hook(None, None, 0) == "prediction"
    assert hook(None, None, 1) is None  # right after a 0.1 s preview: training's turn (>= 0.3 s)
    time.sleep(0.35)
    assert hook(None, None, 2) == "prediction"
    assert len(calls) == 2
