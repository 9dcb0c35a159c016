"""Training on the real datasets in ../shared/data (skipped when absent)."""

import math

import pytest
from helpers import drain

from napari_medseg.training import TrainConfig, ValidationEvent, train
from napari_medseg.training.datasets import load_folder, make_training_data

from ._synth import TINY_2D, TINY_3D

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("folder,patch", [("monuseg_train", 64), ("isbi2012_em", 64)])
def test_scribbles_on_real_slides(shared_data, tmp_path, folder, patch):
    pairs = load_folder(shared_data / folder, limit=2)
    data = make_training_data(pairs, sparse="scribbles", fraction=0.05, seed=0)
    cfg = TrainConfig(model=TINY_2D, patch_size=(patch,), batch_size=4, steps=4, val_every=4, val_fraction=0.2,
                      checkpoint_dir=str(tmp_path), num_workers=1)
    events, res = drain(train(cfg, data))
    val = [e for e in events if isinstance(e, ValidationEvent)]
    assert res.steps == 4 and val and not math.isnan(val[-1].mean_dice)
    assert events[0].norm.channels == pairs[0].image.n_channels


def test_left_atrium_cases(shared_data, tmp_path):
    pairs = load_folder(shared_data / "la2018_mri_train", limit=3)
    data = make_training_data(pairs, cases=1, seed=0)
    assert sum(it.labels is not None for it in data.items) == 1
    cfg = TrainConfig(model=TINY_3D, patch_size=(32,), batch_size=2, steps=2, val_every=2, val_fraction=0.0,
                      checkpoint_dir=str(tmp_path), num_workers=1)
    events, res = drain(train(cfg, data))
    assert events[0].n_labelled == 1 and events[0].n_unlabelled == 2 and res.steps == 2
