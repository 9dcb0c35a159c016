"""Instance segmentation metrics on two instance label images (0 = no object, other values = object ids; 2D or
3D; ids need not be consecutive):

- ``aji(gt, pred)``: aggregated Jaccard index (Kumar et al. 2017, the MoNuSeg metric): every ground-truth
  object is paired with the predicted object of highest IoU; the sum of their intersections over the sum of their
  unions plus the area of every predicted object that no ground-truth object chose;
- ``panoptic_quality(gt, pred) -> (pq, sq, dq)`` (Kirillov et al. 2019) for one class: pairs at IoU > 0.5 are
  matches (they are unique); ``sq`` the mean IoU of the matches, ``dq`` = TP / (TP + FP / 2 + FN / 2),
  ``pq = sq * dq``;
- ``detection_f1(gt, pred, iou=0.5)``: F1 of detection, a pair counting as a match at IoU > ``iou`` (one-to-one;
  below 0.5 the pairing that maximises the summed IoU, ``scipy.optimize.linear_sum_assignment``);
- ``count_error(gt, pred)``: |n_pred - n_gt| / n_gt.

All come from one sparse overlap table of the two images (``np.unique`` of pixel pair codes), never a loop over
objects reading the image. Empty inputs: with no object in either image every metric is NaN (nothing to score;
``np.nanmean`` skips it); with objects only in ``pred`` ``aji``, ``pq``, ``sq``, ``dq`` and ``detection_f1`` are
0 and ``count_error`` is infinite; with objects only in ``gt`` they are 0 and ``count_error`` is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_medseg.core.errors import MedsegError


@dataclass
class Overlaps:
    """The sparse overlap table of two instance images, objects numbered 1..n in each."""

    n_gt: int
    n_pred: int
    area_gt: np.ndarray  # (n_gt + 1,) pixels per gt object; [0] = no object
    area_pred: np.ndarray  # (n_pred + 1,)
    g: np.ndarray  # (K,) gt object of each overlapping pair
    p: np.ndarray  # (K,) pred object of each pair
    inter: np.ndarray  # (K,) pixels in both

    @property
    def union(self) -> np.ndarray:
        return self.area_gt[self.g] + self.area_pred[self.p] - self.inter

    @property
    def iou(self) -> np.ndarray:
        return self.inter / np.maximum(self.union, 1)


def _consecutive(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat ids 0 (no object) and 1..n for the distinct non-zero values of ``a``."""
    u, inv = np.unique(a.ravel(), return_inverse=True)
    inv = inv.ravel().astype(np.int64)
    if len(u) and u[0] == 0:
        return inv, len(u) - 1
    return inv + 1, len(u)


