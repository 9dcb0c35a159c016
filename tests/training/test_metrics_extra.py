"""IoU, sensitivity, specificity and surface Dice (training/metrics.py) against MONAI's implementations, 2D and
3D, anisotropic spacing, empty classes; hand-computed cases; the (dice, hd95) interface of dense_scores kept."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_medseg.training.metrics import (
    DENSE_METRICS,
    confusion,
    default_tolerance,
    dense_confusion,
    dense_scores,
    scores_from_confusion,
    surface_dice,
)

N_CLASSES = 4


def _labels(shape: tuple[int, ...], seed: int, n_classes: int = N_CLASSES, absent: int | None = None) -> np.ndarray:
    """Blob-like label maps (smoothed noise, argmax), with ``absent`` removed (set to background)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((n_classes, *shape)), sigma=(0,) + (2.0,) * len(shape))
    lab = noise.argmax(0)
    if absent is not None:
        lab[lab == absent] = 0
    return lab


def _one_hot(lab: np.ndarray, n: int) -> torch.Tensor:
    t = torch.as_tensor(lab).long()
    return torch.nn.functional.one_hot(t, n).movedim(-1, 0)[None].float()


def _monai_overlap(pred: np.ndarray, gt: np.ndarray, n: int) -> dict[str, list[float]]:
    from monai.metrics import DiceMetric, compute_confusion_matrix_metric, compute_iou, get_confusion_matrix

    p, g = _one_hot(pred, n), _one_hot(gt, n)
    cm = get_confusion_matrix(p, g, include_background=False)
    return {
        "dice": DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, g)[0].tolist(),
        "iou": compute_iou(p, g, include_background=False, ignore_empty=True)[0].tolist(),
        "sensitivity": compute_confusion_matrix_metric("sensitivity", cm)[0].tolist(),
        "specificity": compute_confusion_matrix_metric("specificity", cm)[0].tolist(),
    }


def _monai_nsd(pred: np.ndarray, gt: np.ndarray, n: int, tols: list[float], spacing) -> list[float]:
    import warnings

    from monai.metrics import compute_surface_dice

    with warnings.catch_warnings():  # MONAI warns about empty classes
        warnings.simplefilter("ignore")
        return compute_surface_dice(_one_hot(pred, n), _one_hot(gt, n), tols, include_background=False,
                                    spacing=spacing)[0].tolist()


def _assert_equal(ours: list[float], ref: list[float], tol: float = 1e-6) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert math.isnan(a) == math.isnan(b), (ours, ref)
        if not math.isnan(a):
            assert abs(a - b) <= tol, (ours, ref)


CASES = [pytest.param((96, 80), None, id="2d"), pytest.param((96, 80), (0.5, 1.3), id="2d-aniso"),
         pytest.param((24, 40, 32), None, id="3d"), pytest.param((24, 40, 32), (2.5, 0.7, 0.9), id="3d-aniso")]


@pytest.mark.parametrize("shape, spacing", CASES)
def test_overlap_metrics_equal_monai(shape, spacing):
    for seed in range(3):
        gt = _labels(shape, seed, absent=3 if seed == 2 else None)  # seed 2: class 3 only in the prediction
        pred = _labels(shape, seed + 10)
        # a noisy copy of gt as a second, realistic prediction
        rng = np.random.default_rng(seed)
        noisy = np.where(rng.random(shape) < 0.1, rng.integers(0, N_CLASSES, shape), gt)
        for p in (pred, noisy):
            s = dense_scores(p, gt, N_CLASSES, spacing, hd95=False)
            ref = _monai_overlap(p, gt, N_CLASSES)
            for k in ("dice", "iou", "sensitivity", "specificity"):
                _assert_equal(s[k], ref[k])
        if seed == 2:  # the class absent from the ground truth: NaN like MONAI's ignore_empty
            assert math.isnan(s["iou"][2]) and math.isnan(s["dice"][2]) and math.isnan(s["sensitivity"][2])
            assert s["specificity"][2] < 1.0  # its false positives still count


@pytest.mark.parametrize("shape, spacing", CASES)
def test_surface_dice_equals_monai(shape, spacing):
    unit = 1.0 if spacing is None else min(spacing)
    # tolerances at 0, exactly one pixel step (a distance that occurs: ties must agree) and in between
    tols = [0.0, unit, 2.2 * unit]
    for seed in range(3):
        gt = _labels(shape, seed, absent=2 if seed == 1 else None)
        pred = _labels(shape, seed + 20, absent=3 if seed == 2 else None)
        rng = np.random.default_rng(seed)
        shifted = np.roll(gt, 1, axis=0)
        shifted[rng.random(shape) < 0.02] = 0
        for p in (pred, shifted):
            ours = [surface_dice(p == c, gt == c, t, spacing) for c, t in zip(range(1, N_CLASSES), tols)]
            _assert_equal(ours, _monai_nsd(p, gt, N_CLASSES, tols, spacing))
            s = dense_scores(p, gt, N_CLASSES, spacing, surface_tolerance=tols)
            _assert_equal(s["surface_dice"], ours, 0.0)
    # the empty cases of MONAI: both empty -> NaN, one empty -> 0
    z = np.zeros(shape, bool)
    one = np.zeros(shape, bool)
    one[(slice(2, 6),) * len(shape)] = True
    assert math.isnan(surface_dice(z, z, 1.0, spacing))
    assert surface_dice(one, z, 1.0, spacing) == 0.0 == surface_dice(z, one, 1.0, spacing)


