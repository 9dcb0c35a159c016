"""Pseudo-labels on the unpainted pixels: targets, CutMix, the loss and its schedule."""

import pytest
import torch

from napari_medseg.training.pseudo_label import (
    PseudoLabels,
    apply_cutmix,
    cutmix_boxes,
    pl_weight,
    pseudo_label_loss,
    teacher_targets,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_painted_and_unconfident_pixels_get_no_pseudo_label():
    logits = torch.randn(1, 2, 4, 4, generator=_gen())
    store = torch.zeros(1, 4, 4, dtype=torch.uint8)
    store[0, 0] = 2  # a painted row keeps its own label (the supervised loss has it)
    conf = torch.full((1, 4, 4), 0.95)
    conf[0, 1] = 0.5  # an unconfident row is ignored, not made background
    pl = PseudoLabels(torch.ones(1, 4, 4, dtype=torch.long), conf)
    loss, ratio = pseudo_label_loss(logits, store, pl, threshold=0.9, class_balance=False)
    assert ratio == pytest.approx(8 / 12)
    ce = torch.nn.functional.cross_entropy(logits, pl.label, reduction="none")[0]
    assert float(loss) == pytest.approx(float(ce[2:].sum() / 12), rel=1e-5)  # FixMatch: / unpainted pixels
    other = logits.clone()
    other[0, :, :2] = 40.0  # changing the painted and unconfident pixels changes nothing
    assert float(pseudo_label_loss(other, store, pl, 0.9, class_balance=False)[0]) == pytest.approx(float(loss))


def test_nothing_confident_gives_zero_with_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True, generator=_gen())
    pl = PseudoLabels(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 0.2))
    loss, ratio = pseudo_label_loss(logits, torch.zeros(1, 4, 4, dtype=torch.uint8), pl, 0.9)
    loss.backward()
    assert float(loss) == 0.0 and ratio == 0.0 and logits.grad is not None


def test_class_balance_lifts_a_rare_pseudo_class():
    logits = torch.zeros(1, 2, 10, 10)
    label = torch.zeros(1, 10, 10, dtype=torch.long)
    label[0, 0, :2] = 1  # 2 of 100 pixels are pseudo-foreground
    logits[0, 0] = 3.0  # predicted background everywhere: the rare foreground pixels are the errors
    pl = PseudoLabels(label, torch.ones(1, 10, 10))
    store = torch.zeros(1, 10, 10, dtype=torch.uint8)
    plain, _ = pseudo_label_loss(logits, store, pl, 0.5, class_balance=False)
    balanced, _ = pseudo_label_loss(logits, store, pl, 0.5, class_balance=True)
    assert float(balanced) > 5 * float(plain)


def test_cutmix_moves_pixels_and_labels_together():
    x = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 2, 16, 16).clone()
    y = torch.arange(3, dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16).clone()
    box = cutmix_boxes((3, 16, 16), p=1.0, gen=_gen(), device=torch.device("cpu"))
    assert box.shape == (3, 16, 16) and all(0.01 < float(b.float().mean()) <= 0.45 for b in box)
    xm, ym = apply_cutmix(box, x, y)
    for i in range(3):
        partner = (i - 1) % 3  # roll(1): sample i takes its box from sample i - 1
        assert torch.all(xm[i, :, box[i]] == partner) and torch.all(ym[i][box[i]] == partner)
        assert torch.all(xm[i, :, ~box[i]] == i) and torch.all(ym[i][~box[i]] == i)
    none = cutmix_boxes((3, 8, 8, 8), p=0.0, gen=_gen(), device=torch.device("cpu"))
    assert not none.any()
    box3 = cutmix_boxes((4, 8, 8, 8), p=1.0, gen=_gen(1), device=torch.device("cpu"))
    assert all(b.any() for b in box3)  # 3D boxes too


def test_schedule_and_teacher_targets():
    assert [pl_weight(p, 1.0, 0.2, 0.4) for p in (0.0, 0.19, 0.3, 0.4, 1.0)] == pytest.approx([0, 0, 0.5, 1, 1])
    assert pl_weight(0.5, 2.0, 0.5, 0.5) == 2.0
    net = torch.nn.Conv2d(1, 3, 1)
    pl = teacher_targets(net, torch.rand(2, 1, 5, 5, generator=_gen()))
    assert pl.label.shape == (2, 5, 5) and pl.label.dtype == torch.long
    assert float(pl.conf.min()) >= 1 / 3 - 1e-6 and float(pl.conf.max()) <= 1.0


