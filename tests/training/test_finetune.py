"""The training craft (training/finetune.py): gradient checkpointing that keeps gradients and state-dict keys,
gradient accumulation and clipping (unscaled under a GradScaler), frozen encoder and batch norm, layer-wise
learning rates, label smoothing and class weights; their config fields, CLI flags and checks."""

from __future__ import annotations

import argparse
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import drain

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.devices import DeviceSetup
from napari_medseg.models.normalization import NormConfig
from napari_medseg.models.registry import build_model
from napari_medseg.training import TrainConfig, run_training, train
from napari_medseg.training import finetune as ft
from napari_medseg.training.events import StepEvent, WarningEvent
from napari_medseg.training.losses import SparseSegLoss
from napari_medseg.training.run_state import Run

from ._synth import TINY_2D, blob_data, tiny_cfg

FAMILIES = [
    ("unet 2D", ModelConfig(name="unet", channels=(8, 16, 32), num_res_units=1), (2, 1, 32, 32)),
    ("unet 3D", ModelConfig(name="unet", spatial_dims=3, channels=(4, 8, 16), num_res_units=2), (1, 1, 16, 16, 16)),
    ("attention_unet", ModelConfig(name="attention_unet", channels=(4, 8, 16)), (2, 1, 32, 32)),
    ("unetpp", ModelConfig(name="unetpp", channels=(4, 4, 8, 8, 16)), (2, 1, 32, 32)),
    ("swin_unetr", ModelConfig(name="swin_unetr", feature_size=12), (1, 1, 64, 64)),
    ("swin_unet", ModelConfig(name="swin_unet", feature_size=6, depths=(2, 2), num_heads=(1, 2), window_size=4),
     (1, 1, 32, 32)),
]


