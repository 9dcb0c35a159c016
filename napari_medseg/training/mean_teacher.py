"""Mean Teacher (Tarvainen & Valpola 2017) with the optional uncertainty mask of UA-MT (Yu et al. 2019).

The teacher is the run's ``WeightEMA`` of the student. Each step the student sees a strongly augmented view and
the teacher the weak view of the same patches (the shared geometry, plus ``noise_std`` Gaussian noise, none by
default: the reference codes add 0.1 to z-scored volumes, about 0.1 image SD, while 0.1 on the [0, 1] inputs
here is 0.4 SD, noisier than anything the student sees). Their softmax outputs are pulled together with a
weight that ramps up along a sigmoid over ``rampup`` of the run's progress (UA-MT and SSL4MIS: 0.1 over the
whole run). With ``uncertainty_mask`` the consistency counts only where the teacher is confident: normalised
predictive entropy below a threshold that ramps from ``threshold`` to 1 over the *whole* run, as UA-MT's
does over ``max_iterations``. Progress is the fraction of the run done, in [0, 1] (steps or time budget,
whichever is further). Tensors: ``x`` ``(N, C, *spatial)`` normalised; probabilities ``(N, C_out, *spatial)``;
maps ``(N, *spatial)``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from napari_medseg.models.uncertainty import entropy, mean_softmax, predictive_entropy
from napari_medseg.training.ema import WeightEMA

log = logging.getLogger(__name__)


def sigmoid_rampup(t: float) -> float:
    """``exp(-5 (1 - t)^2)`` for ``t`` clipped to [0, 1] (Laine & Aila 2017)."""
    t = min(max(float(t), 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


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
    """The consistency targets and schedule of one run; the teacher is ``ema.module``."""

    def __init__(self, ema: WeightEMA, weight: float = 0.1, rampup: float = 1.0, uncertainty_mask: bool = False,
                 threshold: float = 0.75, n_samples: int = 4, noise_std: float = 0.0) -> None:
        self.ema = ema
        self.weight = weight
        self.rampup = rampup
        self.uncertainty_mask = uncertainty_mask
        self.threshold = threshold
        self.n_samples = n_samples
        self.noise_std = noise_std

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def cons_weight(self, progress: float) -> float:
        return self.weight * (sigmoid_rampup(progress / self.rampup) if self.rampup > 0 else 1.0)

    def current_threshold(self, progress: float) -> float:
        return self.threshold + (1.0 - self.threshold) * sigmoid_rampup(progress)

    @torch.no_grad()
    def targets(self, x_weak: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher probabilities on ``x_weak`` and, with the uncertainty mask, the confident-pixel mask."""
        m = self.module
        if not self.uncertainty_mask:
            x = x_weak
            if self.noise_std > 0:
                x = x_weak + torch.clamp(torch.randn_like(x_weak) * self.noise_std, -2 * self.noise_std,
                                         2 * self.noise_std)
            return torch.softmax(m(x).float(), dim=1), None
        # without input noise the passes would be identical: one pass, the entropy of its softmax
        n = self.n_samples if self.noise_std > 0 else 1
        probs = mean_softmax(m, x_weak, n_samples=n, noise_std=self.noise_std)
        unc = entropy(probs)
        return probs, unc < self.current_threshold(progress)
