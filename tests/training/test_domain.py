"""Domain adaptation (training/domain.py): gradient reversal, the discriminator, the bottleneck tap per family,
the config checks, target windows in the batches and short end-to-end runs."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from helpers import drain

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.models import build_model
from napari_medseg.models.checkpoint import load_checkpoint
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.registry import required_multiple
from napari_medseg.training import StartEvent, StepEvent, TrainConfig, TrainingData, TrainingItem, train
from napari_medseg.training.domain import (
    DomainAdapter,
    DomainDiscriminator,
    bottleneck,
    dann_lambda,
    domain_bce,
    grad_reverse,
    target_items,
)
from napari_medseg.training.sampler import PatchSampler

from ._synth import blob_data, blobs, tiny_cfg


def test_gradient_reversal_flips_the_sign_exactly():
    x = torch.randn(3, 4, 5, requires_grad=True)
    g = torch.randn(3, 4, 5)
    y = grad_reverse(x, 0.37)
    assert torch.equal(y, x)
    y.backward(g)
    assert torch.equal(x.grad, g.neg() * 0.37)
    x.grad = None
    grad_reverse(x * 2, 1.0).backward(g)
    assert torch.equal(x.grad, -2 * g)


def test_lambda_ramp():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(1.0, abs=1e-4)
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + np.exp(-5)) - 1)
    vals = [dann_lambda(p / 10) for p in range(11)]
    assert vals == sorted(vals)
    assert dann_lambda(0.25, rampup=0.5) == pytest.approx(dann_lambda(0.5))
    assert dann_lambda(0.0, rampup=0.0) == pytest.approx(1.0, abs=1e-4)


def _domains(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Source: smooth noise; target: the same plus fine stripes (same mean and range)."""
    a = torch.randn(n, 3, 32, 32, generator=gen) * 0.5
    stripes = torch.sin(torch.arange(32.0) * 2.5).view(1, 1, 1, 32)
    return a, torch.randn(n, 3, 32, 32, generator=gen) * 0.5 + stripes


