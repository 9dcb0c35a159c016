"""Losses on painted pixels only, and the Mean Teacher consistency term.

Targets are label-store values ``(N, *spatial)``: 0 = not annotated (ignored), 1 = background, 2.. classes.
They map to model channels ``v - 1`` and the unannotated pixels to ``-1``, which MONAI's ``DiceLoss`` and
``FocalLoss`` and torch's cross-entropy ignore (``ignore_index=-1``). Logits are ``(N, C, *spatial)``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss

log = logging.getLogger(__name__)
IGNORE = -1


def store_to_target(store: torch.Tensor) -> torch.Tensor:
    """Label-store values ``(N, *S)`` -> class targets ``(N, 1, *S)`` int64, unannotated = -1."""
    return store.long().sub(1).unsqueeze(1)


class SparseSegLoss(nn.Module):
    """Cross-entropy (or focal) plus Dice, both over painted pixels only.

    ``forward(logits, store)`` returns the loss (0 with a gradient path if nothing is painted in the batch).
    """

    def __init__(self, kind: str = "ce_dice", focal_gamma: float = 2.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.kind = kind
        self.dice_weight = dice_weight
        # batch=True: one Dice over all patches of the batch, which is what sparse scribbles need.
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, batch=True, ignore_index=IGNORE,
                             smooth_nr=1e-5, smooth_dr=1e-5)
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=focal_gamma, ignore_index=IGNORE)

    def forward(self, logits: torch.Tensor, store: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = store_to_target(store)
        if not bool((target >= 0).any()):
            return logits.sum() * 0.0
        if self.kind == "focal_dice":
            first = self.focal(logits, target)
        else:
            first = F.cross_entropy(logits, target[:, 0], ignore_index=IGNORE)
        if self.kind == "ce":
            return first
        return first + self.dice_weight * self.dice(logits, target)


def consistency_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of softmax probabilities (Mean Teacher / UA-MT).

    ``mask`` ``(N, *S)`` (1 = keep, e.g. confident teacher pixels) averages over kept pixels only.
    """
    p = torch.softmax(student_logits.float(), dim=1)
    se = (p - teacher_probs.float()).pow(2).mean(dim=1)
    if mask is None:
        return se.mean()
    m = mask.to(se.dtype)
    return (se * m).sum() / m.sum().clamp_min(1.0)
