import json

import pytest

from napari_medseg.io.errors import MedsegError
from napari_medseg.models.config import ModelConfig
from napari_medseg.training import TrainConfig


def test_json_round_trip_keeps_nested_model():
    cfg = TrainConfig(model=ModelConfig(name="unet", spatial_dims=3, channels=(8, 16)), patch_size=(32, 64, 64),
                      time_budget_s=12.5, mean_teacher=False, ct_window=(50, 350), threads=1)
    back = TrainConfig.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.model, ModelConfig) and back.model.channels == (8, 16)
    assert json.loads(cfg.to_json())["model"]["spatial_dims"] == 3


def test_unknown_key_is_named():
    d = TrainConfig().to_dict()
    d["learning_rate"] = 0.1
    with pytest.raises(MedsegError, match="learning_rate"):
        TrainConfig.from_dict(d)


@pytest.mark.parametrize("key,value", [("batch_size", "8"), ("mean_teacher", 1), ("lr", "fast"),
                                       ("patch_size", [64, "a"]), ("steps", 1.5), ("ct_window", [1])])
def test_wrong_types_are_named(key, value):
    d = TrainConfig().to_dict()
    d[key] = value
    with pytest.raises(MedsegError, match=key):
        TrainConfig.from_dict(d)


def test_bad_choices_and_ranges():
    with pytest.raises(MedsegError, match="loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(MedsegError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(MedsegError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(MedsegError, match="not valid JSON"):
        TrainConfig.from_json("{")


def test_patch_and_batch_split():
    assert TrainConfig(patch_size=(128,)).patch_for(2) == (128, 128)
    assert TrainConfig().patch_for(3) == (64, 64, 64)
    with pytest.raises(MedsegError, match="3D"):
        TrainConfig(patch_size=(64, 64)).patch_for(3)
    assert TrainConfig(batch_size=8, mean_teacher=True, unlabelled_ratio=1.0).split_batch() == (4, 4)
    assert TrainConfig(batch_size=8, mean_teacher=False).split_batch() == (8, 0)
    assert TrainConfig(batch_size=1, mean_teacher=True).split_batch() == (1, 0)
