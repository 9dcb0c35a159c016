"""The Train widget's collapsed "Advanced" part: gradient checkpointing, accumulation, freezing the encoder and
batch norm reach the TrainConfig, are remembered, and open the part when they are not the defaults."""

from __future__ import annotations

import numpy as np

from napari_medseg._napari.jobs.train_job import build_config
from napari_medseg._napari.widgets.settings import save_settings
from napari_medseg._napari.widgets.train import TrainWidget
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.source import ImageSource


def _cfg(w):
    img = np.zeros((64, 64), np.uint8)
    return build_config(w._settings_values(), ImageSource([img], "YX", (1.0, 1.0), name="img"), ClassSchema(), None)


def _reopened(w, viewer):
    """The settings saved and a second widget opened on them (what the next session sees)."""
    save_settings(w.SETTINGS, w._settings_values())
    return TrainWidget(viewer)


def test_advanced_controls_reach_the_config_and_are_remembered(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    assert not w.adv_toggle.isChecked() and w.adv_box.isHidden()  # collapsed: the form stays compact
    cfg = _cfg(w)
    assert (cfg.grad_checkpoint, cfg.accumulate, cfg.freeze, cfg.freeze_bn) == (False, 1, "none", False)
    w.adv_toggle.setChecked(True)
    assert not w.adv_box.isHidden()
    w.ckpt_check.setChecked(True)
    w.accum_spin.setValue(3)
    w.freeze_enc_check.setChecked(True)
    w.freeze_bn_check.setChecked(True)
    assert "x 3 accumulated" in w.plan_label.text()
    cfg = _cfg(w)
    assert (cfg.grad_checkpoint, cfg.accumulate, cfg.freeze, cfg.freeze_bn) == (True, 3, "encoder", True)
    w2 = _reopened(w, viewer)
    assert w2.adv_toggle.isChecked() and w2.accum_spin.value() == 3 and w2.freeze_enc_check.isChecked()
    assert w2.ckpt_check.isChecked() and w2.freeze_bn_check.isChecked()
    w.shutdown()
    w2.shutdown()


def test_deep_supervision_reaches_the_config_and_is_remembered(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    assert _cfg(w).deep_supervision is False
    w.deep_check.setChecked(True)
    assert _cfg(w).deep_supervision is True
    w2 = _reopened(w, viewer)
    assert w2.deep_check.isChecked() and w2.adv_toggle.isChecked()  # not the default: the part opens
    w.shutdown()
    w2.shutdown()


def test_stain_jitter_reaches_the_config_for_rgb_and_is_refused_for_grey(make_napari_viewer, tmp_path, monkeypatch):
    import pytest

    from napari_medseg.core.errors import MedsegError

    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    assert _cfg(w).stain_jitter == 0.0 and w.stain_spin.text() == "off"
    w.stain_spin.setValue(0.05)
    rgb = ImageSource([np.zeros((64, 64, 3), np.uint8)], "YXC", (1.0, 1.0), name="slide")
    assert build_config(w._settings_values(), rgb, ClassSchema(), None).stain_jitter == 0.05
    with pytest.raises(MedsegError, match="'img' has 1 channel"):
        _cfg(w)
    w2 = _reopened(w, viewer)
    assert w2.stain_spin.value() == 0.05 and w2.adv_toggle.isChecked()
    w.shutdown()
    w2.shutdown()


def test_the_boundary_regulariser_reaches_the_config_and_is_remembered(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    assert _cfg(w).crf_weight is None and w.crf_spin.text() == "auto"  # unset: "auto" decides (off otherwise)
    w.crf_spin.setValue(0.5)
    assert _cfg(w).crf_weight == 0.5
    w2 = _reopened(w, viewer)
    assert w2.crf_spin.value() == 0.5 and w2.adv_toggle.isChecked()  # a non-default opens the part
    w.shutdown()
    w2.shutdown()


def test_fine_tuning_and_loss_controls_reach_the_config_and_are_remembered(make_napari_viewer, tmp_path,
                                                                          monkeypatch):
    """Batch-norm re-estimation, the encoder's learning rate, gradient clipping, label smoothing and class weights:
    defaults as the config's, set in the form they reach the TrainConfig, bad values are clear errors."""
    import pytest

    from napari_medseg.core.errors import MedsegError

    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    cfg = _cfg(w)
    assert (cfg.bn_reestimate, cfg.encoder_lr_scale, cfg.clip_grad, cfg.label_smoothing, cfg.class_weights) == (
        0, 1.0, 0.0, 0.0, None)
    w.freeze_bn_check.setChecked(True)
    w.bn_reest_spin.setValue(20)
    w.enc_lr_spin.setValue(0.1)
    w.clip_spin.setValue(1.0)
    w.smooth_spin.setValue(0.1)
    w.weights_edit.setText("1, 3")
    cfg = _cfg(w)
    assert (cfg.freeze_bn, cfg.bn_reestimate, cfg.encoder_lr_scale, cfg.clip_grad, cfg.label_smoothing) == (
        True, 20, 0.1, 1.0, 0.1)
    assert cfg.class_weights == (1.0, 3.0)
    w2 = _reopened(w, viewer)
    assert w2.adv_toggle.isChecked() and w2.bn_reest_spin.value() == 20 and w2.enc_lr_spin.value() == 0.1
    assert w2.clip_spin.value() == 1.0 and w2.smooth_spin.value() == 0.1 and w2.weights_edit.text() == "1, 3"
    w.weights_edit.setText("1, 2, 3")
    with pytest.raises(MedsegError, match="3 numbers for 2 classes"):
        _cfg(w)
    w.weights_edit.setText("1, heavy")
    with pytest.raises(MedsegError, match="give numbers"):
        _cfg(w)
    w.weights_edit.setText("")
    w.freeze_bn_check.setChecked(False)  # re-estimation without frozen batch norm does nothing: not passed on
    assert _cfg(w).bn_reestimate == 0
    w.freeze_enc_check.setChecked(True)  # a frozen encoder has no learning rate: the config says so
    with pytest.raises(MedsegError, match="encoder_lr_scale"):
        _cfg(w)
    w.unfreeze_spin.setValue(50)  # ... unless it is unfrozen part way, at lr x that scale
    cfg = _cfg(w)
    assert (cfg.freeze, cfg.unfreeze_at, cfg.encoder_lr_scale) == ("encoder", 0.5, 0.1)
    w.shutdown()
    w2.shutdown()


def test_object_gaps_reach_the_config_for_object_classes_only_and_are_remembered(make_napari_viewer, tmp_path,
                                                                                  monkeypatch):
    from napari_medseg.training.config import AUTO_CONTACT_WEIGHT

    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    img = ImageSource([np.zeros((64, 64), np.uint8)], "YX", (1.0, 1.0), name="img")
    nuclei = ClassSchema(("background", "nucleus")).with_objects(["nucleus"])
    # the default is the CLI's auto value, and it applies to object classes only
    assert w.contact_spin.value() == AUTO_CONTACT_WEIGHT and w.contact_spin.text() == "+ 10.0"
    assert build_config(w._settings_values(), img, nuclei, None).contact_weight == AUTO_CONTACT_WEIGHT
    assert _cfg(w).contact_weight == 0.0
    w.contact_spin.setValue(0.0)
    assert w.contact_spin.text() == "off"
    assert build_config(w._settings_values(), img, nuclei, None).contact_weight == 0.0
    w.contact_spin.setValue(20.0)
    assert build_config(w._settings_values(), img, nuclei, None).contact_weight == 20.0
    w2 = _reopened(w, viewer)
    assert w2.contact_spin.value() == 20.0 and w2.adv_toggle.isChecked()
    w.shutdown()
    w2.shutdown()


def test_a_float32_cpu_choice_where_the_cpu_trains_in_bf16(make_napari_viewer, tmp_path, monkeypatch):
    """On a CPU with native bfloat16, "cpu" trains under bf16 autocast; the device list also offers
    "cpu (float32)", which reaches the config as amp off on the CPU. Elsewhere there is nothing to choose."""
    from napari_medseg._napari.widgets import train_form
    from napari_medseg.models import devices

    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: True)
    assert train_form.available_devices()[-2:] == ["cpu", train_form.FLOAT32_CPU]
    w = TrainWidget(make_napari_viewer())
    w.device_combo.clear()
    w.device_combo.addItems(train_form.available_devices())
    w.device_combo.setCurrentText("cpu")
    assert _cfg(w).device == "cpu" and _cfg(w).amp is True
    w.device_combo.setCurrentText(train_form.FLOAT32_CPU)
    cfg = _cfg(w)
    assert cfg.device == "cpu" and cfg.amp is False
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: False)
    assert train_form.FLOAT32_CPU not in train_form.available_devices()
