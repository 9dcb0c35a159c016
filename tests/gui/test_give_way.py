"""The viewer side of core.courtesy: a camera move, a slice change and a real mouse drag on the canvas each
mark the user busy (training and prediction then pause; tests/core/test_courtesy.py), the Train and
Predict widgets hand the viewer's courtesy to their work; it is on with NAPARI_MEDSEG_GIVE_WAY=1 only."""

from __future__ import annotations

import numpy as np
from painting_gui_helpers import LEFT, NONE, _send, canvas_widget
from qtpy.QtCore import QEvent

from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.user_activity import courtesy_for


def _quiet(c) -> None:
    c._last_touch = -1e18
    assert not c.busy


def test_camera_slices_and_mouse_drags_mark_the_user_busy(make_napari_viewer, qtbot, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_GIVE_WAY", "1")
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((4, 64, 64), np.uint8))
    c = courtesy_for(viewer)
    assert courtesy_for(viewer) is c  # one per viewer
    _quiet(c)
    camera_of(viewer).zoom = camera_of(viewer).zoom * 2
    assert c.busy
    _quiet(c)
    viewer.dims.set_current_step(0, 2)
    assert c.busy
    _quiet(c)
    native = canvas_widget(viewer)
    mid = (native.width() / 2, native.height() / 2)
    _send(native, QEvent.Type.MouseMove, mid, NONE, NONE)  # hovering is not working in the view
    qtbot.wait(5)
    assert not c.busy
    _send(native, QEvent.Type.MouseButtonPress, mid, LEFT, LEFT)
    qtbot.wait(5)
    _quiet(c)
    _send(native, QEvent.Type.MouseMove, (mid[0] + 10, mid[1] + 5), NONE, LEFT)  # the drag goes on
    qtbot.wait(5)
    assert c.busy
    _send(native, QEvent.Type.MouseButtonRelease, (mid[0] + 10, mid[1] + 5), LEFT, NONE)


def test_give_way_is_off_by_default(make_napari_viewer, monkeypatch):
    monkeypatch.delenv("NAPARI_MEDSEG_GIVE_WAY", raising=False)
    viewer = make_napari_viewer()
    c = courtesy_for(viewer)
    camera_of(viewer).zoom = camera_of(viewer).zoom * 2
    assert not c.busy and c.give_way() == 0.0


def test_the_predict_widget_hands_its_work_a_courteous_cancel_flag(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The prediction's cancel flag gives way to the user (its checks are the engine's safe points) and Cancel
    still reaches it."""
    from predict_gui_helpers import make_checkpoint, make_widget

    from napari_medseg._napari.jobs import predict_job
    from napari_medseg.core.courtesy import CourteousStop

    seen = {}

    def fake_predict_and_open(*args, cancel=None, **kwargs):
        seen["cancel"] = cancel
        seen["streams"] = kwargs.get("streams")
        yield from ()

    monkeypatch.setattr(predict_job, "predict_and_open", fake_predict_and_open)
    viewer = make_napari_viewer()
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m.pt")))
    w.out_edit.setText(str(tmp_path / "o.zarr"))
    w.predict()
    assert "cancel" in seen or w._worker is not None, w.status.text()
    qtbot.waitUntil(lambda: w._worker is None, timeout=10_000)
    cancel = seen["cancel"]
    assert isinstance(cancel, CourteousStop) and cancel.courtesy is courtesy_for(viewer)
    assert seen["streams"] == 1  # in the viewer's process: one model stream (torch threads are process-wide)
    w._cancel.set()
    assert cancel.is_set()
    seen.clear()
    w.process_check.setChecked(True)  # a child process cannot pause with the view: the plain flag
    w.predict()
    qtbot.waitUntil(lambda: w._worker is None, timeout=10_000)
    assert seen["cancel"] is w._cancel
    assert seen["streams"] == "auto"  # a child process: model streams
