"""Boundary-aware losses and deep supervision, beside the painted-pixel loss (``losses.SparseSegLoss``).

**Boundary losses** (``TrainConfig.boundary_loss``): MONAI's ``BoundaryLoss`` (Kervadec et al. 2019: the softmax
weighted by the signed distance to the true boundary, negative inside) or ``HausdorffDTLoss`` (Karimi &
Salcudean 2019: squared errors weighted by the distance transforms of prediction and truth). Both need the
distance to the *true* boundary, which scribbles leave undefined (an unpainted pixel may be inside or outside):
the term counts only patches painted in full (every pixel labelled, as the dense masks of image/mask folders
give), and a run whose data hold no dense mask is refused (``check_boundary_data``). Its weight ramps up linearly
over the first ``boundary_rampup`` of the run (Kervadec: the region loss leads, the boundary term refines).

**Deep supervision** (``TrainConfig.deep_supervision``): for models whose ``heads(x)`` returns several
full-size logit maps (U-Net++'s nested decoders, shallowest first; nnFormer's decoder levels, coarsest first),
the painted-pixel loss of every head, weighted 1, 1/2, 1/4 ... from the last (MONAI ``DeepSupervisionLoss``'s
"exp" mode); the forward output (U-Net++: the heads' mean; nnFormer: the last head), what prediction uses, is
what the other terms see.

MONAI's losses are used because they are the field's tested implementations (Apache-2.0, already a dependency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError

BOUNDARY_KINDS = ("none", "boundary", "hausdorff")


def check_boundary_data(kind: str, items: Sequence[Any]) -> None:
    """Refuse a boundary loss when no training item has a dense mask (scribbles only)."""
    if kind != "none" and not any(getattr(it, "dense_mask", None) is not None for it in items):
        raise MedsegError(f"boundary_loss {kind!r} needs images labelled in full (dense masks: folders of image/mask "
                          "pairs, --label-fraction 1.0): with scribbles the distance to an object's boundary is "
                          "unknown. Use boundary_loss 'none' for painted labels")


def has_heads(model: nn.Module) -> bool:
    return callable(getattr(model, "heads", None))


def check_deep_supervision(model: nn.Module, name: str) -> None:
    if not has_heads(model):
        raise MedsegError(f"deep_supervision needs a model with several output heads (unetpp, nnformer); {name!r} "
                          "has one")


class BoundaryTerm(nn.Module):
    """``forward(logits, store) -> loss`` over the patches of the batch painted in full (0 if none)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        from monai.losses import BoundaryLoss, HausdorffDTLoss

        if kind not in BOUNDARY_KINDS[1:]:
            raise MedsegError(f"boundary_loss must be one of {list(BOUNDARY_KINDS)}, got {kind!r}")
        self.kind = kind
        self.loss = (BoundaryLoss(softmax=True, to_onehot_y=True) if kind == "boundary"
                     else HausdorffDTLoss(softmax=True, to_onehot_y=True))

    def forward(self, logits: torch.Tensor, store: torch.Tensor) -> torch.Tensor:
        full = (store > 0).flatten(1).all(dim=1)
        if not bool(full.any()):
            return logits.float().sum() * 0.0
        target = store[full].long().sub(1).unsqueeze(1)
        return self.loss(logits[full].float(), target)


def ramp(progress: float, rampup: float) -> float:
    """0 -> 1 linearly over the first ``rampup`` of the run (1 from the start when ``rampup`` is 0)."""
    return 1.0 if rampup <= 0 else min(1.0, max(0.0, progress / rampup))


class DeepSupervision:
    """The painted-pixel loss over every head, weighted 1, 1/2, 1/4 ... from the deepest (the last head)."""

    def __init__(self, loss: Callable[..., torch.Tensor]) -> None:
        self.loss = loss

    @staticmethod
    def weights(n: int) -> list[float]:
        w = [0.5 ** (n - 1 - i) for i in range(n)]  # shallowest first, the deepest weighs 1
        s = sum(w)
        return [v / s for v in w]

    def __call__(self, heads: Sequence[torch.Tensor], store: torch.Tensor,
                 *pixel_weights: torch.Tensor) -> torch.Tensor:
        """``pixel_weights``: none, or the per-pixel weights every head's loss takes (``SparseSegLoss``)."""
        return sum(w * self.loss(h, store, *pixel_weights) for w, h in zip(self.weights(len(heads)), heads))


def forward_heads(model: nn.Module, x: torch.Tensor, deep: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The logits the other terms see and, with deep supervision, the heads they are the mean of."""
    if not deep:
        return model(x), None
    heads = model.heads(x)
    if getattr(model, "output_of_heads", "mean") == "last":  # e.g. nnformer: its output is the finest head
        return heads[-1], heads
    return torch.stack(heads).mean(0), heads
