import math

import pytest
import torch

from napari_medseg.training.ema import WeightEMA
from napari_medseg.training.losses import SparseSegLoss, consistency_loss
from napari_medseg.training.mean_teacher import MeanTeacher, sigmoid_rampup, teacher_uncertainty

from ._synth import TINY_2D


def _store(shape=(2, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, shape, generator=g).to(torch.uint8)  # 0 unannotated, 1 bg, 2 fg


@pytest.mark.parametrize("kind", ["ce_dice", "focal_dice", "ce"])
def test_unannotated_pixels_do_not_count(kind):
    loss = SparseSegLoss(kind)
    y = _store()
    logits = torch.randn(2, 2, 16, 16)
    other = logits.clone()
    other[:, :, ][(y == 0).unsqueeze(1).expand_as(other)] = 50.0  # change only unannotated pixels
    assert torch.allclose(loss(logits, y), loss(other, y), atol=1e-5)


def test_perfect_and_wrong_predictions():
    loss = SparseSegLoss("ce_dice")
    y = _store()
    t = (y.long() - 1).clamp(min=0)
    perfect = torch.nn.functional.one_hot(t, 2).permute(0, 3, 1, 2).float() * 20 - 10
    assert float(loss(perfect, y)) < 1e-3
    assert float(loss(-perfect, y)) > 2.0


def test_nothing_painted_gives_zero_with_gradient():
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    out = SparseSegLoss()(logits, torch.zeros(1, 8, 8, dtype=torch.uint8))
    out.backward()
    assert float(out) == 0.0 and logits.grad is not None


def test_consistency_loss_and_mask():
    s = torch.randn(2, 3, 8, 8)
    p = torch.softmax(s, 1)
    assert float(consistency_loss(s, p)) < 1e-10
    q = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    assert float(consistency_loss(s, q, mask)) == 0.0
    mask[0, :4] = True
    full = float(consistency_loss(s, q))
    part = float(consistency_loss(s, q, mask))
    assert part > 0 and not math.isclose(part, full)


def test_sigmoid_rampup():
    vals = [sigmoid_rampup(t) for t in (0, 0.25, 0.5, 1.0, 2.0)]
    assert vals[0] == pytest.approx(math.exp(-5))
    assert vals == sorted(vals) and vals[-1] == 1.0 and vals[-2] == 1.0
    assert sigmoid_rampup(-1) == pytest.approx(math.exp(-5))


def test_teacher_is_an_ema_of_the_student():
    from napari_medseg.models import build_model

    torch.manual_seed(0)
    student = build_model(TINY_2D)
    mt = WeightEMA(student, decay=0.9, warmup=False)
    mt.update(student)  # first update copies
    before = {k: v.clone() for k, v in mt.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    mt.update(student)
    name = next(n for n, _ in student.named_parameters())
    got = mt.module.state_dict()[name]
    want = 0.9 * before[name] + 0.1 * student.state_dict()[name]
    assert torch.allclose(got, want, atol=1e-6)
    assert not any(p.requires_grad for p in mt.averaged.parameters())


def test_ema_warmup_follows_the_student_early():
    from napari_medseg.models import build_model

    torch.manual_seed(0)
    student = build_model(TINY_2D)
    mt = WeightEMA(student, decay=0.99, warmup=True)
    assert [mt.decay_at(s) for s in (0, 1, 9, 1000)] == pytest.approx([0.0, 0.5, 0.9, 0.99])
    mt.update(student, 0)  # first update copies
    name = next(n for n, _ in student.named_parameters())
    before = mt.module.state_dict()[name].clone()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    mt.update(student, 1)  # decay 0.5 instead of 0.99
    want = 0.5 * before + 0.5 * student.state_dict()[name]
    assert torch.allclose(mt.module.state_dict()[name], want, atol=1e-6)
    mt.load_state_dict(mt.module.state_dict())  # a teacher from a checkpoint keeps its average
    assert mt.decay_at(1) == 0.99


def test_uncertainty_map_and_mask():
    from napari_medseg.models import build_model

    torch.manual_seed(0)
    student = build_model(TINY_2D)
    mt = MeanTeacher(WeightEMA(student), uncertainty_mask=True, threshold=0.5, n_samples=2, noise_std=0.05)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    u = teacher_uncertainty(mt.ema.averaged, x, n_samples=3)
    assert u.shape == (2, 16, 16) and float(u.min()) >= 0 and float(u.max()) <= 1 + 1e-6
    probs, mask = mt.targets(x, progress=0.0)
    assert probs.shape == (2, 2, 16, 16) and mask.shape == (2, 16, 16) and mask.dtype == torch.bool
    # UA-MT's threshold rises over the whole run: still below 1 at 60 % (it was 1.0 once a short ramp ended)
    assert mt.current_threshold(0.0) < mt.current_threshold(0.6) < 0.99
    assert mt.current_threshold(1.0) == pytest.approx(1.0)
    assert student.training  # the map did not leave the student in eval mode


def test_teacher_sees_the_weak_view_without_noise_by_default():
    from napari_medseg.models import build_model

    torch.manual_seed(0)
    student = build_model(TINY_2D)
    mt = MeanTeacher(WeightEMA(student))
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    a, _ = mt.targets(x, 0.5)
    b, _ = mt.targets(x, 0.5)
    assert torch.equal(a, b)  # deterministic: no input noise
    assert mt.cons_weight(0.0) == pytest.approx(0.1 * math.exp(-5)) and mt.cons_weight(1.0) == pytest.approx(0.1)
