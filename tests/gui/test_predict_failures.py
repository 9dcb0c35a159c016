"""The Predict widget after a failure (issue: 'predicting into ...zarr' forever, an empty result layer left
behind): whatever fails, at start, in the worker or as an engine event, the widget is idle again with the
Predict button usable, the status line says what failed in one sentence, the message log keeps the whole
message, and no layer of the failed run is left on the canvas. On the real widget, with real failures: a
checkpoint file that is not one, a 3D checkpoint on a 2D image, a chunk of the image that does not decode."""

from __future__ import annotations

import numpy as np
import pytest
from predict_gui_helpers import (
    assert_idle,
    assert_one_sentence,
    corrupt_zarr_levels,
    make_checkpoint,
    make_widget,
    wait_idle,
)

from napari_medseg._napari.jobs import predict_job as predict_run
from napari_medseg._napari.jobs.predict_job import RESULT_SUFFIX
from napari_medseg._napari.widgets import predict as predict_widget


@pytest.fixture
def viewer(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    return make_napari_viewer()


def _inserted(viewer) -> list[str]:
    names: list[str] = []
    viewer.layers.events.inserted.connect(lambda e: names.append(e.value.name))
    return names


def test_bad_checkpoint_file(viewer, qtbot, tmp_path):
    w = make_widget(viewer)
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"this is no checkpoint" * 20)
    w.ckpt_edit.setText(str(bad))
    w.out_edit.setText(str(tmp_path / "out.zarr"))
    w.predict()
    wait_idle(qtbot, w)
    assert_idle(w)
    assert_one_sentence(w.status.text())
    assert "is not a safe napari-medseg checkpoint" in w.status.text()
    at, level, text = w.messages.entries[-1]
    assert level == "error" and "Nothing in it was run" in text  # the whole message, in the log
    assert [lay.name for lay in viewer.layers] == ["img"]
    assert not (tmp_path / "out.zarr").exists()


def test_3d_checkpoint_on_a_2d_image(viewer, qtbot, tmp_path):
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m3d.pt", spatial_dims=3)))
    w.out_edit.setText(str(tmp_path / "out.zarr"))
    w.predict()
    wait_idle(qtbot, w)
    assert_idle(w)
    assert w.status.text() == "Prediction failed: a 3D model cannot predict a 2D image; use a 2D model."
    assert [lay.name for lay in viewer.layers] == ["img"]


@pytest.mark.parametrize("in_process", [False, True], ids=["thread", "child-process"])
def test_corrupt_chunk_of_the_image(viewer, qtbot, tmp_path, in_process):
    """The first block is predicted, the second holds a chunk that does not decode: the result layer shown
    for the first block goes again; ticking 'predict around unreadable tiles' then predicts the image."""
    levels = corrupt_zarr_levels(tmp_path / "img.zarr")
    w = make_widget(viewer, levels, multiscale=True)
    w.process_check.setChecked(in_process)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m.pt")))
    out = tmp_path / "out.zarr"
    w.out_edit.setText(str(out))
    added = _inserted(viewer)
    w.predict()
    wait_idle(qtbot, w, 240_000)
    assert_idle(w)
    assert_one_sentence(w.status.text())
    assert "could not be decoded" in w.status.text() and "y=64:128, x=1600:1664" in w.status.text()
    assert "on_corrupt" not in w.status.text()  # the API's way around it is no use in the widget
    texts = [t for _, _, t in w.messages.entries]
    assert any("predict around unreadable tiles" in t for t in texts)
    assert "img" + RESULT_SUFFIX not in viewer.layers and [lay.name for lay in viewer.layers] == ["img"]
    assert added == ["img" + RESULT_SUFFIX]  # the first block's result was shown, and removed again
    assert any("1 finished block is kept" in t for t in texts)

    w.skip_check.setChecked(True)  # the widget's way around it
    w.predict()
    wait_idle(qtbot, w, 240_000)
    assert_idle(w)
    assert w.status.text().startswith("done"), w.status.text()
    assert any("y=64:128, x=1600:1664" in t for lv, t in ((e[1], e[2]) for e in w.messages.entries) if lv == "warning")
    assert [lay.name for lay in viewer.layers] == ["img", "img" + RESULT_SUFFIX]


def test_engine_event_reporting_failure(viewer, qtbot, tmp_path, monkeypatch):
    """An engine that reports a failure as an event (``PredictFailed``, as ``predict_many`` does) and
    ends without raising: the same as a raised one."""
    from napari_medseg.inference import PredictFailed

    real = predict_run.predict_and_open

    def failing(source, model, out, **kw):
        gen = real(source, model, out, **kw)
        try:
            for ev in gen:
                yield ev
                if type(ev).__name__ == "BlockDone":
                    yield PredictFailed(source="img", out=out, message="the disk went away")
                    return
        finally:
            gen.close()

    monkeypatch.setattr(predict_run, "predict_and_open", failing)
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m.pt")))
    w.out_edit.setText(str(tmp_path / "out.zarr"))
    added = _inserted(viewer)
    w.predict()
    wait_idle(qtbot, w)
    assert_idle(w)
    assert w.status.text() == "Prediction failed: img: the disk went away."
    assert added == ["img" + RESULT_SUFFIX]  # shown with its first block...
    assert [lay.name for lay in viewer.layers] == ["img"]  # ...and gone with the failure
    assert w.messages.entries[-2][1:] == ("error", "img: the disk went away")


def test_failure_at_start_leaves_the_widget_idle(viewer, qtbot, tmp_path, monkeypatch):
    """Refused before any worker exists (an image the engine cannot take), and an unexpected error while
    starting the worker: the widget says so and stays usable; an earlier result stays on the canvas."""
    w = make_widget(viewer)
    viewer.add_image(np.zeros((2, 2, 8, 8, 8), np.uint8), name="5d")
    w.image_combo.setCurrentText("5d")
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m.pt")))
    w.predict()
    assert_idle(w)
    assert_one_sentence(w.status.text())
    assert "5 dimensions" in w.status.text()

    w.image_combo.setCurrentText("img")
    w.out_edit.setText(str(tmp_path / "out.zarr"))
    w.predict()
    wait_idle(qtbot, w)
    assert w.status.text().startswith("done")

    def broken(*a, **k):
        raise RuntimeError("no thread left")

    monkeypatch.setattr(predict_widget, "start_generator_worker", broken)
    w.predict()
    assert_idle(w)
    assert w.status.text() == "Prediction failed: RuntimeError: no thread left (see the terminal for details; " \
                              "the widget is ready for another try)."
    assert "img" + RESULT_SUFFIX in viewer.layers  # the earlier run's result is not this run's to remove
