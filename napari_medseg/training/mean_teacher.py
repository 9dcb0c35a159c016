"""Mean Teacher (Tarvainen & Valpola 2017) with the optional uncertainty mask of UA-MT (Yu et al. 2019).

The teacher is an exponential moving average of the student (``torch.optim.swa_utils.AveragedModel`` with
``get_ema_multi_avg_fn``). Each step the student sees a strongly augmented view and the teacher a weakly
augmented view of the same patches; their softmax outputs are pulled together with a weight that ramps up
along a sigmoid. With ``uncertainty_mask`` the consistency counts only where the teacher is confident
(normalised predictive entropy below a threshold that ramps from ``threshold`` to 1).
Tensors: ``x`` ``(N, C, *spatial)`` normalised; probabilities ``(N, C_out, *spatial)``; maps ``(N, *spatial)``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..models.uncertainty import entropy, mean_softmax, predictive_entropy

log = logging.getLogger(__name__)


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """``exp(-5 (1 - t)^2)`` for ``t = step / rampup_steps`` clipped to [0, 1] (Laine & Aila 2017)."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step, 0), rampup_steps) / rampup_steps
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def make_teacher(student: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``student`` (parameters and buffers), frozen and in eval mode."""
    teacher = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    return teacher


@torch.no_grad()
def teacher_uncertainty(teacher: nn.Module, x: torch.Tensor, n_samples: int = 8, noise_std: float = 0.1) -> torch.Tensor:
    """Per-pixel teacher uncertainty ``(N, *spatial)`` in [0, 1]: the "annotate here next" hint.

    ``teacher`` may be an ``AveragedModel`` or any model; ``x`` is normalised ``(N, C, *spatial)``.
    """
    module = teacher.module if isinstance(teacher, AveragedModel) else teacher
    was_training = module.training
    module.eval()
    try:
        return predictive_entropy(module, x, n_samples=n_samples, noise_std=noise_std)
    finally:
        module.train(was_training)


class MeanTeacher:
    """The teacher and the consistency schedule of one run."""

    def __init__(self, student: nn.Module, decay: float = 0.99, weight: float = 1.0, rampup_steps: int = 200,
                 uncertainty_mask: bool = False, threshold: float = 0.75, n_samples: int = 4,
                 noise_std: float = 0.1, warmup: bool = False) -> None:
        self.teacher = make_teacher(student, decay)
        self.decay = decay
        self.warmup = warmup
        self.weight = weight
        self.rampup_steps = rampup_steps
        self.uncertainty_mask = uncertainty_mask
        self.threshold = threshold
        self.n_samples = n_samples
        self.noise_std = noise_std

    @property
    def module(self) -> nn.Module:
        return self.teacher.module

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.teacher.module.load_state_dict(sd)
        # the teacher already holds averaged weights: keep them instead of copying the student next update
        self.teacher.n_averaged.fill_(1)
        self.warmup = False  # nor let a warm-up pull it to the student

    def cons_weight(self, step: int) -> float:
        return self.weight * sigmoid_rampup(step, self.rampup_steps)

    def current_threshold(self, step: int) -> float:
        return self.threshold + (1.0 - self.threshold) * sigmoid_rampup(step, self.rampup_steps)

    @torch.no_grad()
    def targets(self, x_weak: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher probabilities on ``x_weak`` and, with the uncertainty mask, the confident-pixel mask."""
        m = self.teacher.module
        if not self.uncertainty_mask:
            noisy = x_weak + torch.clamp(torch.randn_like(x_weak) * self.noise_std, -2 * self.noise_std,
                                         2 * self.noise_std)
            return torch.softmax(m(noisy).float(), dim=1), None
        probs = mean_softmax(m, x_weak, n_samples=self.n_samples, noise_std=self.noise_std)
        unc = entropy(probs)
        return probs, unc < self.current_threshold(step)

    def decay_at(self, step: int) -> float:
        """The EMA decay of update ``step`` (0-based): ``min(decay, 1 - 1/(step + 1))`` with the warm-up of
        Tarvainen & Valpola's code, so early teachers are not mostly the random initialisation."""
        return min(self.decay, 1.0 - 1.0 / (step + 1)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, student: nn.Module, step: int | None = None) -> None:
        if self.warmup and step is not None:
            self.teacher.multi_avg_fn = get_ema_multi_avg_fn(self.decay_at(step))
        self.teacher.update_parameters(student)
