"""The Train widget in a real viewer: Start -> events -> the preview layer changes -> Stop -> a checkpoint;
each bad start gives a message (kept in the widget's message area) and leaves the widget usable; the status,
the plot and Resume show the run's progress; 3D plans its patch from the volume and the memory."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from napari_medseg._napari.widgets.settings import settings_path
from napari_medseg._napari.widgets.train import PREVIEW_LAYER, STORE_CHOICE, TrainWidget
from napari_medseg.training import planning


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


def _said(w, level: str = "error") -> list[str]:
    """What the widget said at ``level``, oldest first (its message area keeps every message in full)."""
    return [text for _, lv, text in w.messages.entries if lv == level]


def _errors(w) -> list[str]:
    return _said(w, "error")


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
    assert viewer.layers[PREVIEW_LAYER].opacity == 0.5  # semi-transparent over the image
    n_steps = events.count("StepEvent")
    qtbot.waitUntil(lambda: events.count("StepEvent") >= n_steps + 3, timeout=120_000)
    w.stop()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert "StartEvent" in events and "DoneEvent" in events
    assert events.count("PreviewEvent") >= 1
    # the default ("auto") says what it chose for the unpainted pixels, once (not at every round)
    said = [t for t in _said(w, "info") if t.startswith("unpainted pixels: auto: ")]
    assert len(said) == 1 and w.semi_combo.currentData() == "auto"
    assert w.start_btn.isEnabled() and w.resume_btn.isEnabled()
    last = w.session.last_checkpoint
    assert last is not None and last.is_file() and str(tmp_path / "run") in str(last)
    assert "stopped" in w.status.text()


def test_start_without_labels_notifies_and_stays_usable(widget):
    viewer, w = widget
    viewer.layers["scribbles"].data = np.zeros((192, 192), np.uint8)
    w.start()
    assert w._worker is None and w.start_btn.isEnabled()
    errors = _errors(w)
    assert errors and "Nothing is painted" in errors[0]
    assert "Nothing is painted" in w.messages.toPlainText()  # kept in full in the widget, not only a toast


def test_labels_of_another_shape_are_refused(widget):
    viewer, w = widget
    viewer.add_labels(np.ones((50, 60), np.uint8), name="small")
    w.labels_combo.setCurrentText("small")
    w.start()
    assert w._worker is None
    errors = _errors(w)
    assert errors and "(50, 60)" in errors[0] and "(192, 192)" in errors[0]


def test_store_choice_without_store_is_explained(widget):
    _, w = widget
    w.labels_combo.setCurrentText(STORE_CHOICE)
    w.start()
    errors = _errors(w)
    assert w._worker is None and errors and "Annotate widget" in errors[0]


def test_missing_device_is_a_clear_error(widget, qtbot):
    _, w = widget
    w.device_combo.addItem("cuda:7 (not here)")
    w.device_combo.setCurrentText("cuda:7 (not here)")
    w.start()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    errors = _errors(w)
    assert errors and "cuda" in errors[0].lower()
    assert w.start_btn.isEnabled()


def test_two_starts_in_a_row_run_once(widget, qtbot):
    _, w = widget
    w.steps_spin.setValue(10_000)
    w.start()
    first = w._worker
    w.start()
    infos = _said(w, "info")
    assert w._worker is first and infos and "already running" in infos[-1]
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
    assert w.semi_combo.currentData() == "auto" and w.ema_check.isChecked()  # the measured defaults
    w.patch_spin.setValue(96)
    w.semi_combo.setCurrentIndex(w.semi_combo.findData("pseudo_label"))
    w.ema_check.setChecked(False)
    from napari_medseg._napari.widgets.settings import save_settings

    save_settings(w.SETTINGS, w._settings_values())
    w2 = TrainWidget(viewer)
    assert w2.patch_spin.value() == 96 and w2.semi_combo.currentData() == "pseudo_label" and not w2.ema_check.isChecked()
    from napari_medseg._napari.jobs.train_job import build_config
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.core.source import ImageSource

    img, _ = _blobs()
    cfg = build_config(w2._settings_values(), ImageSource([img], "YX", (1.0, 1.0), name="img"), ClassSchema(), None)
    assert cfg.semi == "pseudo_label" and cfg.eval_model == "student"


def test_an_older_mean_teacher_setting_does_not_turn_it_back_on(make_napari_viewer):
    from napari_medseg._napari.widgets.settings import save_settings

    save_settings(TrainWidget.SETTINGS, {"mean_teacher": True, "mt_weight": 1.0, "patch": 128})
    w = TrainWidget(make_napari_viewer())
    assert w.patch_spin.value() == 128 and w.semi_combo.currentData() == "auto"  # the default, not Mean Teacher


def test_preview_hook_caps_its_share_of_worker_time(monkeypatch):
    """A slow preview is not repeated until training has had (1 - share) / share of its cost."""
    import time

    import napari_medseg.inference as inference
    from napari_medseg._napari.jobs.train_job import make_preview_hook
    from napari_medseg._napari.layers import LatestValue, ViewRequest

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


# -- progress feedback: status, plot, rounds ---------------------------------------------------------
def _record_status(w) -> list[str]:
    """The status line after each training step."""
    seen: list[str] = []
    orig = w._on_event

    def record(ev):
        orig(ev)
        if type(ev).__name__ == "StepEvent":
            seen.append(w.status.text())

    w._on_event = record
    return seen


def test_status_shows_step_of_total_rate_and_eta(widget, qtbot):
    _, w = widget
    texts = _record_status(w)
    w.start()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert texts[0].startswith("step 1 / 6")
    later = texts[-2]  # a rate needs two steps; the last step has no time left
    assert re.match(r"step 5 / 6 · [0-9.e+]+ steps/s · ETA \d+ s · loss \d", later), later


def test_plot_axes_are_labelled_and_the_legend_covers_no_curve(widget, qtbot):
    _, w = widget
    w.start()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    w.plot.resize(360, 200)
    w.plot.grab()  # paints
    lay = w.plot.layout_for(w.plot.width(), w.plot.height())
    assert {text for _, text, _ in lay.axis_labels} == {"step", "loss", "Dice"}
    assert [name for _, name in lay.legend][:1] == ["loss"]
    assert not lay.legend_rect.intersects(lay.plot)  # the legend sits above the frame
    for rect, *_ in lay.axis_labels:  # axis titles outside the frame too
        assert not rect.intersects(lay.data)
    assert lay.plot.contains(lay.data)


def test_validation_comes_early_enough_to_be_a_curve(widget, qtbot):
    viewer, w = widget
    w.steps_spin.setValue(12)  # validation every 100 steps, and early at 10: plus the end
    dice: list[int] = []
    orig = w._on_event

    def record(ev):
        orig(ev)
        if type(ev).__name__ == "ValidationEvent":
            dice.append(ev.step)

    w._on_event = record
    w.start()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert dice == [10, 12] and [x for x, _ in w.plot.points("val_dice")] == [10, 12]
    # the last validation's scores beside the plot: Dice, IoU, sensitivity, specificity on the held-out paint
    text = w.scores.text()
    assert text.startswith("last validation, step 12: Dice ") and "IoU" in text and "specificity" in text


def test_resume_continues_the_step_count_and_keeps_the_plot(widget, qtbot):
    _, w = widget
    w.steps_spin.setValue(4)
    w.start()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    first = w.plot.points("loss")
    assert [x for x, _ in first] == [1, 2, 3, 4] and w.resume_btn.isEnabled()
    texts = _record_status(w)
    w.start(resume=True)
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    pts = w.plot.points("loss")
    assert pts[:4] == first  # the first round stays on the plot
    assert [x for x, _ in pts] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert w.plot.markers == [(4.0, "round 2")]  # where the second round started
    assert texts[0].startswith("step 5 / 8") and "at step 8" in w.status.text()
    w.start()  # a new Start is a new run: a new plot
    assert w.plot.points("loss") == [] and w.plot.markers == []
    w.stop()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)


# -- 3D: planned defaults, the memory check, settings that crashed ---------------------------------------
def _volume(shape=(48, 160, 160), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume with bright balls, scribbles on three slices (1 background, 2 ball)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = np.zeros(shape, bool)
    for cz, cy, cx in rng.integers([8, 30, 30], [shape[0] - 8, shape[1] - 30, shape[2] - 30], (6, 3)):
        truth |= ((zz - cz) * 2.5) ** 2 + ((yy - cy) * 1.5) ** 2 + ((xx - cx) * 1.5) ** 2 < 20**2
    img = (rng.normal(40, 12, shape) + 300 * truth).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    for z in (12, 24, 36):
        labels[z, ::5, ::5] = 1 + truth[z, ::5, ::5]
    return img, labels


@pytest.fixture
def widget3d(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    img, labels = _volume()
    viewer.add_image(img, name="ct", scale=(2.5, 1.5, 1.5))
    viewer.add_labels(labels, name="scribbles", scale=(2.5, 1.5, 1.5))
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.labels_combo.setCurrentText("scribbles")
    w.steps_spin.setValue(10_000)
    w.preview_check.setChecked(False)
    w.out_edit.setText(str(tmp_path / "run"))
    yield viewer, w
    w.shutdown()


def _free(monkeypatch, gib: float) -> None:
    """Pretend the machine has ``gib`` GiB of RAM free (what the plan and the memory check read)."""
    monkeypatch.setattr(planning, "available_memory",
                        lambda device_type="cpu": planning.MemoryEstimate(host=int(gib * planning.GIB), device=0))


def test_plan_line_counts_a_new_model_off_the_main_thread(widget3d, monkeypatch, qtbot):
    """The first count of a model config's activations runs passes of the network (0.1-1.2 s): the plan line
    says it is counting, a worker counts, and the line then gives the memory; the main thread never counts."""
    import threading

    _, w = widget3d
    _free(monkeypatch, 32)
    w.dims_combo.setCurrentText("3D")
    counted_on: list[bool] = []
    real = planning._float_bytes_per_voxel

    def spy(*a, **k):
        counted_on.append(threading.current_thread() is threading.main_thread())
        return real(*a, **k)

    monkeypatch.setattr(planning, "_float_bytes_per_voxel", spy)
    monkeypatch.setattr(planning, "_COUNTS", {})  # nothing counted yet
    w.arch_combo.setCurrentText("attention_unet")
    assert "counting the memory" in w.plan_label.text()
    qtbot.waitUntil(lambda: "GB" in w.plan_label.text(), timeout=30_000)
    assert counted_on and not any(counted_on)  # counted, and only by the worker
    assert "runs as" in w.plan_label.text() and "counting" not in w.plan_label.text()


def test_choosing_3d_plans_patch_and_batch_from_the_volume(widget3d, monkeypatch):
    _, w = widget3d
    _free(monkeypatch, 32)
    assert (w.patch_spin.value(), w.batch_spin.value()) == (256, 4)  # the 2D defaults
    w.dims_combo.setCurrentText("3D")
    # 128 in-plane; Z spans the same 192 mm in 2.5 mm slices (80), at most the volume's 48
    assert (w.patch_spin.value(), w.batch_spin.value()) == (128, 2)
    assert "runs as 48 x 128 x 128 x batch 2" in w.plan_label.text() and "GB" in w.plan_label.text()
    assert "3D defaults: patch 48 x 128 x 128, batch 2" in _said(w, "info")[-1]
    _free(monkeypatch, 2.2)  # less memory free: a smaller patch
    w.dims_combo.setCurrentText("2D")
    assert (w.patch_spin.value(), w.batch_spin.value()) == (256, 4)
    w.dims_combo.setCurrentText("3D")
    assert w.patch_spin.value() < 128 and w.batch_spin.value() == 2


def test_start_fits_a_3d_run_to_the_memory_and_says_what_it_changed(widget3d, qtbot, monkeypatch):
    _, w = widget3d
    w.dims_combo.setCurrentText("3D")
    w.patch_spin.setValue(256)  # the walkthrough's settings: patch 256, batch 4 (48 x 160 x 160 on this volume)
    w.batch_spin.setValue(4)
    _free(monkeypatch, 3.0)
    w.start()
    assert w._worker is not None
    warn = _said(w, "warning")
    assert warn and "48 x 160 x 160 with batch 4 needs about" in warn[-1] and "3.0 GB of RAM free" in warn[-1]
    cfg = w._job["cfg"]
    assert cfg.batch_size == 2 and w.batch_spin.value() == 2
    assert cfg.patch_size == (48, w.patch_spin.value(), w.patch_spin.value()) and w.patch_spin.value() < 160
    assert f"patch 48 x {w.patch_spin.value()} x {w.patch_spin.value()} and batch 2" in warn[-1]
    assert planning.estimate_memory(cfg, cfg.model, cfg.patch_size, 1, 2).total <= (3.0 - 1) * 0.75 * planning.GIB
    qtbot.waitUntil(lambda: bool(w.plot.points("loss")), timeout=120_000)  # the adapted 3D run trains
    w.stop()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert "stopped" in w.status.text()


def test_start_refuses_a_run_that_cannot_fit(widget3d, monkeypatch):
    _, w = widget3d
    w.dims_combo.setCurrentText("3D")
    _free(monkeypatch, 1.2)
    w.start()
    assert w._worker is None and w.start_btn.isEnabled()
    err = _errors(w)
    assert err and err[-1].startswith("Training not started") and "1.2 GB of RAM free" in err[-1]


def test_settings_that_never_trained_a_step_are_not_loaded_again(widget, qtbot, tmp_path):
    viewer, w = widget
    w.patch_spin.setValue(96)
    w.steps_spin.setValue(10_000)
    w.start()
    after_start = tmp_path / "after_start.json"  # the file as a napari killed right after Start leaves it
    shutil.copy(settings_path(), after_start)
    qtbot.waitUntil(lambda: bool(w.plot.points("loss")), timeout=120_000)
    w.stop()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    trained = TrainWidget(viewer)  # a step finished: the settings are kept
    assert trained.patch_spin.value() == 96 and not _said(trained, "warning")

    shutil.copy(after_start, settings_path())  # the next session after the kill
    again = TrainWidget(viewer)
    assert again.patch_spin.value() == 256  # not the settings that never trained
    warn = _said(again, "warning")
    assert warn and "did not finish a single step" in warn[0] and "patch 96" in warn[0]
    assert not _said(TrainWidget(viewer), "warning")  # said once


def test_a_3d_step_far_above_the_default_is_called_slow():
    from napari_medseg._napari.jobs.train_job import model_config, slow_step_note
    from napari_medseg.core.source import ImageSource
    from napari_medseg.training import TrainConfig

    ct = ImageSource([np.zeros((64, 256, 256), np.int16)], "ZYX", (2.5, 1.5, 1.5), name="ct")
    mcfg = model_config({"dims": "3D"}, 1, 6)
    walkthrough = TrainConfig(model=mcfg, patch_size=(64, 256, 256), batch_size=4)
    note = slow_step_note(walkthrough, ct, "cpu")
    assert note and "16.8 M voxels (4 patches of 64 x 256 x 256), 8x the planned" in note
    assert "patch 64 x 128 x 128, batch 2" in note and "set patch size 128 and batch 2" in note
    assert slow_step_note(walkthrough.replace(patch_size=(64, 128, 128), batch_size=2), ct, "cpu") is None
    assert slow_step_note(TrainConfig(model=model_config({"dims": "2D"}), patch_size=(1024,)), ct, "cpu") is None


def test_a_large_3d_view_is_previewed_window_by_window(monkeypatch):
    import napari_medseg.inference as inference
    from napari_medseg._napari.jobs.train_job import make_preview_hook
    from napari_medseg._napari.layers import LatestValue, ViewRequest

    windows: list = []
    monkeypatch.setattr(inference, "predict_region", lambda *a, **k: windows.append(k["window"]) or "prediction")
    view = LatestValue(ViewRequest(0, (slice(0, 32), slice(0, 512), slice(0, 512))))
    hook = make_preview_hook(None, view, LatestValue({"every_s": 0.0}), {"norm": object()}, "cpu", max_share=1.0,
                             window=(32, 64, 64))
    hook(None, None, 0)
    view.set(ViewRequest(0, (slice(0, 32), slice(0, 96), slice(0, 96))))  # small: one pass
    hook(None, None, 1)
    assert windows == [(32, 64, 64), None]


def test_distil_for_deployment_trains_a_light_student_from_the_trained_model(widget, qtbot, tmp_path):
    from napari_medseg.models import load_checkpoint

    viewer, w = widget
    assert not w.distil_btn.isEnabled()  # nothing trained yet
    w.start()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    teacher = w._trained_checkpoint()
    assert teacher is not None and w.distil_btn.isEnabled()
    w.out_edit.setText(str(tmp_path / "student"))
    w.distil_btn.click()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert not _errors(w), _errors(w)
    ck = load_checkpoint(tmp_path / "student" / "last.pt")
    assert ck.model_config.name == "light_unet"
    assert ck.meta["train_config"]["distill_from"] == str(teacher)
    assert w.arch_combo.currentText() == "unet"  # the form is unchanged
    assert w._trained_checkpoint() == teacher  # the session's model is still the trained one
    assert w.session.distilled_checkpoint is not None and w.session.distilled_checkpoint.parent == tmp_path / "student"
    w.semi_combo.setCurrentIndex(w.semi_combo.findData("pseudo_label"))
    assert w.semi_combo.currentData() == "pseudo_label"
    w.out_edit.setText(str(tmp_path / "student2"))
    w.distil_btn.click()  # a semi-supervised form setting does not stop distillation
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert not _errors(w), _errors(w)


def test_autos_choice_is_said_when_it_changes_between_rounds(widget):
    """Two of "auto"'s choices share semi="none" (labels only; labels + the gated CRF): the message log tells
    them apart by the StartEvent's data, and a round that chose as the last one says nothing."""
    from napari_medseg.training.events import StartEvent

    _, w = widget
    w._semi_said = None  # as start() leaves it

    def start(semi: str, crf: float, reason: str) -> None:
        w._on_event(StartEvent(device="cpu", model_summary="m", n_labelled=1, n_unlabelled=0, semi=semi,
                               semi_reason=reason, crf_weight=crf))

    start("pseudo_label", 0.0, "auto: pseudo-labels (few patches)")
    start("pseudo_label", 0.0, "auto: pseudo-labels (few patches, other numbers)")
    start("none", 1.0, "auto: labels + boundary regulariser (gated CRF, weight 1: wide)")
    start("none", 0.0, "auto: labels only (fully labelled)")
    start("none", 0.0, "")  # not chosen by "auto": nothing to say
    said = [t.removeprefix("unpainted pixels: ") for t in _said(w, "info") if t.startswith("unpainted pixels: ")]
    assert said == ["auto: pseudo-labels (few patches)",
                    "auto: labels + boundary regulariser (gated CRF, weight 1: wide)",
                    "auto: labels only (fully labelled)"]


def test_the_separation_weight_is_said_at_start(widget):
    """With object classes a run weighs the pixels between close objects: the message log says by how much,
    once while it stays the same, and nothing when a run uses none."""
    from napari_medseg.training.events import StartEvent

    _, w = widget
    w._contact_said = 0.0  # as start() leaves it
    for weight in (0.0, 10.0, 10.0, 5.0):
        w._on_event(StartEvent(device="cpu", model_summary="m", n_labelled=1, n_unlabelled=0, contact_weight=weight))
    said = [t for t in _said(w, "info") if t.startswith("objects: ")]
    assert said == ["objects: the pixels between close objects weigh 11x in the loss ('object gaps', Advanced)",
                    "objects: the pixels between close objects weigh 6x in the loss ('object gaps', Advanced)"]
