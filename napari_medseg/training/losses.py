"""Losses on painted pixels only, and the Mean Teacher consistency term.

Targets are label-store values ``(N, *spatial)``: 0 = not annotated (ignored), 1 = background, 2.. classes.
They map to model channels ``v - 1`` and the unannotated pixels to ``-1``, which MONAI's ``DiceLoss`` and
``FocalLoss`` and torch's cross-entropy ignore (``ignore_index=-1``). Logits are ``(N, C, *spatial)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
    ``label_smoothing`` (epsilon) smooths the cross-entropy's targets (torch's: (1 - eps) on the painted class,
    eps / C spread over all); ``class_weights`` (one per model channel, background first) weight the
    cross-entropy or focal term per target class (a weighted mean over the painted pixels). ``forward``'s
    ``pixel_weights`` ``(N, *S)`` (e.g. ``contact.ContactWeights``) weight the cross-entropy per pixel too (the
    focal term takes none). The Dice term is neither smoothed nor weighted.
    """

    def __init__(self, kind: str = "ce_dice", focal_gamma: float = 2.0, dice_weight: float = 1.0,
                 label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.dice_weight = dice_weight
        self.label_smoothing = float(label_smoothing)
        w = None if class_weights is None else torch.tensor([float(v) for v in class_weights])
        self.register_buffer("class_weights", w, persistent=False)
        self.class_weights: torch.Tensor | None
        # batch=True: one Dice over all patches of the batch, which is what sparse scribbles need.
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, batch=True, ignore_index=IGNORE,
                             smooth_nr=1e-5, smooth_dr=1e-5)
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=focal_gamma, ignore_index=IGNORE,
                               weight=None if class_weights is None else [float(v) for v in class_weights])

    def forward(self, logits: torch.Tensor, store: torch.Tensor,
                pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        target = store_to_target(store)
        if not bool((target >= 0).any()):
            return logits.sum() * 0.0
        if self.kind == "focal_dice":
            if pixel_weights is not None:
                raise ValueError("the focal term takes no pixel weights")
            first = self.focal(logits, target)
        else:
            w = None if self.class_weights is None else self.class_weights.to(logits.device)
            first = F.cross_entropy(logits, target[:, 0], weight=w, ignore_index=IGNORE,
                                    label_smoothing=self.label_smoothing,
                                    reduction="mean" if pixel_weights is None else "none")
            if pixel_weights is not None:  # the weighted mean torch takes with class weights, per pixel too
                t = target[:, 0]
                per = pixel_weights.to(first.dtype) * (t >= 0)
                if w is not None:
                    per = per * w[t.clamp_min(0)]
                first = (first * pixel_weights.to(first.dtype)).sum() / per.sum().clamp_min(1e-12)
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
