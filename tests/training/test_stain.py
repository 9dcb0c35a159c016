"""H&E stain augmentation (training/stain.py): the colour deconvolution, the jitter, and its config checks."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from helpers import drain

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.training import TrainConfig, TrainingData, TrainingItem, train
from napari_medseg.training.augment import Augmenter
from napari_medseg.training.events import StepEvent
from napari_medseg.training.stain import hed_jitter, hed_to_rgb, rgb_to_hed

from ._synth import blob_data, blobs, tiny_cfg


def _he_patch(n: int = 2, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Pink (eosin) tissue with purple (haematoxylin) blobs, RGB in [0, 1], ``(n, 3, size, size)``."""
    r = np.random.default_rng(seed)
    out = []
    for i in range(n):
        _, m = blobs((size, size), n=4, seed=seed + i, radius=(3, 6))
        pink, purple = np.array([0.92, 0.62, 0.78]), np.array([0.35, 0.22, 0.55])
        img = np.where(m[..., None] > 0, purple, pink) + r.normal(0, 0.02, (size, size, 3))
        out.append(np.clip(img, 0.05, 1.0).transpose(2, 0, 1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def test_deconvolution_is_skimages_and_inverts():
    from skimage.color import rgb2hed

    x = _he_patch().double()
    hed = rgb_to_hed(x)
    ref = rgb2hed(x[0].permute(1, 2, 0).numpy())  # skimage clips negative amounts to 0
    assert np.abs(hed[0].clamp(min=0).permute(1, 2, 0).numpy() - ref).max() < 1e-10
    assert float((hed_to_rgb(hed) - x).abs().max()) < 1e-9
    # the purple blobs hold more haematoxylin than the pink tissue, the pink more eosin relative to it
    assert float(hed[:, 0].max()) > float(hed[:, 0].median()) + 0.05


def test_jitter_changes_each_patch_by_its_own_stain_amounts():
    x = _he_patch(4)
    g = torch.Generator().manual_seed(0)
    y = hed_jitter(x, 0.05, g)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    d = (rgb_to_hed(y) - rgb_to_hed(x)).abs().mean(dim=(2, 3))  # per patch, per stain
    assert float(d.min()) > 0 and float(d.max()) < 0.2  # every stain moves, within about strength x (1 + amount)
    assert not torch.allclose(d[0], d[1])  # patches get different draws
    # the same draw on every pixel of a patch: away from white (no clipping) the new haematoxylin amounts are
    # the old ones scaled and shifted, one line per patch
    dim = x * 0.7
    h0, h1 = rgb_to_hed(dim)[0, 0].flatten(), rgb_to_hed(hed_jitter(dim, 0.05, g))[0, 0].flatten()
    fit = np.polyfit(h0.numpy(), h1.numpy(), 1)
    assert abs(fit[0] - 1) <= 0.05 + 1e-4 and np.abs(np.polyval(fit, h0.numpy()) - h1.numpy()).max() < 1e-4
    stronger = hed_jitter(x, 0.2, torch.Generator().manual_seed(0))
    assert float((stronger - x).abs().mean()) > float((y - x).abs().mean())
    assert hed_jitter(x, 0.0, g) is x
    with pytest.raises(ValueError, match="3 channels"):
        hed_jitter(x[:, :1], 0.05, g)


def test_augmenter_applies_it_to_the_strong_view_of_rgb_only():
    x = _he_patch(2)
    plain = Augmenter(2, seed=3).photometric(x, "strong")
    stained = Augmenter(2, seed=3, stain=0.1).photometric(x, "strong")
    assert not torch.allclose(plain, stained)
    weak = Augmenter(2, seed=3, stain=0.1).photometric(x, "weak")
    assert torch.equal(weak, Augmenter(2, seed=3).photometric(x, "weak"))
    grey = x[:, :1]
    assert torch.equal(Augmenter(2, seed=3, stain=0.1).photometric(grey, "strong"),
                       Augmenter(2, seed=3).photometric(grey, "strong"))


def _rgb_data() -> TrainingData:
    img, m = blobs((96, 96), seed=0)
    rgb = np.stack([img, (img * 0.6).astype(np.uint8), (img * 0.8).astype(np.uint8)], axis=-1)
    lab = np.zeros(m.shape, np.uint8)
    lab[::4, ::4] = m[::4, ::4] + 1
    src = ImageSource([rgb], "YXC", (1.0, 1.0), name="rgb")
    return TrainingData([TrainingItem(src, lab, None, name="rgb")], ClassSchema())


def test_training_with_stain_jitter_on_rgb_and_a_clear_error_on_grey(tmp_path):
    events, _ = drain(train(tiny_cfg(tmp_path, steps=2, val_every=1, stain_jitter=0.05, library=False),
                            _rgb_data()))
    assert sum(isinstance(e, StepEvent) for e in events) == 2
    with pytest.raises(MedsegError, match=r"stain jitter .* RGB images; these images have 1 channel"):
        next(train(tiny_cfg(tmp_path, stain_jitter=0.05), blob_data()))


@pytest.mark.parametrize("kw", [dict(stain_jitter=-0.1), dict(stain_jitter=0.6), dict(stain_jitter=0.1, augment=False)])
def test_bad_stain_values_are_clear_errors(kw):
    with pytest.raises(MedsegError, match="stain_jitter"):
        TrainConfig(**kw)


def test_cli_flag_reaches_the_config_and_older_configs_read_as_off():
    from napari_medseg.cli.train import _config, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--images", "i", "--masks", "m", "--out", "o"]
    assert _config(p.parse_args(base + ["--stain-jitter", "0.05"]), 2).stain_jitter == 0.05
    assert _config(p.parse_args(base), 2).stain_jitter == 0.0
    old = TrainConfig().to_dict()
    old.pop("stain_jitter")
    assert TrainConfig.from_dict(old).stain_jitter == 0.0