def overlaps(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    """The overlap table of ``gt`` and ``pred`` (same shape, integer ids, 0 = no object)."""
    g, p = np.asarray(gt), np.asarray(pred)
    if g.shape != p.shape:
        raise MedsegError(f"the ground truth {g.shape} and the prediction {p.shape} must have the same shape")
    for name, a in (("ground truth", g), ("prediction", p)):
        if a.dtype.kind not in "uib":
            raise MedsegError(f"the {name} must be an instance label image of integer ids, got {a.dtype}")
        if a.dtype.kind == "i" and a.size and int(a.min()) < 0:
            raise MedsegError(f"the {name} holds negative ids; use 0 for 'no object' and positive ids")
    gi, ng = _consecutive(g)
    pi, npred = _consecutive(p)
    area_g = np.bincount(gi, minlength=ng + 1)
    area_p = np.bincount(pi, minlength=npred + 1)
    both = (gi > 0) & (pi > 0)
    codes, inter = np.unique(gi[both] * (npred + 1) + pi[both], return_counts=True)
    return Overlaps(ng, npred, area_g, area_p, codes // (npred + 1), codes % (npred + 1), inter.astype(np.int64))


def _as_overlaps(gt, pred) -> Overlaps:
    return gt if isinstance(gt, Overlaps) else overlaps(gt, pred)


def aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017), in [0, 1]."""
    o = _as_overlaps(gt, pred)
    if o.n_gt == 0:
        return math.nan if o.n_pred == 0 else 0.0
    inter_sum = union_sum = 0
    used = np.zeros(o.n_pred + 1, bool)
    paired = np.zeros(o.n_gt + 1, bool)
    if len(o.g):
        iou = o.iou
        # per gt object, its pair of highest IoU (ties: the lower pred id)
        order = np.lexsort((o.p, -iou, o.g))
        first = np.ones(len(order), bool)
        first[1:] = o.g[order][1:] != o.g[order][:-1]
        best = order[first]
        inter_sum = int(o.inter[best].sum())
        union_sum = int(o.union[best].sum())
        used[o.p[best]] = True
        paired[o.g[best]] = True
    unpaired_gt = int(o.area_gt[1:][~paired[1:]].sum())
    unused_pred = int(o.area_pred[1:][~used[1:]].sum())
    return inter_sum / (union_sum + unpaired_gt + unused_pred)


def _matches(o: Overlaps, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices into the pair table, their IoU) of a one-to-one matching at IoU > ``iou``."""
    ious = o.iou
    cand = np.flatnonzero(ious > iou)
    if iou >= 0.5 or len(cand) == 0:  # above 0.5 an object overlaps at most one other that much
        return cand, ious[cand]
    from scipy.optimize import linear_sum_assignment

    rows, r_inv = np.unique(o.g[cand], return_inverse=True)
    cols, c_inv = np.unique(o.p[cand], return_inverse=True)
    m = np.zeros((len(rows), len(cols)))
    m[r_inv, c_inv] = ious[cand]
    r, c = linear_sum_assignment(m, maximize=True)
    ok = m[r, c] > iou
    lookup = {(int(a), int(b)): k for k, a, b in zip(cand, r_inv, c_inv)}
    picked = np.asarray([lookup[(int(a), int(b))] for a, b in zip(r[ok], c[ok])], np.int64)
    return picked, ious[picked]


def panoptic_quality(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """(PQ, SQ, DQ) of one class (Kirillov et al. 2019), matches at IoU > 0.5."""
    o = _as_overlaps(gt, pred)
    if o.n_gt == 0 and o.n_pred == 0:
        return math.nan, math.nan, math.nan
    _, ious = _matches(o, 0.5)
    tp = len(ious)
    fp, fn = o.n_pred - tp, o.n_gt - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(ious.mean()) if tp else 0.0
    return sq * dq, sq, dq


def detection_f1(gt: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> float:
    """F1 of object detection: a predicted object is a true positive when it matches a ground-truth object
    one-to-one at IoU > ``iou``."""
    if not 0 <= iou < 1:
        raise MedsegError(f"the IoU threshold must be in [0, 1), got {iou}")
    o = _as_overlaps(gt, pred)
    if o.n_gt == 0 and o.n_pred == 0:
        return math.nan
    tp = len(_matches(o, iou)[0])
    return 2 * tp / (o.n_gt + o.n_pred)


def count_error(gt: np.ndarray, pred: np.ndarray) -> float:
    """Relative count error |n_pred - n_gt| / n_gt (NaN when both are empty, infinite when only ``gt`` is)."""
    o = _as_overlaps(gt, pred)
    if o.n_gt == 0:
        return math.nan if o.n_pred == 0 else math.inf
    return abs(o.n_pred - o.n_gt) / o.n_gt


def instance_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every metric of this module from one overlap table: ``aji``, ``pq``, ``sq``, ``dq``, ``f1_50``,
    ``count_error``, ``n_gt``, ``n_pred``."""
    o = overlaps(gt, pred)
    pq, sq, dq = panoptic_quality(o, None)
    return {"aji": aji(o, None), "pq": pq, "sq": sq, "dq": dq, "f1_50": detection_f1(o, None, 0.5),
            "count_error": count_error(o, None), "n_gt": float(o.n_gt), "n_pred": float(o.n_pred)}
