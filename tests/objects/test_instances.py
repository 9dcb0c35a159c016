"""find_objects (boundary-class seeds grown into the rim) and watershed_objects (the baseline), 2D and 3D."""

import numpy as np
import pytest

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.boundaries import instances_to_store
from napari_medseg.objects.instances import find_objects, watershed_objects
from napari_medseg.objects.metrics import aji

NUC = ClassSchema(("background", "nucleus")).with_objects(["nucleus"])  # pred: 1 nucleus, 2 boundary


def _touching(shape: tuple[int, ...], r: int = 9) -> np.ndarray:
    """Instance labels of two balls whose rims touch along the middle of the last axis."""
    grid = np.indices(shape)
    c = [s // 2 for s in shape]
    out = np.zeros(shape, np.uint32)
    for i, dx in ((1, -r + 1), (2, r - 1)):
        cc = c[:-1] + [c[-1] + dx]
        d2 = sum((g - ci) ** 2 for g, ci in zip(grid, cc))
        out[(d2 <= r * r) & (out == 0)] = i
    return out


@pytest.mark.parametrize("shape", [(32, 48), (24, 32, 48)])
def test_boundary_splits_touching_objects_and_grows_back(shape):
    gt = _touching(shape)
    assert len(np.unique(gt)) == 3
    pred = instances_to_store(gt, 1, NUC, width=2).astype(np.int32) - 1  # the ideal prediction
    from scipy import ndimage as ndi

    assert ndi.label(pred > 0)[1] == 1  # the foreground alone is one blob
    obj = find_objects(pred, NUC)
    assert obj.n == 2 and list(obj.classes) == [0, 1, 1] and obj.labels.dtype == np.uint32
    assert aji(gt, obj.labels) > 0.95  # grown back into the rim: (nearly) the full objects
    # ids in raster order: the object on the left (first pixel earlier in raster order) is 1 in 2D
    assert obj.labels.shape == gt.shape
    # without growth the objects are only the interiors
    small = find_objects(pred, NUC, grow=0)
    assert small.n == 2 and (small.labels > 0).sum() < (obj.labels > 0).sum()


def test_without_boundary_class_objects_are_components():
    gt = _touching((32, 48))
    fg = (gt > 0).astype(np.uint8)
    schema = ClassSchema(("background", "nucleus"), objects=("nucleus",))
    assert schema.boundary_value is None
    obj = find_objects(fg, schema)
    assert obj.n == 1 and (obj.labels > 0).sum() == fg.sum()


def test_min_size_classes_and_deterministic_ids():
    schema = ClassSchema(("background", "stroma", "nucleus", "gland")).with_objects(["nucleus", "gland"])
    pred = np.zeros((20, 30), np.uint8)
    pred[:, 25:] = 1  # stroma: no object
    pred[2:6, 2:6] = 3  # gland (16 px), first in raster order
    pred[10:13, 3:6] = 2  # nucleus (9 px)
    pred[15, 15] = 2  # a one-pixel nucleus
    obj = find_objects(pred, schema)
    # ids class by class in the schema's order of object classes (nucleus, then gland), raster order within
    assert obj.n == 3 and list(obj.classes) == [0, 2, 2, 3]
    assert obj.labels[11, 4] == 1 and obj.labels[15, 15] == 2 and obj.labels[3, 3] == 3
    big = find_objects(pred, schema, min_size=5)
    assert big.n == 2 and big.labels[15, 15] == 0 and list(big.classes) == [0, 2, 3]
    assert big.labels[11, 4] == 1 and big.labels[3, 3] == 2
    np.testing.assert_array_equal(find_objects(pred, schema).labels, obj.labels)


def test_find_objects_bad_input():
    with pytest.raises(MedsegError, match="no class is marked"):
        find_objects(np.zeros((4, 4), np.uint8), ClassSchema())
    with pytest.raises(MedsegError, match="2D or 3D"):
        find_objects(np.zeros((2, 2, 2, 2), np.uint8), NUC)
    with pytest.raises(MedsegError, match="integer"):
        find_objects(np.zeros((4, 4), np.float32), NUC)
    assert find_objects(np.zeros((4, 4), np.uint8), NUC).n == 0


@pytest.mark.parametrize("shape", [(40, 56), (24, 40, 56)])
def test_watershed_baseline_splits_two_overlapping_balls(shape):
    gt = _touching(shape, r=10)
    obj = watershed_objects(gt > 0, min_distance=5)
    assert obj.n == 2 and aji(gt, obj.labels) > 0.85
    assert list(obj.classes) == [0, 1, 1]
    with pytest.raises(MedsegError, match="2D or 3D"):
        watershed_objects(np.zeros(5, bool))


def test_min_seed_turns_interior_speckle_into_rim():
    pred = np.zeros((30, 30), np.uint8)
    pred[5:20, 5:20] = 2  # boundary-predicted region
    pred[8:17, 8:17] = 1  # a real interior (81 px)
    pred[18, 12] = 1  # a speckle of interior inside the rim, 2 face steps from the interior
    pred[25, 25] = 1  # an isolated speckle
    assert find_objects(pred, NUC).n == 3
    obj = find_objects(pred, NUC, min_seed=5)
    assert obj.n == 1 and obj.labels[18, 12] == 1 and obj.labels[25, 25] == 0
    assert find_objects(np.where(pred == 1, 0, pred).astype(np.uint8), NUC, min_seed=5).n == 0