def test_surface_dice_by_hand():
    """A 10 x 10 square and the same square moved one pixel down: 36 edge pixels each."""
    a = np.zeros((32, 32), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 1, axis=0)
    assert surface_dice(a, a, 0.0) == 1.0
    # tolerance 0: only the edge pixels that lie on both edges count
    ea = a & ~ndimage.binary_erosion(a)
    eb = b & ~ndimage.binary_erosion(b)
    same = int((ea & eb).sum())
    assert surface_dice(a, b, 0.0) == pytest.approx(2 * same / (ea.sum() + eb.sum()))
    assert surface_dice(a, b, 1.0) == 1.0  # every edge pixel is within one pixel of the other edge
    # anisotropic: the shift is along axis 0; a step there 2 units long puts the top and bottom rows out of
    # a 1-unit tolerance (only their pixels next to a side column stay within it), 2 units take them in
    assert surface_dice(a, b, 0.0) < surface_dice(a, b, 1.0, spacing=(2.0, 1.0)) < 1.0
    assert surface_dice(a, b, 2.0, spacing=(2.0, 1.0)) == 1.0
    assert surface_dice(a, b, 1.0, spacing=(1.0, 2.0)) == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        surface_dice(a, b, -1.0)
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(a, b, 1.0, spacing=(1.0, 1.0, 1.0))


def test_overlap_metrics_by_hand():
    gt = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 0], [0, 0, 2, 0]])
    s = dense_scores(pred, gt, 3, hd95=False)
    # class 1: tp 2, fp 1, fn 1, tn 4; class 2: tp 1, fp 0, fn 1, tn 6
    assert s["iou"] == pytest.approx([2 / 4, 1 / 2])
    assert s["dice"] == pytest.approx([4 / 6, 2 / 3])
    assert s["sensitivity"] == pytest.approx([2 / 3, 1 / 2])
    assert s["specificity"] == pytest.approx([4 / 5, 6 / 6])
    assert all(math.isnan(v) for v in s["hd95"] + s["surface_dice"])  # hd95=False skips both


def test_dense_scores_keeps_its_tuple_interface():
    gt = _labels((64, 64), 0, n_classes=3)
    pred = _labels((64, 64), 1, n_classes=3)
    s = dense_scores(pred, gt, 3, spacing=(0.5, 0.5))
    dice, hd = s  # unpacks as (dice, hd95), as before
    assert s[0] is dice and s[1] is hd and len(s) == 2
    assert set(s.metrics) == set(DENSE_METRICS)
    assert all(len(v) == 2 for v in s.metrics.values())
    assert all(0.0 < v < 50.0 for v in hd)
    # HD95 still MONAI's
    from monai.metrics import compute_hausdorff_distance

    ref = compute_hausdorff_distance(_one_hot(pred, 3), _one_hot(gt, 3), percentile=95, spacing=[0.5, 0.5])[0]
    _assert_equal(hd, ref.tolist(), 1e-5)
    # the default tolerance is one pixel along the coarsest axis
    assert default_tolerance((0.5, 2.0)) == 2.0 and default_tolerance(None) == 1.0
    assert s["surface_dice"] == [surface_dice(pred == c, gt == c, 0.5, (0.5, 0.5)) for c in (1, 2)]
    # survives pickling (validation results cross process boundaries)
    back = pickle.loads(pickle.dumps(s))
    assert tuple(back) == tuple(s) and back.metrics == s.metrics
    with pytest.raises(ValueError, match="one surface tolerance per foreground class"):
        dense_scores(pred, gt, 3, surface_tolerance=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="differ in size"):
        dense_confusion(pred, gt[:10], 3)


def test_sparse_confusion_gives_the_same_formulas_on_painted_pixels():
    rng = np.random.default_rng(3)
    gt = _labels((64, 64), 5, n_classes=3)
    pred = _labels((64, 64), 6, n_classes=3)
    painted = rng.random(gt.shape) < 0.1
    store = np.where(painted, gt + 1, 0)  # label-store values: 0 = unpainted, v = class v - 1
    conf = confusion(torch.as_tensor(pred), torch.as_tensor(store), 3)
    sparse = scores_from_confusion(conf)
    direct = scores_from_confusion(dense_confusion(pred[painted], gt[painted], 3))
    assert sparse == direct
    p, g = pred[painted], gt[painted]
    for c in range(3):
        tp = int(((p == c) & (g == c)).sum())
        assert sparse["iou"][c] == pytest.approx(tp / int(((p == c) | (g == c)).sum()))
        assert sparse["sensitivity"][c] == pytest.approx(tp / int((g == c).sum()))
        assert sparse["specificity"][c] == pytest.approx(int(((p != c) & (g != c)).sum()) / int((g != c).sum()))


def test_counts_are_exact_beyond_float32():
    big = 2**25 + 1  # float32 rounds it to 2**25
    conf = np.array([[big, 1], [0, 3]])
    s = scores_from_confusion(conf)
    assert s["specificity"][1] == big / (big + 1)  # exact in float64 from int64 counts
    assert s["sensitivity"][0] == big / (big + 1)
    # a class filling the image has no negatives: specificity NaN, like MONAI
    full = scores_from_confusion(np.array([[0, 0], [0, 5]]))
    assert math.isnan(full["specificity"][1]) and full["iou"][1] == 1.0 and math.isnan(full["iou"][0])
