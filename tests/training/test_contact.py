"""Separation weights (training/contact.py): the band between two close objects weighs more in the
cross-entropy, isolated objects and unpainted pixels do not, and a run refuses them without object classes."""

import numpy as np
import pytest
import torch

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.models.config import ModelConfig
from napari_medseg.training import TrainConfig, TrainingData, TrainingItem, run_training
from napari_medseg.training.config import AUTO_CONTACT_WEIGHT
from napari_medseg.training.contact import ContactWeights
from napari_medseg.training.events import StartEvent
from napari_medseg.training.loop import train
from napari_medseg.training.losses import SparseSegLoss

NUC = ClassSchema(("background", "nucleus")).with_objects(["nucleus"])  # store: 1 bg, 2 nucleus, 3 boundary


def _two_nuclei(shape=(20, 30), gap_col=13):
    """Store values: two 6 x 6 interiors (2) in 2-px rims (3), a one-pixel background column between the rims."""
    s = np.ones(shape, np.uint8)
    s[5:15, gap_col - 10:gap_col] = 3
    s[7:13, gap_col - 8:gap_col - 2] = 2
    s[5:15, gap_col + 1:gap_col + 11] = 3
    s[7:13, gap_col + 3:gap_col + 9] = 2
    return s


def test_the_band_between_two_objects_is_weighted_and_nothing_else():
    s = _two_nuclei()
    cw = ContactWeights([2], weight=10.0, radius=5)
    c = cw.contact(torch.from_numpy(s[None]))[0].numpy()
    # along the middle row: the two rims (11, 12 and 14, 15) and the gap (13), not the interiors' far sides
    assert np.flatnonzero(c[10]).tolist() == [11, 12, 13, 14, 15]
    assert not c[:, :3].any() and not c[:, 26:].any()
    w = cw(torch.from_numpy(s[None]))[0].numpy()
    assert set(np.unique(w).tolist()) == {1.0, 11.0}
    # a smaller radius reaches the gap only
    assert np.flatnonzero(ContactWeights([2], 10.0, 4).contact(torch.from_numpy(s[None]))[0, 10].numpy()).tolist() \
        == [12, 13, 14]


def test_isolated_objects_unpainted_pixels_and_other_patches_add_nothing():
    s = _two_nuclei()
    lone = s.copy()
    lone[:, 14:] = 1  # the right object gone
    cw = ContactWeights([2], 10.0, 5)
    assert not cw.contact(torch.from_numpy(lone[None])).any()
    # the right object in the *next* patch of the batch, at the same place: patches are separate images
    right = s.copy()
    right[:, :14] = 1
    assert not cw.contact(torch.from_numpy(np.stack([lone, right]))).any()
    # unpainted (0) pixels are not objects, whatever lies around them
    empty = np.zeros_like(s)
    assert not cw.contact(torch.from_numpy(empty[None])).any()


def test_volumes_are_weighted_in_3d():
    s = np.ones((9, 9, 20), np.uint8)
    s[2:7, 2:7, 2:8] = 2
    s[2:7, 2:7, 11:17] = 2  # three voxels of background between them
    c = ContactWeights([2], 1.0, 3).contact(torch.from_numpy(s[None]))[0].numpy()
    assert np.flatnonzero(c[4, 4]).tolist() == [8, 9, 10]
    with pytest.raises(MedsegError, match="2D or 3D"):
        ContactWeights([2], 1.0, 2).contact(torch.ones(1, 4, dtype=torch.uint8))


def test_bad_settings_are_refused():
    with pytest.raises(MedsegError, match="no class is an object class"):
        ContactWeights([], 10.0, 5)
    with pytest.raises(MedsegError, match="contact_radius"):
        ContactWeights([2], 10.0, 0)
    with pytest.raises(MedsegError, match="contact_weight must be"):
        ContactWeights([2], float("nan"), 5)
    with pytest.raises(MedsegError, match="contact_weight must be"):
        TrainConfig(contact_weight=-1.0)
    with pytest.raises(MedsegError, match="contact_weight must be"):
        TrainConfig(contact_weight=float("nan"))
    with pytest.raises(MedsegError, match="focal"):
        TrainConfig(contact_weight=5.0, loss="focal_dice")
    # unset (auto): on with object classes and a cross-entropy, off otherwise; 0 is off, a value is kept
    auto = TrainConfig()
    assert auto.contact_weight is None
    assert (auto.contact_for(True), auto.contact_for(False)) == (AUTO_CONTACT_WEIGHT, 0.0)
    assert TrainConfig(loss="focal_dice").contact_for(True) == 0.0
    assert TrainConfig(contact_weight=0.0).contact_for(True) == 0.0
    assert TrainConfig(contact_weight=3.0).contact_for(False) == 3.0
    assert TrainConfig.from_dict({"contact_weight": None}).contact_weight is None


