"""Each bad input gets a clear MedsegError (or a warning where training can go on), and nothing is lost."""

import os

import numpy as np
import pytest
import torch
from helpers import drain

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.models.checkpoint import Checkpoint, save_checkpoint
from napari_medseg.models.config import ModelConfig
from napari_medseg.training import StepEvent, TrainingData, TrainingItem, WarningEvent, train

from ._synth import TINY_2D, blob_data, blobs, tiny_cfg


def _data(img, lab, classes=None):
    return TrainingData([TrainingItem(ImageSource([img], "YX", (1.0, 1.0), name="img"), lab)],
                        classes or ClassSchema())


def test_no_painted_pixels(tmp_path):
    img, _ = blobs((64, 64))
    with pytest.raises(MedsegError, match="no painted pixels"):
        next(train(tiny_cfg(tmp_path), _data(img, np.zeros((64, 64), np.uint8))))
    assert not (tmp_path / "ck").exists()  # nothing written


def test_only_one_class_painted_warns_and_trains(tmp_path):
    img, _ = blobs((64, 64))
    lab = np.zeros((64, 64), np.uint8)
    lab[::5, ::5] = 1  # background only
    events, res = drain(train(tiny_cfg(tmp_path, steps=2), _data(img, lab)))
    msgs = [e.message for e in events if isinstance(e, WarningEvent)]
    assert any("only 'background' is painted" in m and "'foreground'" in m for m in msgs)
    assert res.steps == 2


def test_label_values_beyond_the_classes(tmp_path):
    img, _ = blobs((64, 64))
    lab = np.zeros((64, 64), np.uint8)
    lab[::5, ::5] = 1
    lab[3, 3] = 7
    before = lab.copy()
    with pytest.raises(MedsegError, match=r"values \[7\] beyond the 1 classes"):
        next(train(tiny_cfg(tmp_path), _data(img, lab)))
    assert np.array_equal(lab, before)


def test_nan_and_inf_in_the_image(tmp_path):
    img, m = blobs((64, 64))
    f = img.astype(np.float32)
    f[10:20, 10:20] = np.nan
    f[30, :] = np.inf
    f[40, :] = -np.inf
    lab = np.where(np.random.default_rng(0).random(m.shape) < 0.1, m + 1, 0).astype(np.uint8)
    events, res = drain(train(tiny_cfg(tmp_path, steps=3), _data(f, lab)))
    assert any("NaN or infinite" in e.message for e in events if isinstance(e, WarningEvent))
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, StepEvent))
    assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_image_smaller_than_the_patch_is_padded(tmp_path):
    img, m = blobs((20, 27), n=3, radius=(3, 6))
    lab = np.where(np.random.default_rng(0).random(m.shape) < 0.3, m + 1, 0).astype(np.uint8)
    events, res = drain(train(tiny_cfg(tmp_path, steps=2, patch_size=(32,)), _data(img, lab)))
    assert res.steps == 2 and events[0].patch_size == (32, 32)


def test_image_and_labels_of_different_geometry(tmp_path):
    img, _ = blobs((64, 64))
    lab = np.ones((64, 32), np.uint8)
    with pytest.raises(GeometryMismatchError, match=r"\(64, 32\).*\(64, 64\)"):
        next(train(tiny_cfg(tmp_path), _data(img, lab)))


def test_checkpoint_of_another_architecture_names_the_mismatch(tmp_path):
    from napari_medseg.models import build_model

    other = ModelConfig(name="attention_unet", channels=(4, 8), num_res_units=0)
    path = save_checkpoint(tmp_path / "other.pt", Checkpoint(other, build_model(other).state_dict()))
    with pytest.raises(MedsegError, match=r"'attention_unet' model that does not match the chosen 2D 'unet'"):
        next(train(tiny_cfg(tmp_path), blob_data(), init=path))
    # the same architecture with other widths is taken over with a warning (tests/training/test_loop.py)
    # a plain state dict of something else entirely
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(MedsegError, match="another architecture"):
        next(train(tiny_cfg(tmp_path), blob_data(), init=tmp_path / "linear.pt"))
    assert TINY_2D.channels != other.channels


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-medseg-checkpoint", "state_dict": _Evil(str(marker))}, path)
    with pytest.raises(MedsegError, match="Nothing in it was run|nothing in it was run"):
        next(train(tiny_cfg(tmp_path), blob_data(), init=path))
    assert not marker.exists()
    # the same as a "plain state dict"
    torch.save({"weights": _Evil(str(marker))}, tmp_path / "evil2.pt")
    with pytest.raises(MedsegError, match="(?i)nothing in it was run"):
        next(train(tiny_cfg(tmp_path), blob_data(), init=tmp_path / "evil2.pt"))
    assert not marker.exists()