def _grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of every parameter the output depends on (deep-supervision heads, e.g. nnformer's, get zeros:
    only its ``heads`` use them)."""
    params = list(model.parameters())
    gs = torch.autograd.grad(model(x).square().mean(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n]


@pytest.mark.parametrize("name,mcfg,shape", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_checkpointing_keeps_gradients_and_state_dict_keys(name, mcfg, shape):
    torch.manual_seed(0)
    plain = build_model(mcfg).train()
    ck = copy.deepcopy(plain)
    assert ft.apply_grad_checkpoint(ck) > 0 and ft.is_checkpointed(ck) and not ft.is_checkpointed(plain)
    assert ft.apply_grad_checkpoint(ck) == 0  # applied once
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    g0, g1 = _grads(plain, x), _grads(ck, x)
    scale = max(float(g.abs().max()) for g in g0)
    assert scale > 0
    assert max(float((a - b).abs().max()) for a, b in zip(g0, g1)) <= 1e-6 * scale
    # batch norm saw one forward pass in each (the recomputation put its statistics back)
    for a, b in zip(_bn_buffers(plain), _bn_buffers(ck)):
        assert torch.equal(a, b)
    # the same keys: a checkpoint saved with it loads strictly without it, and back
    assert list(plain.state_dict()) == list(ck.state_dict())
    build_model(mcfg).load_state_dict(ck.state_dict(), strict=True)
    ck.load_state_dict(plain.state_dict(), strict=True)
    # what is kept for the backward pass shrinks
    assert ft.saved_bytes(ck, x) < 0.6 * ft.saved_bytes(plain, x)
    # outside a gradient pass the blocks run as usual
    with torch.no_grad():
        torch.testing.assert_close(ck.eval()(x), plain.eval()(x), rtol=0, atol=0)
    ft.remove_grad_checkpoint(ck)
    assert not ft.is_checkpointed(ck)


def test_a_copy_of_a_checkpointed_model_runs_its_own_blocks():
    """The weight average is a deepcopy of the student: its blocks must call their own weights."""
    torch.manual_seed(0)
    m = build_model(TINY_2D).train()
    ft.apply_grad_checkpoint(m)
    c = copy.deepcopy(m)
    for p in c.parameters():
        p.data.zero_()
    x = torch.randn(1, 1, 32, 32)
    assert float(c(x).abs().max()) == 0.0 and float(m(x).abs().max()) > 0
    blocks = ft.checkpoint_blocks(c)
    assert all(b.forward.__self__ is b for b in blocks)


def test_a_checkpointed_run_trains_the_same_and_its_checkpoint_loads_plain(tmp_path):
    from napari_medseg.models.checkpoint import load_checkpoint

    data = blob_data()
    plain = run_training(tiny_cfg(tmp_path / "a", steps=3, val_every=3, library=False), data)
    ck = run_training(tiny_cfg(tmp_path / "b", steps=3, val_every=3, library=False, grad_checkpoint=True), data)
    la = [h["loss"] for h in plain.history if h["event"] == "step"]
    lb = [h["loss"] for h in ck.history if h["event"] == "step"]
    assert la == pytest.approx(lb, rel=1e-5)
    sa, sb = plain.model.state_dict(), ck.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6)
    assert not ft.is_checkpointed(ck.model)  # handed back without the wrappers
    saved = load_checkpoint(ck.last_checkpoint)
    fresh = build_model(saved.model_config)
    fresh.load_state_dict(saved.state_dict, strict=True)
    assert saved.meta["train_config"]["grad_checkpoint"] is True


# -- accumulation and clipping, on the real optimiser step ----------------------------------------------------
def _run(tmp_path, setup: DeviceSetup | None = None, **kw) -> Run:
    cfg = TrainConfig(model=TINY_2D, loss="ce", augment=False, optimizer="sgd", weight_decay=0.0, lr=0.1,
                      lr_schedule="constant", warmup_steps=0, eval_model="student", **kw)
    torch.manual_seed(0)
    model = build_model(TINY_2D).train()
    setup = setup or DeviceSetup(torch.device("cpu"), None, False, False)
    return Run(cfg, None, setup, TINY_2D, None, NormConfig("range", (0.0,), (255.0,)), model, None, tmp_path, 1)


def _batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every pixel painted (store 1 or 2), so each micro-batch has as many painted pixels as the others."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 32, 32), generator=g).float()
    y = (x[:, 0] > 128).to(torch.uint8) + 1
    return {"x_l": x, "y_l": y}


def _delta(run: Run, batches, step: int = 0) -> list[torch.Tensor]:
    before = [p.detach().clone() for p in run.model.parameters()]
    loss, *_ = run.step(batches, step, 0.5)
    assert math.isfinite(loss)
    return [p.detach() - b for p, b in zip(run.model.parameters(), before)]


def test_accumulating_two_by_four_is_one_batch_of_eight(tmp_path):
    b = _batch(8)
    whole = _delta(_run(tmp_path, batch_size=8), b)
    halves = [{k: v[:4] for k, v in b.items()}, {k: v[4:] for k, v in b.items()}]
    acc_run = _run(tmp_path, batch_size=4, accumulate=2)
    acc = _delta(acc_run, halves)
    scale = max(float(d.abs().max()) for d in whole)
    assert scale > 0
    assert max(float((a - c).abs().max()) for a, c in zip(whole, acc)) <= 1e-5 * scale
    # one micro-batch alone is a different update (the test can fail)
    one = _delta(_run(tmp_path, batch_size=4), halves[0])
    assert max(float((a - c).abs().max()) for a, c in zip(whole, one)) > 1e-3 * scale


def test_clipping_bounds_the_gradient_norm_and_the_update(tmp_path):
    run = _run(tmp_path, clip_grad=0.01)
    d = _delta(run, _batch(4))
    assert run.grad_norm is not None and run.grad_norm > 0.01  # it was clipped
    norm = math.sqrt(sum(float(p.grad.square().sum()) for p in run.model.parameters() if p.grad is not None))
    assert norm <= 0.01 * (1 + 1e-5)
    step = math.sqrt(sum(float(x.square().sum()) for x in d))
    assert step <= 0.1 * 0.01 * (1 + 1e-4)  # SGD's first update is lr x the clipped gradient
    off = _run(tmp_path)
    off.step(_batch(4), 0, 0.5)
    assert off.grad_norm is None  # clipping off: no norm computed


def test_clipping_under_a_grad_scaler_acts_on_the_unscaled_gradients(tmp_path):
    """The fp16 path (CUDA) keeps a GradScaler: forced here on the CPU. Unscaled before clipping, the update
    equals the one without a scaler; clipping the scaled gradients would make it 65536 x smaller."""
    b = _batch(4)
    plain = _delta(_run(tmp_path, clip_grad=0.01), b)
    scaled_run = _run(tmp_path, DeviceSetup(torch.device("cpu"), None, True, False), clip_grad=0.01, accumulate=2)
    assert scaled_run.scaler is not None and scaled_run.scaler.get_scale() > 1000
    scaled = _delta(scaled_run, [b, b])  # the same batch twice: the same mean gradient
    scale = max(float(d.abs().max()) for d in plain)
    assert max(float((a - c).abs().max()) for a, c in zip(plain, scaled)) <= 1e-4 * scale
    ref = _run(tmp_path, clip_grad=0.01)
    ref.step(b, 0, 0.5)
    assert scaled_run.grad_norm == pytest.approx(ref.grad_norm, rel=1e-4)  # the unscaled norm


def test_bf16_autocast_with_accumulation_and_clipping(tmp_path):
    run = _run(tmp_path, DeviceSetup(torch.device("cpu"), torch.bfloat16, False, False), accumulate=2,
               clip_grad=1.0)
    b = _batch(4)
    d = _delta(run, [b, _batch(4, seed=1)])
    assert run.grad_norm is not None and math.isfinite(run.grad_norm)
    assert max(float(x.abs().max()) for x in d) > 0


def test_a_non_finite_micro_batch_skips_the_whole_update(tmp_path):
    run = _run(tmp_path, accumulate=2)
    real, calls = run.loss_fn, []

    def nan_second(logits, store):
        calls.append(1)
        out = real(logits, store)
        return out * float("nan") if len(calls) == 2 else out

    run.loss_fn = nan_second
    before = [p.detach().clone() for p in run.model.parameters()]
    loss, *_ = run.step([_batch(4), _batch(4, seed=1)], 0, 0.5)
    assert len(calls) == 2
    assert not math.isfinite(loss)
    assert all(torch.equal(a, p) for a, p in zip(before, run.model.parameters()))


def test_the_loop_takes_accumulate_batches_per_step_and_reports_the_norm(tmp_path):
    events, result = drain(train(tiny_cfg(tmp_path, steps=2, accumulate=3, clip_grad=5.0, library=False),
                                 blob_data()))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == [1, 2] and all(e.batch_size == 12 for e in steps)
    assert all(e.grad_norm is not None and e.grad_norm > 0 for e in steps)


# -- freezing -------------------------------------------------------------------------------------------------
def test_frozen_encoder_weights_are_bitwise_unchanged_after_a_run(tmp_path):
    cfg = tiny_cfg(tmp_path, steps=4, val_every=4, freeze="encoder", lr=0.05, library=False)
    events, result = drain(train(cfg, blob_data()))
    assert any(isinstance(e, WarningEvent) and "random initial weights" in e.message for e in events)
    torch.manual_seed(cfg.seed)  # the loop builds its model after this seed
    start = build_model(TINY_2D)
    enc = {id(p) for p in ft.encoder_parameters(result.model)}
    names = {n for n, p in result.model.named_parameters() if id(p) in enc}
    assert names and len(names) < len(dict(result.model.named_parameters()))
    s0, s1 = start.state_dict(), result.model.state_dict()
    for n in names:
        assert torch.equal(s0[n], s1[n]), n
    assert any(not torch.equal(s0[n], s1[n]) for n, _ in result.model.named_parameters() if n not in names)
    ema = result.teacher.state_dict()
    for n in names & set(ema):
        assert torch.equal(s0[n], ema[n]), n


def test_frozen_weights_are_not_in_the_optimiser():
    torch.manual_seed(0)
    m = build_model(TINY_2D)
    ft.freeze_encoder(m)
    opt = ft.make_optimizer(m, TrainConfig(model=TINY_2D, freeze="encoder"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt and not in_opt & {id(p) for p in ft.encoder_parameters(m)}
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(MedsegError, match="frozen"):
        ft.param_groups(m, 1e-3)


SOME = FAMILIES[:1] + FAMILIES[2:]


@pytest.mark.parametrize("name,mcfg,shape", SOME, ids=[f[0] for f in SOME])
def test_every_family_has_an_encoder_and_a_decoder(name, mcfg, shape):
    m = build_model(mcfg)
    enc = {id(p) for p in ft.encoder_parameters(m)}
    n = sum(1 for _ in m.parameters())
    assert 0 < len(enc) < n


def test_an_unknown_model_has_no_encoder_but_checkpoints_its_children():
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(MedsegError, match="encoder"):
        ft.encoder_modules(m)
    assert ft.checkpoint_blocks(m) == [m[0], m[2]]


def test_freeze_bn_keeps_statistics_and_affine_bitwise(tmp_path):
    mcfg = ModelConfig(name="attention_unet", channels=(4, 8, 16))
    kw = dict(model=mcfg, steps=3, val_every=3, lr=0.05, library=False, eval_model="student")
    torch.manual_seed(0)
    start = build_model(mcfg)
    frozen = run_training(tiny_cfg(tmp_path / "f", freeze_bn=True, **kw), blob_data()).model
    free = run_training(tiny_cfg(tmp_path / "n", **kw), blob_data()).model
    s0, s1, s2 = start.state_dict(), frozen.state_dict(), free.state_dict()
    norm_keys = [k for k, mod in _norm_tensors(frozen)]
    assert norm_keys
    assert all(torch.equal(s0[k], s1[k]) for k in norm_keys)
    assert any(not torch.equal(s0[k], s2[k]) for k in norm_keys)  # without it they move (the test can fail)
    assert any(not torch.equal(s0[k], s1[k]) for k in s0 if k not in norm_keys)  # the rest trained
    # during the run batch norm was in eval mode for good: train() and eval() give the same output
    torch.manual_seed(0)
    m = build_model(mcfg)
    assert ft.freeze_norm_layers(m) == (len(norm_keys) // 5, 2 * (len(norm_keys) // 5))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = m.train()(x)
        b = m.eval()(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # the model handed back after the run is the plain one again
    assert all(p.requires_grad for p in frozen.parameters())
    assert next(mod for _, mod in _norm_tensors(frozen.train())).training


def _norm_tensors(model: nn.Module):
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                yield f"{name}.{k}", mod


def test_freeze_bn_on_a_model_without_batch_norm_says_so(tmp_path):
    events, _ = drain(train(tiny_cfg(tmp_path, steps=1, val_every=1, freeze_bn=True, library=False), blob_data()))
    assert any(isinstance(e, WarningEvent) and "freeze_bn" in e.message for e in events)


def test_batch_norm_statistics_are_re_estimated_as_a_plain_average():
    bn = nn.BatchNorm2d(1)
    model = nn.Sequential(nn.Identity(), bn)
    xs = [torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 4, 4), 6.0)]
    xs[1][0] += 1.0  # batch means 2 and 6.5
    assert ft.reestimate_norm_stats(model, xs) == 2
    assert float(bn.running_mean) == pytest.approx(4.25)
    assert bn.momentum == 0.1 and model.training  # settings put back


def test_bn_reestimate_in_a_run_updates_student_and_average(tmp_path):
    mcfg = ModelConfig(name="attention_unet", channels=(4, 8, 16))
    torch.manual_seed(0)
    start = build_model(mcfg)
    res = run_training(tiny_cfg(tmp_path, model=mcfg, steps=2, val_every=2, freeze_bn=True, bn_reestimate=2,
                                library=False), blob_data())
    s0, s1, se = start.state_dict(), res.model.state_dict(), res.teacher.state_dict()
    keys = [k for k in s1 if k.endswith("running_mean")]
    assert all(not torch.equal(s0[k], s1[k]) for k in keys)
    assert all(torch.equal(s1[k], se[k]) for k in keys)


# -- layer-wise learning rate ---------------------------------------------------------------------------------
def test_the_encoder_gets_its_scaled_rate_at_every_step(tmp_path):
    torch.manual_seed(0)
    m = build_model(TINY_2D)
    opt = ft.make_optimizer(m, TrainConfig(model=TINY_2D, encoder_lr_scale=0.1, lr=0.01))
    enc = {id(p) for p in ft.encoder_parameters(m)}
    groups = {g["name"]: g for g in opt.param_groups}
    assert {id(p) for p in groups["encoder"]["params"]} == enc
    ft.set_lr(opt, 0.5)
    assert groups["encoder"]["lr"] == pytest.approx(0.05) and groups["rest"]["lr"] == pytest.approx(0.5)
    run = _run(tmp_path, encoder_lr_scale=0.25)
    run.step(_batch(4), 0, 0.5)
    lrs = sorted(g["lr"] for g in run.opt.param_groups)
    assert lrs == pytest.approx([0.025, 0.1])


# -- losses ---------------------------------------------------------------------------------------------------
def _painted(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    store = torch.randint(0, 4, (2, 8, 8), generator=g)  # 0 unpainted, 1 background, 2-3 classes
    return logits, store


def test_label_smoothing_counts_painted_pixels_only():
    logits, store = _painted()
    eps = 0.2
    loss = SparseSegLoss("ce", label_smoothing=eps)(logits, store)
    painted = store > 0
    logp = F.log_softmax(logits, 1).permute(0, 2, 3, 1)[painted]  # (P, C)
    y = (store[painted] - 1).long()
    manual = (-(1 - eps) * logp.gather(1, y[:, None])[:, 0] - eps / 3 * logp.sum(1)).mean()
    assert float(loss) == pytest.approx(float(manual), rel=1e-6)
    other = logits.clone()
    other[~painted.unsqueeze(1).expand_as(other)] = 50.0  # the unpainted pixels do not count
    assert float(SparseSegLoss("ce", label_smoothing=eps)(other, store)) == pytest.approx(float(loss), rel=1e-6)
    assert float(SparseSegLoss("ce")(logits, store)) != pytest.approx(float(loss), rel=1e-3)


def test_class_weights_weight_the_cross_entropy():
    logits, store = _painted(1)
    w = torch.tensor([0.5, 2.0, 1.0])
    loss = SparseSegLoss("ce", class_weights=w.tolist())(logits, store)
    painted = store > 0
    logp = F.log_softmax(logits, 1).permute(0, 2, 3, 1)[painted]
    y = (store[painted] - 1).long()
    manual = (w[y] * -logp.gather(1, y[:, None])[:, 0]).sum() / w[y].sum()
    assert float(loss) == pytest.approx(float(manual), rel=1e-6)
    focal = SparseSegLoss("focal_dice", class_weights=w.tolist())(logits, store)
    assert math.isfinite(float(focal)) and float(focal) != pytest.approx(
        float(SparseSegLoss("focal_dice")(logits, store)), rel=1e-4)


def test_class_weights_of_the_wrong_length_are_refused_at_run_start(tmp_path):
    with pytest.raises(MedsegError, match=r"class_weights has 3 values but the data have 2 classes \(background"):
        next(train(tiny_cfg(tmp_path, class_weights=(1, 2, 3)), blob_data()))
    events, _ = drain(train(tiny_cfg(tmp_path, steps=1, val_every=1, class_weights=(1, 3), label_smoothing=0.1,
                                     library=False), blob_data()))
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, StepEvent))


# -- config, CLI ----------------------------------------------------------------------------------------------
def test_config_round_trip_and_older_configs():
    cfg = TrainConfig(grad_checkpoint=True, accumulate=4, clip_grad=1.5, freeze="encoder", freeze_bn=True,
                      bn_reestimate=3, label_smoothing=0.1, class_weights=(1, 2.5))
    d = json.loads(cfg.to_json())
    assert d["class_weights"] == [1.0, 2.5] and d["freeze"] == "encoder"
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    old = TrainConfig().to_dict()
    for k in ("grad_checkpoint", "accumulate", "clip_grad", "freeze", "freeze_bn", "bn_reestimate",
              "encoder_lr_scale", "label_smoothing", "class_weights"):
        old.pop(k)
    back = TrainConfig.from_dict(old)
    assert back == TrainConfig() and back.accumulate == 1 and back.class_weights is None
    assert TrainConfig.from_dict({"class_weights": "1, 3"}).class_weights == (1.0, 3.0)


@pytest.mark.parametrize("kw,word", [
    (dict(accumulate=0), "accumulate"), (dict(accumulate=2.0), "accumulate"), (dict(clip_grad=-1), "clip_grad"),
    (dict(freeze="decoder"), "freeze"), (dict(encoder_lr_scale=0), "encoder_lr_scale"),
    (dict(freeze="encoder", encoder_lr_scale=0.1), "encoder_lr_scale"), (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(loss="focal_dice", label_smoothing=0.1), "label_smoothing"), (dict(class_weights=[1]), "class_weights"),
    (dict(class_weights=[-1, 2]), "class_weights"), (dict(class_weights=[0, 0]), "class_weights"),
    (dict(class_weights=[1, float("nan")]), "class_weights"), (dict(class_weights="a,b"), "class_weights"),
    (dict(class_weights=[True, 1]), "class_weights"), (dict(bn_reestimate=5), "freeze_bn"),
    (dict(grad_checkpoint="yes"), "grad_checkpoint"),
])
def test_bad_craft_values_are_clear_errors(kw, word):
    with pytest.raises(MedsegError, match=word):
        TrainConfig(**kw)


def test_cli_flags_reach_the_config():
    from napari_medseg.cli.train import _config, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--images", "i", "--masks", "m", "--out", "o"]
    plain = _config(p.parse_args(base), 2)
    assert (plain.grad_checkpoint, plain.accumulate, plain.clip_grad, plain.freeze, plain.freeze_bn,
            plain.encoder_lr_scale, plain.label_smoothing, plain.class_weights) == (
        False, 1, 0.0, "none", False, 1.0, 0.0, None)
    cfg = _config(p.parse_args(base + ["--grad-checkpoint", "--accumulate", "4", "--clip-grad", "2.5", "--freeze",
                                       "encoder", "--freeze-bn", "--bn-reestimate", "8", "--label-smoothing", "0.1",
                                       "--class-weights", "1,2.5,4"]), 2)
    assert (cfg.grad_checkpoint, cfg.accumulate, cfg.clip_grad, cfg.freeze, cfg.freeze_bn, cfg.bn_reestimate,
            cfg.label_smoothing, cfg.class_weights) == (True, 4, 2.5, "encoder", True, 8, 0.1, (1.0, 2.5, 4.0))
    assert _config(p.parse_args(base + ["--encoder-lr-scale", "0.1"]), 2).encoder_lr_scale == 0.1
    with pytest.raises(SystemExit):
        p.parse_args(base + ["--class-weights", "1,x"])
    with pytest.raises(MedsegError, match="accumulate"):
        _config(p.parse_args(base + ["--accumulate", "0"]), 2)


def test_every_registered_model_can_be_checkpointed_and_frozen():
    """Models added to the registry later (e.g. light_unet) get the craft too: an encoder split and
    checkpointed blocks with the same gradients."""
    from napari_medseg.models.registry import available_models, preset, valid_size

    covered = {m.name for _, m, _ in FAMILIES}
    for name in sorted(set(available_models()) - covered):
        mcfg = preset(name)
        torch.manual_seed(0)
        plain = build_model(mcfg).train()
        ck = copy.deepcopy(plain)
        ft.apply_grad_checkpoint(ck)
        enc = {id(p) for p in ft.encoder_parameters(plain)}
        assert 0 < len(enc) < sum(1 for _ in plain.parameters()), name
        s = valid_size(mcfg, 32)
        x = torch.randn(1, mcfg.in_channels, *(s,) * mcfg.spatial_dims)
        g0, g1 = _grads(plain, x), _grads(ck, x)
        scale = max(float(g.abs().max()) for g in g0)
        assert max(float((a - b).abs().max()) for a, b in zip(g0, g1)) <= 1e-6 * scale, name
        assert list(plain.state_dict()) == list(ck.state_dict()), name


def test_unfreeze_encoder_joins_the_optimiser_at_its_own_rate():
    torch.manual_seed(0)
    m = build_model(TINY_2D)
    ft.freeze_encoder(m)
    opt = ft.make_optimizer(m, TrainConfig(model=TINY_2D, freeze="encoder"))
    enc = ft.encoder_parameters(m)
    before = [p.detach().clone() for p in enc]
    x = torch.randn(2, 1, 32, 32)

    def step():
        opt.zero_grad()
        m(x).square().mean().backward()
        ft.set_lr(opt, 0.05)
        opt.step()

    step()
    assert all(torch.equal(a, p) for a, p in zip(before, enc))  # frozen: untouched
    n = ft.unfreeze_encoder(m, opt, 0.05, lr_scale=0.1)
    assert n == len(enc) and all(p.requires_grad for p in enc)
    group = opt.param_groups[-1]
    assert group["name"] == "encoder" and group["lr_scale"] == 0.1 and {id(p) for p in group["params"]} == {
        id(p) for p in enc}
    step()
    assert group["lr"] == pytest.approx(0.005)  # the schedule's rate x the encoder's scale
    assert any(not torch.equal(a, p) for a, p in zip(before, enc))  # it learns now
    assert ft.unfreeze_encoder(m, opt, 0.05) == 0  # nothing left frozen: no second group
    assert len(opt.param_groups) == 2


def test_a_run_unfreezes_the_encoder_part_way(tmp_path):
    cfg = tiny_cfg(tmp_path, steps=4, val_every=4, freeze="encoder", unfreeze_at=0.5, encoder_lr_scale=0.5, lr=0.05,
                   library=False)
    _, result = drain(train(cfg, blob_data()))
    torch.manual_seed(cfg.seed)
    start = build_model(TINY_2D)
    enc = {id(p) for p in ft.encoder_parameters(result.model)}
    names = [n for n, p in result.model.named_parameters() if id(p) in enc]
    s0, s1 = start.state_dict(), result.model.state_dict()
    assert any(not torch.equal(s0[n], s1[n]) for n in names)  # unlike a frozen run (test above)
    for bad, match in (({"unfreeze_at": 0.5}, "needs freeze 'encoder'"),
                       ({"freeze": "encoder", "unfreeze_at": 1.0}, r"\[0, 1\)"),
                       ({"freeze": "encoder", "encoder_lr_scale": 0.5}, "unfreeze_at")):
        with pytest.raises(MedsegError, match=match):
            TrainConfig(model=TINY_2D, **bad)
