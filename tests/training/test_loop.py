import threading
import time

import numpy as np
import pytest
import torch
from helpers import drain

from napari_medseg.core import heap
from napari_medseg.models.checkpoint import load_checkpoint, load_model
from napari_medseg.training import (
    CheckpointEvent,
    DoneEvent,
    PreviewEvent,
    StartEvent,
    StepEvent,
    ValidationEvent,
    WarningEvent,
    run_training,
    train,
)
from napari_medseg.training import loop as loop_mod

from ._synth import blob_data, tiny_cfg


def test_events_checkpoints_and_meta(tmp_path):
    data = blob_data((96, 96), n_items=2, unlabelled=1, dense=True, fraction=0.05)
    cfg = tiny_cfg(tmp_path, steps=6, val_every=3, val_fraction=0.3, semi="mean_teacher", unlabelled_ratio=0.5)
    events, result = drain(train(cfg, data))
    assert isinstance(events[0], StartEvent) and isinstance(events[-1], DoneEvent)
    start = events[0]
    assert start.n_labelled == 2 and start.n_unlabelled == 1 and start.batch == (4, 2) and start.norm is not None
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == list(range(1, 7))
    assert all(np.isfinite(e.loss) and e.batch_size == 6 and e.data_wait_s >= 0 for e in steps)
    assert steps[-1].cons_weight > steps[0].cons_weight > 0
    assert [e.progress for e in steps] == pytest.approx([i / 6 for i in range(1, 7)])
    vals = [e for e in events if isinstance(e, ValidationEvent)]
    assert [v.step for v in vals] == [3, 6]
    assert set(vals[0].dice_per_class) == {"background", "foreground"} and vals[0].hd95 is not None
    # IoU, sensitivity, specificity on the held-out paint and, with dense masks, surface Dice: in the event
    v = vals[-1]
    assert set(v.scores) == {"iou", "sensitivity", "specificity"} and set(v.scores["iou"]) == {"foreground"}
    d, j = v.dice_per_class["foreground"], v.scores["iou"]["foreground"]
    assert j == pytest.approx(d / (2 - d))  # IoU and Dice of the same pixels: J = D / (2 - D)
    assert set(v.dense_scores) == {"iou", "sensitivity", "specificity", "surface_dice"}
    assert 0.0 <= v.dense_scores["surface_dice"]["foreground"] <= 1.0
    line = v.summary()
    assert line.startswith(f"Dice {v.mean_dice:.3f}") and "IoU" in line and "surface Dice" in line
    cks = [e for e in events if isinstance(e, CheckpointEvent)]
    assert {c.kind for c in cks} == {"last", "best"}
    done = events[-1]
    assert done.reason == "steps" and done.steps == 6 and result.steps == 6
    ck = load_checkpoint(done.last_checkpoint)
    assert (tmp_path / "ck" / "last.json").is_file()
    for key in ("round", "step", "patch_size", "level", "pixel_size", "axes", "val_seed", "val_block", "mean_dice",
                "train_config"):
        assert key in ck.meta, key
    assert ck.meta["round"] == 1 and ck.meta["axes"] == "YX" and ck.norm == start.norm
    assert ck.teacher_state_dict is not None and ck.classes == data.classes
    assert ck.meta["semi"] == "mean_teacher" and ck.meta["predict_with"] == "ema"
    model, _ = load_model(done.best_checkpoint)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.slow
def test_learns_blobs(tmp_path):
    # 160 steps: at 80 the validation Dice sat on the bound (0.82 float32, 0.80 bf16, 0.65-0.69 with seed 1);
    # at 160 it is 0.91-0.92 either way
    data = blob_data((128, 128), n_items=2, dense=True, fraction=0.03)
    cfg = tiny_cfg(tmp_path, steps=160, val_every=160, val_fraction=0.3, patch_size=(48,), batch_size=8)
    result = run_training(cfg, data)
    assert result.best_dice is not None and result.best_dice > 0.8


