"""The "Stack channels" widget: open image layers stacked as the channels of one layer the Train widget takes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._napari.layerdata import from_layer
from napari_medseg._napari.widgets.stack_channels import StackChannelsWidget, stack_layers
from napari_medseg.core.errors import MedsegError


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(tmp_path / "user-data"))
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))


def _tick(widget, names):
    from qtpy.QtCore import Qt

    for i in range(widget.list.count()):
        item = widget.list.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)


def test_stack_two_volumes_into_a_czyx_layer_the_trainer_reads(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=False)
    rng = np.random.default_rng(0)
    t1 = rng.normal(300, 20, (6, 16, 20)).astype(np.float32)
    t2 = rng.integers(0, 900, (6, 16, 20)).astype(np.int16)
    scale = (2.5, 0.9, 0.9)
    meta = {"napari_medseg": {"axes": "ZYX", "unit": "millimeter", "modality": "MR"}}
    viewer.add_image(t1, name="t1", scale=scale, metadata=meta)
    viewer.add_image(t2, name="t2", scale=scale, metadata=meta)
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="photo", rgb=True)
    widget = StackChannelsWidget(viewer)
    qtbot.addWidget(widget)
    assert [widget.list.item(i).text() for i in range(widget.list.count())] == ["t1", "t2"]  # no RGB layer
    _tick(widget, ["t1"])
    widget.button.click()
    assert "at least two" in widget.status.text() and len(viewer.layers) == 3
    _tick(widget, ["t1", "t2"])
    widget.button.click()
    qtbot.waitUntil(lambda: "t1+t2" in viewer.layers)
    layer = viewer.layers["t1+t2"]
    assert layer.data.shape == (2, 6, 16, 20) and tuple(layer.scale[-3:]) == scale
    assert "2 channels" in widget.status.text()
    src = from_layer(layer)  # what the Train/Predict widgets' session reads
    assert src.axes == "CZYX" and src.n_channels == 2 and src.pixel_size == scale
    np.testing.assert_array_equal(np.asarray(src.levels[0][1]), t2.astype(np.float32))


def test_mismatched_layers_are_refused_with_a_message(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(np.zeros((16, 16), np.float32), name="ct", scale=(0.5, 0.5))
    viewer.add_image(np.zeros((16, 16), np.float32), name="pet", scale=(0.5, 0.6))
    viewer.add_image(np.zeros((12, 16), np.float32), name="small", scale=(0.5, 0.5))
    widget = StackChannelsWidget(viewer)
    qtbot.addWidget(widget)
    _tick(widget, ["ct", "pet"])
    widget.button.click()
    assert "pet: its voxel spacing" in widget.status.text() and len(viewer.layers) == 3
    with pytest.raises(MedsegError, match=r"small: its grid is \(12, 16\)"):
        stack_layers(viewer, [viewer.layers["ct"], viewer.layers["small"]])


def test_the_train_widget_trains_on_the_stacked_layer(make_napari_viewer, qtbot, tmp_path):
    """Seed-inventory D3 (c): the stacked 2-channel image is a training image like any other."""
    from napari_medseg._napari.widgets.train import TrainWidget
    from napari_medseg.models.checkpoint import load_checkpoint
    from napari_medseg.samples.multimodal import two_modality_and

    viewer = make_napari_viewer()
    x, y = two_modality_and((96, 96), seed=1)
    viewer.add_image(x[0], name="ch0", units="micrometer")
    viewer.add_image(x[1], name="ch1", units="micrometer")
    scribbles = np.zeros((96, 96), np.uint8)
    scribbles[::5][y[::5] == 0] = 1
    scribbles[(y == 1) & (np.random.default_rng(0).random(y.shape) < 0.3)] = 2
    viewer.add_labels(scribbles, name="scribbles", units="micrometer")
    layer = stack_layers(viewer, [viewer.layers["ch0"], viewer.layers["ch1"]])
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    try:
        w.image_combo.setCurrentText(layer.name)
        w.labels_combo.setCurrentText("scribbles")
        w.steps_spin.setValue(3)
        w.patch_spin.setValue(64)
        w.batch_spin.setValue(2)
        w.out_edit.setText(str(tmp_path / "run"))
        w.start()
        qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
        errors = [text for _, lv, text in w.messages.entries if lv == "error"]
        assert not errors, errors
        ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
        assert ckpt.model_config.in_channels == 2
    finally:
        w.shutdown()
