"""Instance metrics (AJI, PQ, detection F1, count error) against hand-computed small cases."""

import math

import numpy as np
import pytest

from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.metrics import (
    aji,
    count_error,
    detection_f1,
    instance_scores,
    overlaps,
    panoptic_quality,
)


def _two_squares() -> np.ndarray:
    gt = np.zeros((10, 20), np.int32)
    gt[1:5, 1:5] = 3  # 16 px, ids need not be consecutive
    gt[1:5, 10:14] = 7  # 16 px
    return gt


def test_identical_scores_one():
    gt = _two_squares()
    pred = np.where(gt == 3, 11, np.where(gt == 7, 2, 0)).astype(np.uint32)  # other ids, same objects
    assert aji(gt, pred) == 1.0
    assert panoptic_quality(gt, pred) == (1.0, 1.0, 1.0)
    assert detection_f1(gt, pred) == 1.0 and count_error(gt, pred) == 0.0


def test_one_object_split_in_two():
    gt = _two_squares()
    pred = gt.copy()
    pred[1:5, 1:3] = 20  # object 3 split into 8 px (id 20) + 8 px (id 3)
    # AJI: gt 3's best pred has IoU 8/16 (tie: the lower id, 3): inter 8, union 16; gt 7: 16/16;
    # pred 20 is never chosen: its 8 px join the union -> (8 + 16) / (16 + 16 + 8)
    assert aji(gt, pred) == pytest.approx(24 / 40)
    # PQ: IoU 0.5 is no match (needs > 0.5): tp = 1 (IoU 1), fp = 2, fn = 1 -> dq = 1 / 2.5, sq = 1
    pq, sq, dq = panoptic_quality(gt, pred)
    assert (pq, sq, dq) == pytest.approx((0.4, 1.0, 0.4))
    assert detection_f1(gt, pred) == pytest.approx(2 * 1 / (2 + 3))
    assert count_error(gt, pred) == pytest.approx(0.5)
    # a lower threshold matches the half (one-to-one): 2 tp
    assert detection_f1(gt, pred, iou=0.4) == pytest.approx(2 * 2 / 5)


def test_missing_and_shifted_objects():
    gt = _two_squares()
    pred = np.zeros_like(gt)
    pred[2:6, 1:5] = 1  # gt 3 shifted by one row: inter 12, union 20, IoU 0.6
    # gt 7 missing: its 16 px only in the union
    assert aji(gt, pred) == pytest.approx(12 / (20 + 16))
    pq, sq, dq = panoptic_quality(gt, pred)
    assert sq == pytest.approx(0.6) and dq == pytest.approx(1 / 1.5) and pq == pytest.approx(0.4)
    assert detection_f1(gt, pred) == pytest.approx(2 / 3)
    assert count_error(gt, pred) == pytest.approx(0.5)
    s = instance_scores(gt, pred)
    assert s["aji"] == pytest.approx(12 / 36) and s["n_gt"] == 2 and s["n_pred"] == 1


def test_merged_objects_aji_and_3d():
    gt = np.zeros((3, 6, 10), np.uint16)
    gt[:, :, :5] = 1
    gt[:, :, 5:] = 2
    pred = (gt > 0).astype(np.uint8)  # the two merged into one
    # both gt choose pred 1 (IoU 0.5 each): C = 90 + 90, U = 180 + 180
    assert aji(gt, pred) == pytest.approx(0.5)
    assert panoptic_quality(gt, pred)[0] == 0.0
    assert count_error(gt, pred) == 0.5


def test_empty_inputs():
    z = np.zeros((5, 5), np.uint8)
    one = z.copy()
    one[1:3, 1:3] = 1
    assert math.isnan(aji(z, z)) and all(math.isnan(v) for v in panoptic_quality(z, z))
    assert math.isnan(detection_f1(z, z)) and math.isnan(count_error(z, z))
    # objects only in the prediction
    assert aji(z, one) == 0.0 and panoptic_quality(z, one) == (0.0, 0.0, 0.0) and detection_f1(z, one) == 0.0
    assert count_error(z, one) == math.inf
    # objects only in the ground truth
    assert aji(one, z) == 0.0 and panoptic_quality(one, z)[0] == 0.0 and count_error(one, z) == 1.0


def test_overlap_table_and_bad_input():
    gt = _two_squares()
    o = overlaps(gt, gt)
    assert (o.n_gt, o.n_pred) == (2, 2) and list(o.inter) == [16, 16] and list(o.iou) == [1.0, 1.0]
    with pytest.raises(MedsegError, match="same shape"):
        aji(gt, gt[:5])
    with pytest.raises(MedsegError, match="integer"):
        aji(gt.astype(float), gt)
    with pytest.raises(MedsegError, match="negative"):
        aji(-gt, gt)
    with pytest.raises(MedsegError, match="threshold"):
        detection_f1(gt, gt, iou=1.5)


def test_many_objects_agree_with_a_direct_count():
    """Random objects: the sparse overlap table gives the same AJI as a per-object reference."""
    rng = np.random.default_rng(0)
    gt = np.zeros((64, 64), np.int32)
    pred = np.zeros((64, 64), np.int32)
    for i in range(1, 25):
        y, x = rng.integers(0, 56, 2)
        gt[y:y + 7, x:x + 7] = i
        dy, dx = rng.integers(-2, 3, 2)
        pred[max(0, y + dy):y + dy + 6, max(0, x + dx):x + dx + 6] = i + 100
    c = u = 0
    used = set()
    for g in np.unique(gt[gt > 0]):
        gm = gt == g
        best, best_iou = None, -1.0
        for p in np.unique(pred[gm & (pred > 0)]):
            pm = pred == p
            iou = (gm & pm).sum() / (gm | pm).sum()
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            u += gm.sum()
            continue
        pm = pred == best
        c += (gm & pm).sum()
        u += (gm | pm).sum()
        used.add(best)
    u += sum((pred == p).sum() for p in np.unique(pred[pred > 0]) if p not in used)
    assert aji(gt, pred) == pytest.approx(c / u)