def test_stop_flag_saves_a_checkpoint_quickly(tmp_path):
    stop = threading.Event()
    gen = train(tiny_cfg(tmp_path, steps=10**6, val_every=10**6), blob_data(), stop=stop)
    t_stop = None
    for ev in gen:
        if isinstance(ev, StepEvent) and ev.step == 3:
            stop.set()
            t_stop = time.perf_counter()
        if isinstance(ev, DoneEvent):
            assert ev.reason == "stopped" and ev.steps == 3 and ev.last_checkpoint
            assert load_checkpoint(ev.last_checkpoint).meta["step"] == 3
            break
    assert time.perf_counter() - t_stop < 5.0  # generous: the bound that matters is one step


def test_training_reuses_freed_memory_while_it_runs(tmp_path, monkeypatch):
    for k in (heap.ENV, *heap.USER_TUNING, "GLIBC_TUNABLES"):  # a user's own tuning would leave glibc alone
        monkeypatch.delenv(k, raising=False)
    seen = [heap.reusing() for ev in train(tiny_cfg(tmp_path, steps=3, val_every=10**6), blob_data())
            if isinstance(ev, StepEvent)]
    assert seen == [heap._glibc() is not None] * 3 and not heap.reusing()  # glibc's own settings once it ends


def test_time_budget(tmp_path):
    events, res = drain(train(tiny_cfg(tmp_path, steps=10**6, time_budget_s=0.5, val_every=10**6),
                                  blob_data()))
    assert events[-1].reason == "time" and res.steps >= 1


def test_out_of_memory_halves_the_batch(tmp_path, monkeypatch):
    calls = []

    def fault(step):
        if step == 2 and not calls:
            calls.append(step)
            raise torch.OutOfMemoryError("CUDA out of memory. (simulated)")

    monkeypatch.setattr(loop_mod, "_fault_hook", fault)
    events, res = drain(train(tiny_cfg(tmp_path, steps=5, batch_size=4), blob_data()))
    warn = [e for e in events if isinstance(e, WarningEvent) and "out of memory" in e.message]
    assert len(warn) == 1
    sizes = [e.batch_size for e in events if isinstance(e, StepEvent)]
    assert sizes == [4, 4, 2, 2, 2] and res.steps == 5


def test_preview_hook_runs_in_eval_and_inference_mode(tmp_path):
    seen = []

    def hook(model, teacher, step):
        seen.append((model.training, torch.is_inference_mode_enabled(), teacher is not None, step))
        return {"step": step}

    events, res = drain(train(tiny_cfg(tmp_path, steps=4, val_every=2, eval_model="ema"),
                                  blob_data((96, 96), fraction=0.1), preview_hook=hook, preview_every_s=0.0))
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert previews and previews[0].payload == {"step": previews[0].step}
    assert all(s[0] is False and s[1] and s[2] for s in seen)  # the preview is given the weights predicted with
    assert res.model is not None


def test_rounds_continue_from_the_checkpoint(tmp_path):
    data = blob_data((128, 128), n_items=2, fraction=0.05)
    cfg = tiny_cfg(tmp_path, steps=3, val_every=3, val_fraction=0.3)
    ev1, r1 = drain(train(cfg, data))
    ck1 = load_checkpoint(r1.last_checkpoint)
    cfg2 = cfg.replace(checkpoint_dir=str(tmp_path / "round2"), seed=99)  # a new seed must not move validation
    ev2, r2 = drain(train(cfg2, data, init=r1.last_checkpoint))
    start2 = ev2[0]
    assert start2.round == 2 and start2.init_report.startswith(f"{len(ck1.state_dict)} matched, 0 missing")
    ck2 = load_checkpoint(r2.last_checkpoint)
    assert ck2.meta["round"] == 2 and ck2.meta["val_seed"] == ck1.meta["val_seed"]
    assert ck2.meta["val_block"] == ck1.meta["val_block"] and ck2.norm == ck1.norm
    # a plain state dict works too, with a report
    ev3, _ = drain(train(cfg.replace(checkpoint_dir=str(tmp_path / "r3")), data, init=ck1.state_dict))
    assert ev3[0].init_report.startswith(f"{len(ck1.state_dict)} matched")