def test_discriminator_learns_to_separate_two_domains():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    disc = DomainDiscriminator(3, 2, width=16)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3)
    for _ in range(60):
        s, t = _domains(8, gen)
        loss = domain_bce(disc(torch.cat([s, t])), 8, 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    s, t = _domains(16, gen)
    with torch.no_grad():
        z = disc(torch.cat([s, t]))
    acc = torch.cat([(z[:16] < 0).flatten(), (z[16:] > 0).flatten()]).float().mean()
    assert acc > 0.9 and float(domain_bce(z, 16, 16)) < 0.3


def test_reversed_gradient_aligns_the_domains():
    """A learnable shift on the target features, trained only through the reversed domain loss, moves the target
    towards the source (the alignment pushes the right way; without reversal it would run away)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    shift = torch.nn.Parameter(torch.zeros(1, 2, 1, 1))
    disc = DomainDiscriminator(2, 2, width=16, strided=False)
    opt = torch.optim.Adam([{"params": [shift], "lr": 0.05}, {"params": disc.parameters(), "lr": 2e-3}])
    for _ in range(150):
        s = torch.randn(8, 2, 8, 8, generator=gen)
        t = torch.randn(8, 2, 8, 8, generator=gen) + 3.0 + shift
        loss = domain_bce(disc(grad_reverse(torch.cat([s, t]), 1.0)), 8, 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float((3.0 + shift.detach()).abs().mean()) < 1.0  # the 3-SD gap mostly closed


FAMILIES = [
    ModelConfig(name="unet", spatial_dims=2, channels=(8, 16, 32), num_res_units=1),
    ModelConfig(name="attention_unet", spatial_dims=2, channels=(8, 16, 32)),
    ModelConfig(name="unetpp", spatial_dims=2, channels=(4, 8, 8, 16, 16)),
    ModelConfig(name="light_unet", spatial_dims=2, channels=(8, 16, 32), num_res_units=1),
]


@pytest.mark.parametrize("cfg", FAMILIES, ids=lambda c: c.name)
def test_hook_finds_the_bottleneck(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    seen: list[torch.Tensor] = []
    sizes: list[int] = []
    h = bottleneck(model).register_forward_hook(lambda m, a, o: seen.append(o))
    hooks = [m.register_forward_hook(lambda m, a, o: sizes.append(o.shape[-1]))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 64))
    h.remove()
    for k in hooks:
        k.remove()
    assert len(seen) == 1
    f = seen[0]
    assert f.shape[1] == cfg.channels[-1]
    assert f.shape[-1] == min(sizes) == 64 // required_multiple(cfg)  # the deepest map there is


def test_dann_refuses_a_model_without_a_known_bottleneck():
    class Other(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Conv2d(1, 2, 1)

    opt = torch.optim.SGD(Other().parameters(), lr=0.1)
    with pytest.raises(MedsegError, match="output"):
        DomainAdapter("dann", Other(), opt, 2)
    DomainAdapter("output", Other(), opt, 2)  # model-agnostic


@pytest.mark.parametrize("kw, word", [
    (dict(domain_adapt="adv"), "domain_adapt"),
    (dict(da_weight=-1.0), "da_weight"),
    (dict(da_rampup=1.5), "da_rampup"),
    (dict(da_target_ratio=0.0), "da_target_ratio"),
    (dict(da_target_ratio=9.0), "da_target_ratio"),
    (dict(domain_adapt="dann", semi="pseudo_label"), "pseudo_label"),
])
def test_bad_domain_values_are_clear_errors(kw, word):
    with pytest.raises(MedsegError, match=word):
        TrainConfig(**kw)


def test_older_configs_load_without_the_fields():
    d = TrainConfig().to_dict()
    for k in ("domain_adapt", "da_weight", "da_rampup", "da_target_ratio"):
        d.pop(k)
    cfg = TrainConfig.from_dict(d)
    assert cfg.domain_adapt == "none"
    assert TrainConfig.from_dict(TrainConfig(domain_adapt="dann", da_weight=0.3).to_dict()).da_weight == 0.3


def _target(value: int, i: int = 0, shape=(96, 96)) -> TrainingItem:
    img, _ = blobs(shape, seed=50 + i)
    img = np.full(shape, value, np.uint8) if value >= 0 else (255 - img)  # inverted contrast: a new "stain"
    return TrainingItem(ImageSource([img], "YX", (1.0, 1.0), name=f"t{i}"), None, name=f"t{i}", domain="target")


def test_target_items_are_unlabelled_and_sampled_on_their_own():
    data = blob_data((96, 96), n_items=2, dense=True, fraction=0.05)
    bad = TrainingItem(data.items[0].image, data.items[0].labels, name="x", domain="target")
    with pytest.raises(MedsegError, match="target-domain image"):
        TrainingData([*data.items, bad], ClassSchema()).validate()
    with pytest.raises(MedsegError, match="domain"):
        TrainingData([TrainingItem(data.items[0].image, domain="new")], ClassSchema()).validate()
    data.items.append(_target(255))
    s = PatchSampler(data, (32, 32), 2, val_fraction=0.0)
    assert s.target_items == [2]
    b = s.batch(0, 3, 0, 2)
    assert b["x_t"].shape == (2, 1, 32, 32) and (b["x_t"] == 255).all()
    assert not (b["x_l"] == 255).all()
    plain = s.batch(0, 3, 0)
    assert "x_t" not in plain and np.array_equal(plain["x_l"], b["x_l"])  # the source draws are unchanged


def test_domain_adapt_without_target_images_is_a_clear_error(tmp_path):
    data = blob_data((96, 96), n_items=1, dense=True, fraction=0.05)
    with pytest.raises(MedsegError, match="target images"):
        drain(train(tiny_cfg(tmp_path, domain_adapt="output"), data))


def _steps(tmp_path, name, **kw):
    data = blob_data((96, 96), n_items=2, dense=True, fraction=0.05)
    data.items += [_target(-1, i) for i in range(2)]
    cfg = tiny_cfg(tmp_path / name, steps=4, val_every=4, eval_model="student", **kw)
    events, result = drain(train(cfg, data))
    return events, result, cfg


@pytest.mark.parametrize("mode", ["output", "dann"])
def test_end_to_end_with_target_images(tmp_path, mode):
    events, result, cfg = _steps(tmp_path, mode, domain_adapt=mode, da_weight=1.0)
    _, base, _ = _steps(tmp_path, "base" + mode, domain_adapt=mode, da_weight=0.0)
    start = next(e for e in events if isinstance(e, StartEvent))
    assert start.n_unlabelled == 2
    steps = [e for e in events if isinstance(e, StepEvent)]
    base_steps = [e for e in base.history if e.get("event") == "step"]
    assert len(steps) == 4 and all(np.isfinite(e.loss) for e in steps)
    # the first step's loss holds the domain term (about log 2 from a fresh discriminator), the rest is the same
    assert 0.4 < steps[0].loss - base_steps[0]["loss"] < 1.0
    assert steps[0].loss_sup == pytest.approx(base_steps[0]["loss_sup"], abs=1e-5)
    # the discriminator is no part of the model: the checkpoint holds the model's own tensors only
    ck = load_checkpoint(result.last_checkpoint)
    assert set(ck.state_dict) == set(build_model(cfg.model).state_dict())
    # and the bottleneck hook is gone once the run ends
    assert not bottleneck(result.model)._forward_hooks


def test_cli_flags_and_target_folder(tmp_path):
    from PIL import Image

    from napari_medseg.cli.train import _config, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--images", "i", "--masks", "m", "--out", "o"]
    assert _config(p.parse_args(base), 2).domain_adapt == "none"
    args = p.parse_args(base + ["--domain-adapt", "dann", "--da-weight", "0.05", "--da-rampup", "0.5",
                                "--da-target-ratio", "2", "--target-images", str(tmp_path)])
    cfg = _config(args, 2)
    assert (cfg.domain_adapt, cfg.da_weight, cfg.da_rampup, cfg.da_target_ratio) == ("dann", 0.05, 0.5, 2.0)
    assert args.target_images == str(tmp_path)
    for i in range(2):
        Image.fromarray(np.full((40, 40), 9 * i, np.uint8)).save(tmp_path / f"t{i}.png")
    items = target_items(str(tmp_path))
    assert [it.domain for it in items] == ["target", "target"] and all(it.labels is None for it in items)
    assert len(target_items(f"{tmp_path / 't0.png'},{tmp_path / 't1.png'}")) == 2
    with pytest.raises(MedsegError, match="does not exist"):
        target_items(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedsegError, match="no images"):
        target_items(str(empty))


def test_dann_under_autocast_and_the_discriminator_joins_the_optimiser():
    torch.manual_seed(0)
    model = build_model(FAMILIES[0])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    da = DomainAdapter("dann", model, opt, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(4, 1, 32, 32))
    assert da.feature is not None and da.feature.dtype == torch.bfloat16
    loss = da.loss(logits, 2, 2, progress=1.0)
    assert loss.dtype == torch.float32 and da.feature is None  # each map is used once
    loss.backward()
    group = opt.param_groups[-1]
    assert group["name"] == "domain" and all(p.grad is not None for p in group["params"])
    assert all(p.grad is not None for p in bottleneck(model).parameters())  # reversed gradient reaches the encoder
    da.close()
    model(torch.randn(1, 1, 32, 32))
    assert da.feature is None and not bottleneck(model)._forward_hooks


def test_dann_with_gradient_checkpointing(tmp_path):
    events, result, _ = _steps(tmp_path, "ck", domain_adapt="dann", da_weight=1.0, grad_checkpoint=True)
    assert sum(isinstance(e, StepEvent) and np.isfinite(e.loss) for e in events) == 4
