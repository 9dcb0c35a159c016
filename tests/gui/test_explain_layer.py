"""The Predict widget's 'Explain view': Grad-CAM (or attention gates) of the region in view as image layers,
computed in a worker, placed on the image, replaced by the next explanation, selection left alone."""

from __future__ import annotations

import numpy as np
import pytest
from predict_gui_helpers import make_checkpoint, make_widget

from napari_medseg._napari.layerdata import medseg_meta


@pytest.fixture
def viewer(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    return make_napari_viewer()


def test_explain_view_adds_a_gradcam_layer_without_taking_the_selection(viewer, qtbot, tmp_path):
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m.pt")))
    img = viewer.layers["img"]
    viewer.layers.selection.active = img
    box = w.preview_box
    box.kind_combo.setCurrentText("gradcam")
    box.class_spin.setValue(1)
    box.explain()
    assert not box.explain_btn.isEnabled()  # while it runs
    qtbot.waitUntil(lambda: not box.running, timeout=60_000)
    layer = viewer.layers["img Grad-CAM class 1"]
    assert medseg_meta(layer)["kind"] == "explanation" and medseg_meta(layer)["read_only"]
    data = np.asarray(layer.data)
    assert data.shape == (300, 260) and data.min() >= 0 and data.max() <= 1
    assert tuple(layer.scale) == tuple(img.scale) and tuple(layer.translate) == tuple(img.translate)
    assert viewer.layers.selection.active is img  # shown, not selected
    assert "Grad-CAM of class 1" in w.status.text() and box.explain_btn.isEnabled()
    box.explain()  # again: the same layer, new data
    qtbot.waitUntil(lambda: not box.running, timeout=60_000)
    assert [lay.name for lay in viewer.layers].count("img Grad-CAM class 1") == 1


def test_explain_view_says_why_it_cannot(viewer, qtbot, tmp_path):
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(make_checkpoint(tmp_path / "m.pt")))
    box = w.preview_box
    box.kind_combo.setCurrentText("attention")  # a plain U-Net has no attention gates
    box.explain()
    qtbot.waitUntil(lambda: not box.running, timeout=60_000)
    assert w.status.text().startswith("Explanation failed: this model has no attention gates")
    assert [lay.name for lay in viewer.layers] == ["img"]
    box.kind_combo.setCurrentText("gradcam")
    box.class_spin.setValue(9)
    box.explain()
    qtbot.waitUntil(lambda: not box.running, timeout=60_000)
    assert "is not a channel of this model" in w.status.text()


def test_explain_view_shows_a_transformers_attention(viewer, qtbot, tmp_path):
    """The kind list offers every kind of the engine; 'transformer' on a UNETR gives one named layer in [0, 1]."""
    import torch

    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint
    from napari_medseg.models.explain_kinds import KINDS

    cfg = ModelConfig(name="unetr", in_channels=1, out_channels=3, channels=(4,), feature_size=12, depths=(2,),
                      num_heads=(3,))
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "unetr.pt", Checkpoint(cfg, build_model(cfg).state_dict(), norm=NormConfig.uint8(1),
                                                           classes=ClassSchema(names=("background", "a", "b"))))
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(ck))
    box = w.preview_box
    assert [box.kind_combo.itemText(i) for i in range(box.kind_combo.count())] == list(KINDS)
    box.kind_combo.setCurrentText("transformer")
    box.explain()
    qtbot.waitUntil(lambda: not box.running, timeout=60_000)
    layer = viewer.layers["img transformer attention"]
    data = np.asarray(layer.data)
    assert data.shape == (300, 260) and data.min() >= 0 and data.max() <= 1 and data.max() > data.min()
    assert "the transformer's attention" in w.status.text()
    box.kind_combo.setCurrentText("attention")  # a UNETR has no attention gates: said, with what it has
    box.explain()
    qtbot.waitUntil(lambda: not box.running, timeout=60_000)
    assert "Explanation failed" in w.status.text() and "transformer" in w.status.text()
