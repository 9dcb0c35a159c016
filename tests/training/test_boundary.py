"""Boundary-aware losses (on patches painted in full only) and deep supervision over U-Net++'s heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.models import ModelConfig, build_model
from napari_medseg.training import TrainConfig
from napari_medseg.training import boundary as bd
from napari_medseg.training.losses import SparseSegLoss


def _disc(n: int = 32) -> torch.Tensor:
    """Store values of a disc (class 1 -> store 2) on background (store 1), fully painted."""
    yy, xx = np.mgrid[:n, :n]
    return torch.from_numpy(np.where((yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 4) ** 2, 2, 1))[None]


@pytest.mark.parametrize("kind", ["boundary", "hausdorff"])
def test_boundary_loss_prefers_the_true_boundary_and_skips_partly_painted_patches(kind):
    term = bd.BoundaryTerm(kind)
    store = _disc()
    good = torch.stack([store[0] == 1, store[0] == 2]).float()[None] * 8 - 4  # logits of the truth
    shifted = torch.roll(good, 6, dims=3)
    assert float(term(good, store)) < float(term(shifted, store))
    logits = shifted.clone().requires_grad_(True)
    term(logits, store).backward()
    assert logits.grad.abs().sum() > 0
    partly = store.clone()
    partly[0, :4] = 0  # a few unpainted pixels: the distance to the boundary is unknown there
    z = term(shifted.clone().requires_grad_(True), partly)
    assert float(z) == 0.0 and z.requires_grad


def test_boundary_loss_needs_dense_masks_and_valid_settings():
    class Item:
        dense_mask = None

    with pytest.raises(MedsegError, match="labelled in full"):
        bd.check_boundary_data("boundary", [Item()])
    bd.check_boundary_data("none", [Item()])
    with pytest.raises(MedsegError, match="boundary_loss must be one of"):
        TrainConfig(boundary_loss="edges")
    with pytest.raises(MedsegError, match="boundary_weight must be >= 0"):
        TrainConfig(boundary_loss="boundary", boundary_weight=-1)
    assert bd.ramp(0.1, 0.5) == pytest.approx(0.2) and bd.ramp(0.9, 0.5) == 1.0 and bd.ramp(0.0, 0.0) == 1.0
    cfg = TrainConfig(boundary_loss="hausdorff", deep_supervision=True)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert TrainConfig.from_dict({k: v for k, v in TrainConfig().to_dict().items()
                                  if not k.startswith(("boundary", "deep"))}).boundary_loss == "none"


def test_deep_supervision_weights_every_head_the_deepest_most():
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="unetpp", channels=(4, 8, 16, 32, 64), out_channels=3)).eval()
    x = torch.rand(2, 1, 32, 32)
    logits, heads = bd.forward_heads(net, x, True)
    torch.testing.assert_close(logits, net(x))  # the other terms see what prediction uses
    assert len(heads) == 4 and bd.DeepSupervision.weights(4) == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])
    y = torch.randint(0, 4, (2, 32, 32))
    loss = SparseSegLoss()
    ds = bd.DeepSupervision(loss)(heads, y)
    ref = sum(w * loss(h, y) for w, h in zip([1 / 15, 2 / 15, 4 / 15, 8 / 15], heads))
    torch.testing.assert_close(ds, ref)
    assert bd.forward_heads(net, x, False)[1] is None
    with pytest.raises(MedsegError, match="several output heads"):
        bd.check_deep_supervision(build_model(ModelConfig(channels=(4, 8), num_res_units=0)), "unet")


@pytest.mark.parametrize("kw", [{"boundary_loss": "boundary"}, {"deep_supervision": True}])
def test_a_run_trains_with_each_on_dense_labels_and_refuses_scribbles(tmp_path, kw):
    from napari_medseg.core.source import ImageSource
    from napari_medseg.training import run_training
    from napari_medseg.training.datasets import Pair, make_training_data

    rng = np.random.default_rng(0)
    mask = (rng.random((96, 96)) > 0.5).astype(np.uint8)
    img = ImageSource(levels=[(mask * 150 + rng.integers(0, 60, (96, 96))).astype(np.uint8)], axes="YX",
                      pixel_size=(1.0, 1.0), name="toy", path=None)
    model = ModelConfig(name="unetpp" if kw.get("deep_supervision") else "unet", channels=(4, 8, 16, 32, 64),
                        num_res_units=0)
    cfg = TrainConfig(model=model, patch_size=(32,), batch_size=2, steps=3, val_fraction=0.0, library=False,
                      threads=1, num_workers=1, checkpoint_dir=str(tmp_path / "run"), **kw)
    dense = make_training_data([Pair("toy", img, mask)], sparse="dense")
    res = run_training(cfg, dense)
    assert res.steps == 3
    if "boundary_loss" in kw:
        sparse = make_training_data([Pair("toy", img, mask)], sparse="scribbles", fraction=0.05, seed=0)
        sparse.items = [type(it)(it.image, it.labels, None, it.name) for it in sparse.items]
        with pytest.raises(MedsegError, match="labelled in full"):
            run_training(cfg.replace(checkpoint_dir=str(tmp_path / "r2")), sparse)
