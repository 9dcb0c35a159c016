"""An exponential moving average of the student's weights: the Mean Teacher's and the pseudo-label teacher,
and the weights to predict with (``eval_model="ema"``).

``WeightEMA`` wraps ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (parameters and
buffers). With ``warmup`` the decay of update ``t`` is ``min(decay, 1 - 1/(t + 1))`` (Tarvainen & Valpola's
code; UA-MT and SSL4MIS use it), so the early average is not mostly the random initialisation. Keeping it
costs one lerp of the weights per step, no forward pass.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_teacher(student: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``student`` (parameters and buffers), frozen and in eval mode."""
    teacher = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    return teacher


class WeightEMA:
    """The running average of one run's student."""

    def __init__(self, student: nn.Module, decay: float = 0.99, warmup: bool = True) -> None:
        self.averaged = make_teacher(student, decay)
        self.decay = decay
        self.warmup = warmup

    @property
    def module(self) -> nn.Module:
        """The averaged network (eval mode, no gradients)."""
        return self.averaged.module

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Start from an average saved in a checkpoint (a later round), not from a copy of the student."""
        self.averaged.module.load_state_dict(sd)
        self.averaged.n_averaged.fill_(1)  # keep these weights instead of copying the student next update
        self.warmup = False  # nor let a warm-up pull them to the student

    def decay_at(self, step: int) -> float:
        """The decay of update ``step`` (0-based)."""
        return min(self.decay, 1.0 - 1.0 / (step + 1)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, student: nn.Module, step: int | None = None) -> None:
        if self.warmup and step is not None:
            self.averaged.multi_avg_fn = get_ema_multi_avg_fn(self.decay_at(step))
        self.averaged.update_parameters(student)
