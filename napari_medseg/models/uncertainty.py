"""Per-pixel model uncertainty: the "annotate here next" map and the UA-MT consistency mask.

Predictive entropy of the mean softmax over ``n_samples`` stochastic forward passes (Gaussian input noise,
and dropout if the model has any), as in UA-MT (Yu et al., MICCAI 2019). Shapes: ``x`` is
``(N, C_in, *spatial)`` already normalised; the result is ``(N, *spatial)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


@torch.no_grad()
def mean_softmax(model: nn.Module, x: torch.Tensor, n_samples: int = 4, noise_std: float = 0.1) -> torch.Tensor:
    """Mean class probabilities ``(N, C_out, *spatial)`` over noisy passes (one clean pass if n_samples <= 1)."""
    if n_samples <= 1:
        return torch.softmax(model(x).float(), dim=1)
    acc = None
    for _ in range(n_samples):
        noisy = x + torch.clamp(torch.randn_like(x) * noise_std, -2 * noise_std, 2 * noise_std)
        p = torch.softmax(model(noisy).float(), dim=1)
        acc = p if acc is None else acc.add_(p)
    return acc / n_samples


def entropy(probs: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """Entropy over the class axis (dim 1) of ``probs``; divided by log(C) into [0, 1] if ``normalized``."""
    h = -(probs * torch.log(probs.clamp_min(1e-8))).sum(dim=1)
    return h / math.log(probs.shape[1]) if normalized else h


@torch.no_grad()
def predictive_entropy(model: nn.Module, x: torch.Tensor, n_samples: int = 4, noise_std: float = 0.1,
                       normalized: bool = True) -> torch.Tensor:
    """Entropy of the mean softmax over stochastic passes: ``(N, *spatial)``, in [0, 1] if normalised."""
    return entropy(mean_softmax(model, x, n_samples, noise_std), normalized)
