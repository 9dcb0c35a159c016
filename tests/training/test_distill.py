"""Knowledge distillation (``training.distill``): the loss, a real distillation run, and the clear errors."""

from __future__ import annotations

import pytest
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.models import Checkpoint, ModelConfig, load_checkpoint, save_checkpoint
from napari_medseg.training import TrainConfig, run_training
from napari_medseg.training.distill import kd_loss
from napari_medseg.training.events import StepEvent
from training._synth import TINY_2D, blob_data, tiny_cfg


@pytest.mark.parametrize("mode", ["pixel", "channel"])
def test_kd_loss_is_zero_at_the_teacher_and_pulls_towards_it(mode):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 3, 8, 8, generator=g)
    assert float(kd_loss(t, t, 2.0, mode)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    loss = kd_loss(s, t, 2.0, mode)
    assert float(loss) > 0
    loss.backward()
    with torch.no_grad():
        closer = s - 0.5 * s.grad
    assert float(kd_loss(closer, t, 2.0, mode)) < float(loss)
    with pytest.raises(MedsegError, match="kd_mode"):
        kd_loss(t, t, 2.0, "voxel")


def test_pixel_kd_equals_the_kl_of_softened_distributions():
    t, s = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    pt, ps = torch.softmax(t / 3, 1), torch.softmax(s / 3, 1)
    want = (pt * (pt.log() - ps.log())).sum(1).mean() * 9
    assert float(kd_loss(s, t, 3.0, "pixel")) == pytest.approx(float(want), rel=1e-5)


def _teacher(tmp_path) -> str:
    res = run_training(tiny_cfg(tmp_path / "t", steps=12, library=False), blob_data(dense=True))
    return res.best_checkpoint or res.last_checkpoint


def test_a_distillation_run_learns_the_teacher(tmp_path):
    teacher = _teacher(tmp_path)
    student = ModelConfig(name="unet", channels=(4, 8), num_res_units=0)  # another, smaller architecture
    cfg = tiny_cfg(tmp_path / "s", model=student, steps=24, library=False, distill_from=teacher, kd_weight=5.0,
                   unlabelled_ratio=1.0, val_every=100, lr=1e-2)
    assert cfg.split_batch() == (4, 4)  # windows from anywhere join the painted patches
    events: list = []
    res = run_training(cfg, blob_data(unlabelled=1), on_event=events.append)
    kd = [e.loss_cons for e in events if isinstance(e, StepEvent)]
    assert len(kd) == 24 and all(k >= 0 for k in kd)
    assert sum(kd[-6:]) / 6 < 0.7 * sum(kd[:6]) / 6  # the student comes closer to the teacher
    assert res.norm == load_checkpoint(teacher).norm  # the student sees the teacher's numbers
    ck = load_checkpoint(res.last_checkpoint)
    assert ck.model_config.channels == (4, 8)
    assert ck.meta["train_config"]["distill_from"] == teacher


def test_distillation_errors(tmp_path):
    teacher = _teacher(tmp_path)
    with pytest.raises(MedsegError, match="does not combine"):
        TrainConfig(distill_from=teacher, semi="pseudo_label")
    with pytest.raises(MedsegError, match="kd_temperature"):
        TrainConfig(kd_temperature=0)
    ck = load_checkpoint(teacher)
    three = ModelConfig(**{**TINY_2D.to_dict(), "out_channels": 3})
    from napari_medseg.models import build_model

    wrong = save_checkpoint(tmp_path / "three.pt", Checkpoint(three, build_model(three).state_dict(), ck.classes,
                                                              ck.norm))
    with pytest.raises(MedsegError, match="3 classes"):
        run_training(tiny_cfg(tmp_path / "w", library=False, distill_from=str(wrong)), blob_data())
    small = ModelConfig(name="unet", channels=(4, 8), num_res_units=0)  # takes multiples of 2; the teacher of 4
    with pytest.raises(MedsegError, match=r"the teacher .*multiples of 4.*got \(34, 34\)"):
        run_training(tiny_cfg(tmp_path / "z", model=small, patch_size=(34,), library=False, distill_from=teacher),
                     blob_data())
    plain = tmp_path / "plain.pt"
    torch.save(build_model(TINY_2D).state_dict(), plain)
    with pytest.raises(MedsegError, match="teacher must be"):
        run_training(tiny_cfg(tmp_path / "p", library=False, distill_from=str(plain)), blob_data())


def test_distil_command_trains_a_light_student(tmp_path, capsys):
    import imageio.v3 as iio
    import numpy as np

    from napari_medseg.cli import main
    from training._synth import blobs

    teacher = _teacher(tmp_path)
    img, m = blobs((96, 96))
    iio.imwrite(tmp_path / "img.png", img)
    lab = np.where(np.random.default_rng(0).random(m.shape) < 0.1, m + 1, 0).astype(np.uint8)
    iio.imwrite(tmp_path / "lab.png", lab)
    base = ["--image", str(tmp_path / "img.png"), "--labels", str(tmp_path / "lab.png"), "--steps", "2",
            "--patch-size", "32", "--batch-size", "2", "--no-progress", "--threads", "1", "--no-library"]
    assert main(["distil", str(teacher), *base, "--out", str(tmp_path / "d")]) == 0
    ck = load_checkpoint(tmp_path / "d" / "last.pt")
    assert ck.model_config.name == "light_unet"
    tc = ck.meta["train_config"]
    assert tc["distill_from"] == str(teacher) and tc["unlabelled_ratio"] == 1.0
    assert main(["distil", str(tmp_path / "nope.pt"), *base, "--out", str(tmp_path / "e")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_a_teacher_with_its_classes_in_another_order_is_refused(tmp_path):
    from napari_medseg.core.classes import ClassSchema

    teacher = _teacher(tmp_path)
    data = blob_data()
    names = tuple(load_checkpoint(teacher).classes.names)
    data.classes = ClassSchema((names[1], names[0]))
    with pytest.raises(MedsegError, match="in its order"):
        run_training(tiny_cfg(tmp_path / "o", library=False, distill_from=teacher), data)
    with pytest.raises(MedsegError, match="distill_from is empty"):
        TrainConfig(distill_from=" ")