def test_pixel_weights_give_a_weighted_mean_of_the_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    store = torch.randint(0, 4, (2, 16, 16), generator=g)  # 0 = unpainted
    loss = SparseSegLoss("ce", class_weights=[1.0, 2.0, 3.0], label_smoothing=0.1)
    ones = torch.ones(2, 16, 16)
    torch.testing.assert_close(loss(logits, store, ones), loss(logits, store))  # weights of 1 change nothing
    w = 1.0 + 4.0 * (torch.rand(2, 16, 16, generator=g) > 0.7)
    plain = SparseSegLoss("ce")
    ce = torch.nn.functional.cross_entropy(logits, store.long() - 1, ignore_index=-1, reduction="none")
    painted = (store > 0).float()
    torch.testing.assert_close(plain(logits, store, w), (ce * w).sum() / (w * painted).sum())
    assert not torch.isclose(plain(logits, store, w), plain(logits, store))
    with pytest.raises(ValueError, match="focal"):
        SparseSegLoss("focal_dice")(logits, store, w)
    # deep supervision passes the same weights to every head
    from napari_medseg.training.boundary import DeepSupervision

    heads = [logits, logits * 0.5]
    deep = DeepSupervision(plain)(heads, store, w)
    want = sum(k * plain(h, store, w) for k, h in zip(DeepSupervision.weights(2), heads))
    torch.testing.assert_close(deep, want)
    assert not torch.isclose(deep, DeepSupervision(plain)(heads, store))


def _item(paint):
    img = (paint > 1).astype(np.uint8) * 100 + 50
    return TrainingItem(ImageSource([img], "YX", (1.0, 1.0), name="d"), paint, None, name="d")


def test_a_run_uses_the_weights_and_refuses_them_without_objects(tmp_path, monkeypatch):
    paint = np.ones((48, 48), np.uint8)
    paint[8:22, 8:22] = 2
    paint[8:22, 24:38] = 2  # two nuclei two pixels apart
    cfg = TrainConfig(model=ModelConfig(name="unet", spatial_dims=2, channels=(8, 16), num_res_units=1),
                      patch_size=(32,), batch_size=2, steps=3, val_fraction=0, val_every=10**6,
                      checkpoint_dir=str(tmp_path / "ck"), num_workers=0, threads=1, contact_weight=5.0)
    seen = []
    real = ContactWeights.__call__

    def spy(self, store):
        w = real(self, store)
        seen.append(float(w.max()))
        return w

    monkeypatch.setattr(ContactWeights, "__call__", spy)
    res = run_training(cfg, TrainingData([_item(paint)], NUC))
    assert res.steps == 3 and len(seen) == 3
    assert max(seen) == 6.0  # some patch held the gap between the two nuclei
    # unset: the default weight with object classes (and the start event says so), none without them
    seen.clear()
    events = list(train(cfg.replace(contact_weight=None, checkpoint_dir=str(tmp_path / "ck3")),
                        TrainingData([_item(paint)], NUC)))
    assert max(seen) == 1.0 + AUTO_CONTACT_WEIGHT
    assert [e.contact_weight for e in events if isinstance(e, StartEvent)] == [AUTO_CONTACT_WEIGHT]
    seen.clear()
    events = list(train(cfg.replace(contact_weight=None, checkpoint_dir=str(tmp_path / "ck4")),
                        TrainingData([_item(paint)], ClassSchema(("background", "nucleus")))))
    assert not seen and [e.contact_weight for e in events if isinstance(e, StartEvent)] == [0.0]
    with pytest.raises(MedsegError, match="no class is an object class"):
        run_training(cfg.replace(checkpoint_dir=str(tmp_path / "ck2")),
                     TrainingData([_item(paint)], ClassSchema(("background", "nucleus"))))


def test_cli_flags_reach_the_config():
    import argparse

    from napari_medseg.cli.train import _config, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--images", "i", "--masks", "m", "--out", "o", "--objects", "nucleus"]
    assert _config(p.parse_args(base), 2).contact_weight is None  # auto
    cfg = _config(p.parse_args(base + ["--contact-weight", "10", "--contact-radius", "4"]), 2)
    assert (cfg.contact_weight, cfg.contact_radius) == (10.0, 4)
    with pytest.raises(MedsegError, match="contact_weight must be"):
        _config(p.parse_args(base + ["--contact-weight", "-1"]), 2)