@pytest.mark.parametrize("kw", [dict(semi="mean_teacher", uncertainty_mask=True, uncertainty_samples=2,
                                     teacher_noise=0.05), dict(semi="none", eval_model="student"),
                                dict(semi="mean_teacher", loss="focal_dice", eval_model="teacher", optimizer="sgd",
                                     lr_schedule="poly"),
                                dict(semi="mean_teacher", consistency_on="unlabelled", unlabelled_ratio=0.5,
                                     ema_warmup=False),
                                dict(semi="pseudo_label", pl_start=0.0, pl_full=0.0, pl_threshold=0.0),
                                dict(semi="pseudo_label", pl_teacher="self", eval_model="student", pl_cutmix=0.0, pl_class_balance=False,
                                     pl_start=0.0, pl_full=0.0, pl_threshold=0.0)])
def test_variants_run(tmp_path, kw):
    events, res = drain(train(tiny_cfg(tmp_path, steps=3, **kw), blob_data(fraction=0.1)))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 3 and all(np.isfinite(e.loss) for e in steps)
    if kw.get("semi") == "none":
        assert res.teacher is None and all(e.loss_cons == 0 for e in steps)
    if kw.get("semi") == "pseudo_label":  # threshold 0: every unpainted pixel gets a pseudo-label
        assert all(e.pl_mask_ratio == pytest.approx(1.0) and e.loss_cons > 0 for e in steps)
        assert (res.teacher is None) == (kw.get("pl_teacher") == "self")


def test_3d_and_slice_wise(tmp_path):
    data = blob_data((24, 24, 24), fraction=0.05)
    events, res = drain(train(tiny_cfg(tmp_path, dims=3, steps=2, batch_size=2), data))
    assert events[0].patch_size == (16, 16, 16) and res.steps == 2
    events, res = drain(train(tiny_cfg(tmp_path, dims=2, steps=2, patch_size=(16,)), data))
    ck = load_checkpoint(res.last_checkpoint)
    assert ck.meta["slice_wise"] is True and ck.meta["spatial_dims"] == 2


def test_ct_volumes_use_a_hu_window(tmp_path):
    from napari_medseg.core.source import ImageSource
    from napari_medseg.training import TrainingData, TrainingItem

    data = blob_data((16, 32, 32), fraction=0.1)
    it = data.items[0]
    hu = it.image.levels[0].astype(np.int16) * 4 - 600
    src = ImageSource([hu], "ZYX", (2.0, 0.7, 0.7), unit="millimeter", modality="CT", name="ct")
    ct = TrainingData([TrainingItem(src, it.labels, name="ct")], data.classes)
    events, res = drain(train(tiny_cfg(tmp_path, dims=3, steps=1, ct_window=(50.0, 350.0)), ct))
    assert events[0].norm.mode == "ct_window" and events[0].norm.low == (50.0 - 175.0,)
    meta = load_checkpoint(res.last_checkpoint).meta
    assert meta["pixel_size"] == [2.0, 0.7, 0.7] and meta["unit"] == "millimeter" and meta["modality"] == "CT"


def test_a_non_finite_loss_skips_the_step(tmp_path, monkeypatch):
    from napari_medseg.training.losses import SparseSegLoss

    real = SparseSegLoss.forward
    calls = []

    def flaky(self, logits, store):
        calls.append(1)
        out = real(self, logits, store)
        return out * float("nan") if len(calls) == 2 else out

    monkeypatch.setattr(SparseSegLoss, "forward", flaky)
    events, res = drain(train(tiny_cfg(tmp_path, steps=3), blob_data()))
    assert any("skipped" in e.message for e in events if isinstance(e, WarningEvent))
    assert res.steps == 3 and all(torch.isfinite(p).all() for p in res.model.parameters())