@pytest.mark.parametrize("balance", [True, False])
def test_the_weighted_loss_equals_the_loss_over_the_selected_pixels(balance):
    """The loss is a weighted sum (no boolean indexing); it must equal the mean over the selected pixels
    (per pseudo-class when balanced), gradients included."""
    g = _gen(3)
    logits = torch.randn(2, 3, 12, 12, generator=g, requires_grad=True)
    store = (torch.rand(2, 12, 12, generator=g) < 0.3).to(torch.uint8) * 2
    label = torch.randint(0, 3, (2, 12, 12), generator=g)
    label[label == 2] = 0  # class 2 absent: it must not count among the present classes
    pl = PseudoLabels(label, torch.rand(2, 12, 12, generator=g))
    loss, ratio = pseudo_label_loss(logits, store, pl, 0.4, class_balance=balance)
    mask = (store == 0) & (pl.conf >= 0.4)
    ce = torch.nn.functional.cross_entropy(logits, label, reduction="none")[mask]
    n_u = int((store == 0).sum())
    if balance:
        lab = label[mask]
        ref = torch.stack([ce[lab == c].mean() for c in torch.unique(lab)]).mean() * (int(mask.sum()) / n_u)
    else:
        ref = ce.sum() / n_u
    assert ratio == pytest.approx(int(mask.sum()) / n_u)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    (ga,) = torch.autograd.grad(loss, logits)
    (gb,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ga, gb, atol=1e-7)


def test_a_cpu_with_native_bf16_trains_in_bf16_only_with_amp(monkeypatch):
    from napari_medseg.models import devices

    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: True)
    on = devices.select_device("cpu", amp=True)
    assert on.amp_dtype == torch.bfloat16 and not on.use_scaler  # bf16 needs no grad scaler
    assert on.describe().endswith("bf16)") and on.amp_name == "bf16"
    f32 = devices.select_device("cpu", amp=False)
    assert f32.amp_dtype is None and "bf16" not in f32.describe()
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: False)  # emulated bf16 would be slower: float32
    off = devices.select_device("cpu", amp=True)
    assert off.amp_dtype is None and "bf16" not in off.describe()
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    with on.autocast():
        assert conv(x).dtype == torch.bfloat16
    with off.autocast():
        assert conv(x).dtype == torch.float32


def test_bf16_teacher_targets_agree_with_float32():
    """What the bf16 pass changes: the top class where two classes are within bf16's rounding, and the confidence
    by about 1 % of it; the pseudo-labels of a trained-looking (confident) net stay the same almost everywhere."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 3, 1))
    x = torch.randn(4, 3, 64, 64) * 3
    ref = teacher_targets(net, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = teacher_targets(net, x)
    assert low.conf.dtype == torch.float32 and low.label.dtype == torch.int64
    assert float((low.label == ref.label).float().mean()) > 0.98
    assert float((low.conf - ref.conf).abs().max()) < 0.05
    confident = (ref.conf > 0.9) & (ref.conf - 0.9).abs().gt(0.02)
    assert bool(((low.conf > 0.9) == (ref.conf > 0.9))[confident].all())


def test_training_runs_student_and_teacher_under_bf16_autocast_with_amp(tmp_path, monkeypatch):
    """The wiring: on a native-bf16 CPU with amp on, the student's forward pass and the pseudo-label teacher's
    run under bf16 autocast, and the StartEvent says so; with amp off, both in float32."""
    from helpers import drain

    from napari_medseg.models import devices
    from napari_medseg.training import run_state, train

    from ._synth import blob_data, tiny_cfg

    teacher_seen, student_seen = [], []

    def dtype_now():
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None

    def spy_teacher(teacher, x):
        teacher_seen.append(dtype_now())
        return teacher_targets(teacher, x)

    real_forward = run_state.forward_heads

    def spy_student(model, x, deep):
        student_seen.append(dtype_now())
        return real_forward(model, x, deep)

    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(run_state, "teacher_targets", spy_teacher)
    monkeypatch.setattr(run_state, "forward_heads", spy_student)
    data = blob_data((96, 96), n_items=2, fraction=0.1)
    for amp, want in ((True, torch.bfloat16), (False, None)):
        teacher_seen.clear()
        student_seen.clear()
        events, _ = drain(train(tiny_cfg(tmp_path / str(amp), steps=3, device="cpu", amp=amp, semi="pseudo_label",
                                         pl_start=0.0, pl_full=0.0, val_fraction=0.0), data))
        assert teacher_seen and all(d == want for d in teacher_seen)
        assert student_seen and all(d == want for d in student_seen)
        assert ("bf16" in events[0].device) == amp and events[0].amp == ("bf16" if amp else "off")
