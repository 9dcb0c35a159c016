"""Knowledge distillation: a small student learns to predict what a trained model (the teacher) predicts, on
every pixel of the user's own images, beside the painted labels ("distil for deployment").

``TrainConfig.distill_from`` names the teacher (a napari-medseg checkpoint, or a bioimage.io package of a
napari-medseg architecture: any architecture, also another one than the student's). Each training step the
teacher (frozen, eval mode, its prediction weights: the weight average when its run predicted with it) sees
exactly the view the student sees, and the student pays

    loss = supervised loss on the painted pixels + kd_weight * KD(student, teacher)

over every pixel of every patch, the painted patches and ``unlabelled_ratio`` x as many windows from anywhere
in the images (the unpainted pixels are where the teacher's knowledge is new to the student). Two forms of
``KD`` (``kd_mode``):

- ``"pixel"``: logit distillation (Hinton et al. 2015): per pixel ``T^2 KL(softmax(t / T) || softmax(s / T))``,
  the mean over pixels;
- ``"channel"``: channel-wise distillation for dense prediction (Shu et al., ICCV 2021): per class channel the
  logits become a distribution over the patch's pixels (``softmax`` over space, temperature ``T``), and
  ``T^2 KL`` of the teacher's to the student's, the mean over channels: where each class is, not how sure
  each pixel is.

The student takes the teacher's input normalisation (as when fine-tuning from a checkpoint), so both see the
same numbers. The teacher's classes and input channels must match the data's (a clear error otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.checkpoint import Checkpoint, load_state_dict_report, predicts_with_average
from napari_medseg.models.registry import build_model

KD_MODES = ("pixel", "channel")


class Teacher:
    """The frozen teacher of a distillation run: its module (on the training device) and its checkpoint."""

    def __init__(self, module: nn.Module, checkpoint: Checkpoint, label: str) -> None:
        self.module = module
        self.checkpoint = checkpoint
        self.label = label

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def load_teacher(path: str | Path, *, n_channels: int, n_classes: int, spatial_dims: int, device: torch.device,
                 memory_format: Any = None, class_names: tuple[str, ...] = ()) -> Teacher:
    """The teacher named by ``TrainConfig.distill_from``; a ``MedsegError`` when it cannot teach this data."""
    from napari_medseg.training.rounds import resolve_init

    iw = resolve_init(path)
    if iw is None or iw.checkpoint is None:
        raise MedsegError(f"{path}: a teacher must be a napari-medseg checkpoint or a bioimage.io package of a "
                          "napari-medseg architecture (a plain state dict does not say which network it is)")
    ck = iw.checkpoint
    mc = ck.model_config
    if mc.out_channels != n_classes:
        raise MedsegError(f"the teacher {path} predicts {mc.out_channels} classes (with background) but the labels "
                          f"have {n_classes}; distil with the classes the teacher was trained on")
    names = tuple(ck.classes.names) if ck.classes is not None else ()
    if class_names and sorted(names) == sorted(class_names) and tuple(class_names) != names:  # swapped order
        raise MedsegError(f"the teacher {path} names its classes {list(names[1:])} but the labels {list(class_names[1:])}: "
                          "distil with the teacher's classes, in its order")
    if mc.in_channels != n_channels:
        raise MedsegError(f"the teacher {path} takes {mc.in_channels} input channel(s) but the images have "
                          f"{n_channels}")
    if mc.spatial_dims != spatial_dims:
        raise MedsegError(f"the teacher {path} is a {mc.spatial_dims}D model and the student {spatial_dims}D; "
                          "distil into a student of the teacher's dimensions")
    module = build_model(mc)
    sd = ck.teacher_state_dict if predicts_with_average(ck) else ck.state_dict
    load_state_dict_report(module, sd, strict=True)
    module = module.to(device)
    if memory_format is not None:
        module = module.to(memory_format=memory_format)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return Teacher(module, ck, str(path))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0, mode: str = "pixel"
            ) -> torch.Tensor:
    """Distillation loss of ``student`` logits ``(N, C, *S)`` towards ``teacher`` logits (see the module)."""
    if student.shape != teacher.shape:
        raise MedsegError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    t = float(temperature)
    s, q = student.float() / t, teacher.float() / t
    if mode == "pixel":
        kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(q, 1), log_target=True, reduction="none").sum(1)
        return kl.mean() * t * t
    if mode == "channel":
        s2, q2 = s.flatten(2), q.flatten(2)  # (N, C, pixels): a distribution over space per channel
        kl = F.kl_div(F.log_softmax(s2, 2), F.log_softmax(q2, 2), log_target=True, reduction="none").sum(2)
        return kl.mean() * t * t
    raise MedsegError(f"kd_mode must be one of {', '.join(KD_MODES)}, got {mode!r}")