def test_an_unexpected_failure_keeps_the_last_state(tmp_path, monkeypatch):
    def fault(step):
        if step == 3:
            raise RuntimeError("tile decoder crashed")

    monkeypatch.setattr(loop_mod, "_fault_hook", fault)
    with pytest.raises(RuntimeError, match="tile decoder"):
        drain(train(tiny_cfg(tmp_path, steps=10, val_every=100), blob_data()))
    assert load_checkpoint(tmp_path / "ck" / "last.pt").meta["step"] == 3


def test_consistency_on_unlabelled_patches_only(tmp_path, monkeypatch):
    from napari_medseg.training.mean_teacher import MeanTeacher

    seen: list[int] = []
    orig = MeanTeacher.targets
    monkeypatch.setattr(MeanTeacher, "targets", lambda self, x, p: (seen.append(x.shape[0]), orig(self, x, p))[1])
    cfg = tiny_cfg(tmp_path, steps=2, batch_size=2, semi="mean_teacher", unlabelled_ratio=1.0,
                   consistency_on="unlabelled")
    drain(train(cfg, blob_data(fraction=0.1)))
    assert seen == [2, 2]  # the teacher sees the 2 unlabelled patches of each 2 + 2 batch
    seen.clear()
    drain(train(cfg.replace(consistency_on="all", checkpoint_dir=str(tmp_path / "all")), blob_data(fraction=0.1)))
    assert seen == [4, 4]



def test_the_schedule_follows_the_time_budget():
    """A run ended by its time budget anneals like one ended by its steps (it trained at the peak rate to the
    end when --time-budget set steps to 10**9)."""
    from napari_medseg.training import TrainConfig
    from napari_medseg.training.run_state import lr_factor, run_progress

    cfg = TrainConfig(steps=10**9, time_budget_s=100.0, warmup_steps=5)
    assert run_progress(cfg, 50, 25.0) == pytest.approx(0.25)
    assert run_progress(cfg, 50, 250.0) == 1.0
    assert lr_factor(cfg, 2, 0.0) == pytest.approx(3 / 5)  # warm-up by steps
    late = [lr_factor(cfg, 1000, run_progress(cfg, 1000, t)) for t in (10.0, 50.0, 99.0)]
    assert late == sorted(late, reverse=True) and late[0] > 0.9 and late[-1] < 0.06
    by_steps = TrainConfig(steps=200)
    assert lr_factor(by_steps, 150, run_progress(by_steps, 150, 1e6)) == pytest.approx(
        lr_factor(by_steps, 150, 0.75))  # no budget: steps alone decide


def test_time_budgeted_run_reaches_a_low_learning_rate(tmp_path):
    events, res = drain(train(tiny_cfg(tmp_path, steps=10**9, time_budget_s=2.0, val_every=10**6,
                                           warmup_steps=1), blob_data()))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert events[-1].reason == "time" and len(steps) >= 3
    assert steps[-1].progress > 0.5 and steps[-1].lr < 0.6 * steps[0].lr
    assert [e.progress for e in steps] == sorted(e.progress for e in steps)


def test_prediction_uses_the_weight_average_when_asked(tmp_path):
    from napari_medseg.models.checkpoint import load_checkpoint

    data = blob_data(fraction=0.1)
    _, res = drain(train(tiny_cfg(tmp_path, steps=4, eval_model="ema", val_every=10**6), data))
    ck = load_checkpoint(res.last_checkpoint)
    assert ck.meta["predict_with"] == "ema" and ck.teacher_state_dict is not None
    model, _ = load_model(res.last_checkpoint)  # follows the run's choice
    student, _ = load_model(res.last_checkpoint, teacher=False)
    name = next(iter(ck.state_dict))
    assert torch.equal(model.state_dict()[name], ck.teacher_state_dict[name])
    assert not torch.equal(model.state_dict()[name], student.state_dict()[name])
    _, plain = drain(train(tiny_cfg(tmp_path / "plain", steps=2, val_every=10**6, eval_model="student"), data))
    assert load_checkpoint(plain.last_checkpoint).teacher_state_dict is None  # nothing kept when not asked


