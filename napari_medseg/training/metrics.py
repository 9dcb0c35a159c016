"""Validation metrics: Dice on sparse painted pixels; Dice, IoU, sensitivity, specificity, surface Dice and HD95
against dense masks; and a sliding-window predictor for whole held-out images (MONAI ``sliding_window_inference``).

Value conventions: predictions and dense masks use 0 = background, k = class k; sparse targets are label-store
values (0 = not annotated, ignored; v = class v - 1).

The overlap metrics come from one confusion matrix (``scores_from_confusion``, the same formulas for a sparse
matrix over painted pixels and a dense one over every pixel) and surface Dice from edge maps and Euclidean
distance transforms (``surface_dice``): numpy / scipy / torch only, no MONAI. They equal MONAI's
``compute_iou``, ``get_confusion_matrix`` + ``compute_confusion_matrix_metric`` and ``compute_surface_dice``
(tests/training/test_metrics_extra.py), with MONAI's empty-class conventions: NaN where the ground truth lacks
the class (Dice, IoU, sensitivity), NaN for specificity where the class fills the image, surface Dice NaN
where both lack it and 0 where one does. One difference: counts are int64 here, float32 in MONAI, which
rounds counts above 2**24 pixels (a 256^3 volume).
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


SCORE_NAMES = ("dice", "iou", "sensitivity", "specificity")


def scores_from_confusion(conf: torch.Tensor | np.ndarray) -> dict[str, list[float]]:
    """Dice, IoU (Jaccard), sensitivity (recall) and specificity per class of a ``[true, predicted]`` confusion
    matrix (every class, background first).

    NaN where the class has no true pixel (Dice, IoU, sensitivity: MONAI's ``ignore_empty``) or no pixel of
    another class (specificity).
    """
    m = np.asarray(conf, dtype=np.int64)
    tp = np.diag(m)
    fn = m.sum(1) - tp
    fp = m.sum(0) - tp
    tn = m.sum() - tp - fn - fp

    def ratio(num: np.ndarray, den: np.ndarray, defined: np.ndarray) -> list[float]:
        return [float(a / b) if ok and b > 0 else math.nan for a, b, ok in zip(num, den, defined)]

    has_true = (tp + fn) > 0
    return {"dice": ratio(2 * tp, 2 * tp + fp + fn, has_true), "iou": ratio(tp, tp + fp + fn, has_true),
            "sensitivity": ratio(tp, tp + fn, has_true), "specificity": ratio(tn, tn + fp, (tn + fp) > 0)}


def dense_confusion(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts [true, predicted] over every pixel of a dense mask."""
    p = np.asarray(pred).astype(np.int64, copy=False).ravel()
    g = np.asarray(gt).astype(np.int64, copy=False).ravel()
    if p.shape != g.shape:
        raise ValueError(f"prediction and mask differ in size: {np.shape(pred)} and {np.shape(gt)}")
    return np.bincount(g * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a neighbour (face connectivity) outside it or outside the image (MONAI's edges:
    the mask minus its binary erosion)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def _crop(*masks: np.ndarray) -> tuple[np.ndarray, ...]:
    """The masks cropped to the bounding box of their union (nearest-edge distances do not change)."""
    union = np.logical_or.reduce(masks)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(union))
    return tuple(m[box] for m in masks)


def surface_distances(pred: np.ndarray, gt: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (units of ``spacing``; float32 like MONAI) from every edge pixel of the binary mask
    ``pred`` to the nearest edge pixel of ``gt``, and from ``gt``'s edges to ``pred``'s. Both masks non-empty."""
    from scipy import ndimage

    ep, eg = _crop(_edges(np.asarray(pred, bool)), _edges(np.asarray(gt, bool)))
    samp = None if spacing is None else [float(s) for s in spacing]
    d_to_g = ndimage.distance_transform_edt(~eg, sampling=samp)[ep].astype(np.float32)
    d_to_p = ndimage.distance_transform_edt(~ep, sampling=samp)[eg].astype(np.float32)
    return d_to_g, d_to_p


def surface_dice(pred: np.ndarray, gt: np.ndarray, tolerance: float,
                 spacing: Sequence[float] | None = None) -> float:
    """Normalised surface Dice (Nikolov et al. 2021, MONAI ``compute_surface_dice`` without sub-voxels) of two
    binary masks: the fraction of both edges within ``tolerance`` (units of ``spacing``) of the other edge.

    NaN if both masks are empty, 0 if one is."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"the surface Dice tolerance must be finite and >= 0, got {tolerance}")
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if spacing is not None and len(spacing) != p.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {p.ndim}D mask")
    if not p.any() and not g.any():
        return math.nan
    if not p.any() or not g.any():
        return 0.0
    d_pg, d_gp = surface_distances(p, g, spacing)
    tol = np.float32(tolerance)  # MONAI compares float32 distances with the threshold in float32
    return float(int((d_pg <= tol).sum()) + int((d_gp <= tol).sum())) / float(d_pg.size + d_gp.size)


def default_tolerance(spacing: Sequence[float] | None) -> float:
    """Surface Dice tolerance when none is given: one pixel along the coarsest axis (``max(spacing)``, 1 without)."""
    return float(max(spacing)) if spacing is not None else 1.0


class DenseScores(tuple):
    """``(dice, hd95)`` per foreground class, as ``dense_scores`` always returned (unpacks and indexes the same),
    plus every metric by name: ``s["iou"]``, ``s.metrics`` (keys ``DENSE_METRICS``)."""

    metrics: dict[str, list[float]]

    def __new__(cls, metrics: dict[str, list[float]]) -> DenseScores:
        obj = super().__new__(cls, (metrics["dice"], metrics["hd95"]))
        obj.metrics = metrics
        return obj

    def __getnewargs__(self) -> tuple[dict[str, list[float]]]:  # pickling (tuple subclasses need it)
        return (self.metrics,)

    def __getitem__(self, key):  # type: ignore[override]
        return self.metrics[key] if isinstance(key, str) else super().__getitem__(key)


DENSE_METRICS = ("dice", "hd95", "iou", "sensitivity", "specificity", "surface_dice")


def dense_scores(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, n_classes: int,
                 spacing: Sequence[float] | None = None, hd95: bool = True,
                 surface_tolerance: float | Sequence[float] | None = None) -> DenseScores:
    """Every metric per foreground class (1..n_classes-1) of one image ``(*S)`` against its dense mask.

    Returns ``(dice, hd95)`` (a ``DenseScores``; ``["iou"]``, ``["sensitivity"]``, ``["specificity"]``,
    ``["surface_dice"]`` too). NaN where the mask lacks the class (Dice, IoU, sensitivity), where prediction or
    mask lacks it (HD95), where both lack it (surface Dice). HD95 (MONAI) and surface Dice are in the units of
    ``spacing``; ``surface_tolerance`` (one value, or one per foreground class) defaults to one pixel along the
    coarsest axis. ``hd95=False`` skips both distance metrics (NaN).
    """
    conf = dense_confusion(pred, gt, n_classes)
    scores = {k: v[1:] for k, v in scores_from_confusion(conf).items()}
    fg = n_classes - 1
    tol = surface_tolerance if surface_tolerance is not None else default_tolerance(spacing)
    tols = [float(t) for t in tol] if isinstance(tol, Sequence) else [float(tol)] * fg
    if len(tols) != fg:
        raise ValueError(f"give one surface tolerance per foreground class ({fg}), got {len(tols)}")
    hds, nsd = [math.nan] * fg, [math.nan] * fg
    if hd95:
        p, g = np.asarray(pred), np.asarray(gt)
        nsd = [surface_dice(p == c, g == c, tols[c - 1], spacing) for c in range(1, n_classes)]
        hds = _hd95(p, g, n_classes, spacing)
    return DenseScores({"dice": scores["dice"], "hd95": hds, "iou": scores["iou"],
                        "sensitivity": scores["sensitivity"], "specificity": scores["specificity"],
                        "surface_dice": nsd})


def _hd95(pred: np.ndarray, gt: np.ndarray, n_classes: int, spacing: Sequence[float] | None) -> list[float]:
    """HD95 per foreground class via MONAI; NaN where prediction or mask lacks the class."""
    from monai.metrics import HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    po = one_hot(torch.as_tensor(pred).long()[None, None], n_classes)
    go = one_hot(torch.as_tensor(gt).long()[None, None], n_classes)
    present = [bool(po[0, c].any()) and bool(go[0, c].any()) for c in range(1, n_classes)]
    if not any(present):
        return [math.nan] * (n_classes - 1)
    import warnings

    hm = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    kw = {"spacing": list(spacing)} if spacing is not None else {}
    with warnings.catch_warnings():  # MONAI's own deprecated argument inside get_mask_edges
        warnings.simplefilter("ignore", FutureWarning)
        vals = hm(po, go, **kw)[0]
    return [float(v) if ok and math.isfinite(float(v)) else math.nan for v, ok in zip(vals, present)]


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
