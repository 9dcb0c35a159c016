"""Validation metrics: Dice on sparse painted pixels, Dice and HD95 against dense masks (MONAI), and a
sliding-window predictor for whole held-out images (MONAI ``sliding_window_inference``).

Value conventions: predictions and dense masks use 0 = background, k = class k; sparse targets are label-store
values (0 = not annotated, ignored; v = class v - 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

log = logging.getLogger(__name__)


def confusion(pred: torch.Tensor, store: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n_classes, n_classes)`` counts [true, predicted] over painted pixels (store value > 0)."""
    t = store.long().flatten() - 1
    p = pred.long().flatten()
    keep = t >= 0
    idx = t[keep] * n_classes + p[keep]
    return torch.bincount(idx, minlength=n_classes * n_classes).view(n_classes, n_classes).cpu()


def dice_from_confusion(conf: torch.Tensor) -> list[float]:
    """Dice per class from a confusion matrix; NaN for a class with no true and no predicted pixels."""
    conf = conf.double()
    tp = conf.diag()
    fn = conf.sum(1) - tp
    fp = conf.sum(0) - tp
    out = []
    for c in range(conf.shape[0]):
        den = 2 * tp[c] + fp[c] + fn[c]
        out.append(float(2 * tp[c] / den) if den > 0 else math.nan)
    return out


def dense_scores(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, n_classes: int,
                 spacing: Sequence[float] | None = None, hd95: bool = True) -> tuple[list[float], list[float]]:
    """Dice and HD95 per foreground class (1..n_classes-1) of one image ``(*S)``, via MONAI metrics.

    NaN where a class is absent from both (Dice) or from either (HD95). HD95 is in the units of ``spacing``.
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    p = torch.as_tensor(np.asarray(pred)).long()[None, None]
    g = torch.as_tensor(np.asarray(gt)).long()[None, None]
    po, go = one_hot(p, n_classes), one_hot(g, n_classes)
    dm = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    dice = [float(v) for v in dm(po, go)[0]]
    hds = [math.nan] * (n_classes - 1)
    if hd95:
        hm = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        kw = {"spacing": list(spacing)} if spacing is not None else {}
        present = [bool(po[0, c].any()) and bool(go[0, c].any()) for c in range(1, n_classes)]
        if any(present):
            import warnings

            with warnings.catch_warnings():  # MONAI's own deprecated argument inside get_mask_edges
                warnings.simplefilter("ignore", FutureWarning)
                vals = hm(po, go, **kw)[0]
            hds = [float(v) if ok and math.isfinite(float(v)) else math.nan for v, ok in zip(vals, present)]
    return dice, hds


@torch.no_grad()
def sliding_window_predict(model: nn.Module, image: np.ndarray, norm, patch: Sequence[int],
                           device: torch.device | str = "cpu", overlap: float = 0.25, batch_size: int = 4,
                           autocast=None) -> torch.Tensor:
    """Class probabilities ``(C_out, *S)`` (float32, CPU) of a whole image ``(C, *S)`` with Gaussian blending.

    Used to score held-out images; the plugin's tiled predictor for slides lives in ``inference``.
    """
    import contextlib

    from monai.inferers import sliding_window_inference

    x = norm.apply(torch.as_tensor(np.ascontiguousarray(image))[None].to(device))
    was = model.training
    model.eval()
    try:
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = sliding_window_inference(x, tuple(patch), batch_size, model, overlap=overlap, mode="gaussian")
    finally:
        model.train(was)
    return torch.softmax(out.float(), dim=1)[0].cpu()