def test_pseudo_label_precision_is_reported_at_validation(tmp_path):
    data = blob_data((96, 96), n_items=2, fraction=0.1)
    events, _ = drain(train(tiny_cfg(tmp_path, steps=4, val_every=2, val_fraction=0.3, semi="pseudo_label",
                                         pl_threshold=0.0), data))
    vals = [e for e in events if isinstance(e, ValidationEvent)]
    assert vals and all(v.pl_coverage == pytest.approx(1.0) and 0.0 <= v.pl_precision <= 1.0 for v in vals)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert steps[0].cons_weight == 0.0 and steps[-1].cons_weight == 1.0  # ramps in at 20-40 % of the run


def test_starting_from_a_checkpoint_takes_its_widths(tmp_path):
    """The form's widths may differ from a checkpoint of the same architecture (an older preset): the run takes the
    checkpoint's, says so, and does not refuse."""
    from napari_medseg.models import load_checkpoint
    from napari_medseg.training import run_training
    from napari_medseg.training.events import WarningEvent
    from training._synth import blob_data, tiny_cfg

    first = run_training(tiny_cfg(tmp_path / "a", steps=2, library=False), blob_data())
    events: list = []
    cfg = tiny_cfg(tmp_path / "b", steps=2, library=False)
    cfg = cfg.replace(model=cfg.model.replace(channels=(4, 8)))
    res = run_training(cfg, blob_data(), init=first.last_checkpoint, on_event=events.append)
    assert load_checkpoint(res.last_checkpoint).model_config.channels == load_checkpoint(
        first.last_checkpoint).model_config.channels
    assert any(isinstance(e, WarningEvent) and "architecture settings" in e.message for e in events)


def test_auto_semi_takes_pseudo_labels_for_localised_paint_and_says_so(tmp_path):
    """semi="auto" is resolved from the data before the first event: the run trains the chosen method (its steps
    carry a pseudo-label mask ratio) and the StartEvent and checkpoint name it."""
    data = blob_data((96, 96), n_items=1, fraction=0.05)
    events, result = drain(train(tiny_cfg(tmp_path, steps=4, semi="auto", library=False), data))
    start = events[0]
    assert start.semi == "pseudo_label" and start.semi_reason.startswith("auto: pseudo-labels")
    assert load_checkpoint(result.last_checkpoint).meta["train_config"]["semi"] == "pseudo_label"
    events, _ = drain(train(tiny_cfg(tmp_path, steps=2, semi="none", library=False), data))
    assert events[0].semi == "none" and events[0].semi_reason == ""


def test_auto_semi_adds_the_gated_crf_for_strokes_spread_over_the_images(tmp_path):
    """Paint spread over more than AUTO_SEMI_MAX_PATCHES patches of 2D images: labels with the gated CRF loss at
    AUTO_CRF_WEIGHT, said in the StartEvent and recorded in the checkpoint's config (which a resumed or next
    round reads); the same paint with semi="none" trains without it."""
    from napari_medseg.training.config import AUTO_CRF_WEIGHT

    data = blob_data((192, 192), n_items=2, fraction=0.05)  # 36 patches of 32^2 per image, 5 % painted
    events, result = drain(train(tiny_cfg(tmp_path, steps=3, semi="auto", library=False), data))
    start = events[0]
    assert start.semi == "none" and start.semi_reason.startswith("auto: labels + boundary regulariser")
    assert start.crf_weight == AUTO_CRF_WEIGHT  # the choice as data, for the widget to compare
    saved = load_checkpoint(result.last_checkpoint).meta["train_config"]
    assert saved["semi"] == "none" and saved["crf_weight"] == AUTO_CRF_WEIGHT
    events, result = drain(train(tiny_cfg(tmp_path, steps=2, semi="none", library=False), data))
    assert events[0].crf_weight == 0 and not load_checkpoint(result.last_checkpoint).meta["train_config"]["crf_weight"]
