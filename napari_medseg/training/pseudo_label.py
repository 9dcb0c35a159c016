"""Confidence-thresholded pseudo-labels on the unpainted pixels, weak view to strong view (``semi="pseudo_label"``).

The family of FixMatch (Sohn et al. 2020) and UniMatch (Yang et al. 2023) for segmentation, in the setting of
Scribble2Label (Lee et al. 2020): the teacher (the run's weight EMA, or the student itself in eval mode)
predicts the weak view (the batch after the shared geometric augmentation, no photometric change); where its
top class probability reaches ``threshold`` on a pixel that is *not painted*, that class becomes a target for
the student's prediction of the strong view (photometric augmentation and, with ``cutmix``, a box pasted from
another patch of the batch, as UniMatch's ``obtain_cutmix_box``). Unconfident pixels are ignored, not made
background (SSL4MIS's FixMatch turns them into class 0). Painted pixels keep their painted label.

The loss is the cross-entropy over the confident unpainted pixels divided by the number of unpainted pixels
(FixMatch's normalisation: its weight grows with the share of confident pixels), optionally balanced per
pseudo-class so that background does not drown the rarer classes. Its weight is 0 until ``start`` of the
run's progress and rises linearly to ``weight`` at ``full``. Cost: one no-grad forward pass of the teacher per
step. Shapes: ``x`` ``(N, C, *S)``, store labels ``(N, *S)`` (0 = unpainted), logits ``(N, K, *S)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PseudoLabels:
    """The teacher's targets for one batch: class ``(N, *S)`` int64 and confidence ``(N, *S)`` float."""

    label: torch.Tensor
    conf: torch.Tensor


@torch.no_grad()
def teacher_targets(teacher: torch.nn.Module, x_weak: torch.Tensor) -> PseudoLabels:
    """Top class and its probability under ``teacher`` (evaluated as it is; callers set eval mode)."""
    p = torch.softmax(teacher(x_weak).float(), dim=1)
    conf, label = p.max(dim=1)
    return PseudoLabels(label, conf)


def cutmix_boxes(shape: tuple[int, ...], p: float, gen: torch.Generator, device: torch.device,
                 area: tuple[float, float] = (0.02, 0.4), aspect: float = 0.3) -> torch.Tensor:
    """A boolean mask ``(N, *S)``: for each sample, with probability ``p``, one random box covering ``area`` of
    the patch (each side's ratio to the others within ``[aspect, 1/aspect]``), else nothing."""
    n, spatial = shape[0], shape[1:]
    nd = len(spatial)
    mask = torch.zeros((n, *spatial), dtype=torch.bool, device=device)
    draws = torch.rand(n, 2 + 2 * nd, generator=gen)
    for i in range(n):
        if float(draws[i, 0]) >= p:
            continue
        frac = area[0] + (area[1] - area[0]) * float(draws[i, 1])
        logs = (draws[i, 2:2 + nd] * 2 - 1) * abs(math.log(aspect)) / 2
        logs = logs - logs.mean()  # side ratios whose product is 1
        sl = []
        for d in range(nd):
            side = int(round(spatial[d] * min(1.0, frac ** (1.0 / nd) * float(torch.exp(logs[d])))))
            side = max(1, min(spatial[d], side))
            start = int(float(draws[i, 2 + nd + d]) * (spatial[d] - side + 1))
            sl.append(slice(start, start + side))
        mask[(i, *sl)] = True
    return mask


def apply_cutmix(box: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Paste, inside ``box`` ``(N, *S)``, each sample's partner (the next sample of the batch, cyclically) into
    it; ``tensors`` are ``(N, C, *S)`` or ``(N, *S)`` and move together so labels follow their pixels."""
    out = []
    for t in tensors:
        partner = t.roll(1, dims=0)
        m = box if t.ndim == box.ndim else box.unsqueeze(1)
        out.append(torch.where(m, partner, t))
    return out


def pseudo_label_loss(logits: torch.Tensor, store: torch.Tensor, pl: PseudoLabels, threshold: float,
                      class_balance: bool = True) -> tuple[torch.Tensor, float]:
    """The loss on the confident unpainted pixels and the share of unpainted pixels that were confident.

    Written as a weighted sum over every pixel (weight 0 off the mask; with ``class_balance`` 1 / (number of
    present pseudo-classes x that pixel's class count)) rather than by selecting the masked pixels: the same
    value, without the gathers of boolean indexing (on a CPU they cost about as much as the cross-entropy)."""
    unpainted = store == 0
    n_unpainted = int(unpainted.sum())
    mask = unpainted & (pl.conf >= threshold)
    n_mask = int(mask.sum())
    if n_unpainted == 0 or n_mask == 0:
        return logits.float().sum() * 0.0, 0.0
    logits = logits if logits.dtype == torch.float32 else logits.float()
    ce = F.cross_entropy(logits, pl.label, reduction="none")
    if class_balance:
        k = logits.shape[1]
        counts = torch.stack([(mask & (pl.label == c)).sum() for c in range(k)]).to(ce.dtype)
        present = int((counts > 0).sum())
        per_pixel = torch.where(counts > 0, 1.0 / (counts.clamp(min=1) * present), torch.zeros_like(counts))
        w = per_pixel[pl.label] * mask
        loss = (ce * w).sum() * (n_mask / n_unpainted)
    else:
        loss = (ce * mask).sum() / n_unpainted
    return loss, n_mask / n_unpainted


def pl_weight(progress: float, weight: float, start: float, full: float) -> float:
    """0 before ``start`` of the run, then linear to ``weight`` at ``full`` (fractions of progress)."""
    if progress < start:
        return 0.0
    if full <= start or progress >= full:
        return weight
    return weight * (progress - start) / (full - start)
