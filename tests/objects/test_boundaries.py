"""The object boundary class derived from the painting (mark_boundaries), from instance images
(instances_to_store) and from dense masks (mark_dense_boundaries)."""

import time

import numpy as np
import pytest

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.boundaries import instances_to_store, mark_boundaries, mark_dense_boundaries

NUC = ClassSchema(("background", "nucleus")).with_objects(["nucleus"])  # store: 1 bg, 2 nucleus, 3 boundary
TWO = ClassSchema(("background", "stroma", "nucleus", "gland")).with_objects(["nucleus", "gland"])


def test_rim_where_object_paint_meets_other_paint_only():
    lab = np.zeros((20, 20), np.uint8)
    lab[5:15, 5:15] = 2  # a painted nucleus
    lab[5:15, 15:18] = 1  # background painted on its right side only
    out = mark_boundaries(lab, NUC, width=2)
    assert out is not lab and lab.max() == 2  # input untouched
    rim = out == 3
    # columns 13 and 14 (within 2 px of the background at column 15) become boundary, all rows of the object
    assert rim[5:15, 13:15].all() and rim.sum() == 20
    # the unpainted sides say nothing: no rim on the left, top or bottom
    assert (out[5:15, 5:13] == 2).all()
    assert (out[lab == 1] == 1).all() and (out[lab == 0] == 0).all()


def test_background_stroke_separates_touching_objects_and_width_counts():
    lab = np.full((16, 30), 2, np.uint8)
    lab[:, 14] = 1  # a one-pixel background stroke between two touching objects
    out1 = mark_boundaries(lab, NUC, width=1)
    out3 = mark_boundaries(lab, NUC, width=3)
    assert set(np.flatnonzero((out1 == 3).any(0))) == {13, 15}
    assert set(np.flatnonzero((out3 == 3).any(0))) == {11, 12, 13, 15, 16, 17}


def test_painted_boundary_stays_and_does_not_grow():
    lab = np.zeros((12, 12), np.uint8)
    lab[2:10, 2:10] = 2
    lab[2:10, 6] = 3  # boundary painted by hand
    out = mark_boundaries(lab, NUC)
    np.testing.assert_array_equal(out, lab)  # no other painted value: nothing to mark, the stroke stays
    assert mark_boundaries(out, NUC) is out or np.array_equal(mark_boundaries(out, NUC), out)


def test_other_object_class_and_plain_class_make_rims_and_3d():
    lab = np.zeros((4, 10, 12), np.uint8)
    lab[:, :, :6] = 3  # nucleus (store 3)
    lab[:, :, 6:] = 4  # gland touches it
    out = mark_boundaries(lab, TWO, width=1)
    b = TWO.boundary_value + 1
    assert (out[:, :, 5] == b).all() and (out[:, :, 6] == b).all() and (out[:, :, 4] == 3).all()
    lab2 = np.zeros((10, 10), np.uint8)
    lab2[:, :5] = 3
    lab2[:, 5:] = 2  # stroma, a class that is no object: its pixels never become boundary
    out2 = mark_boundaries(lab2, TWO, width=1)
    assert (out2[:, 4] == b).all() and (out2[:, 5] == 2).all()
    # in 3D the rim reaches across slices
    vol = np.zeros((6, 8, 8), np.uint8)
    vol[:3] = 2
    vol[3:] = 1
    out3 = mark_boundaries(vol, NUC, width=1)
    assert (out3[2] == 3).all() and (out3[1] == 2).all()


def test_noop_without_objects_and_bad_input():
    lab = np.ones((8, 8), np.uint8)
    lab[2:5, 2:5] = 2
    assert mark_boundaries(lab, ClassSchema()) is lab
    assert mark_boundaries(lab, ClassSchema(("background", "nucleus", "object boundary"))) is lab
    with pytest.raises(MedsegError, match="2D or 3D"):
        mark_boundaries(np.ones((2, 2, 2, 2), np.uint8), NUC)
    with pytest.raises(MedsegError, match="at least 1"):
        mark_boundaries(lab, NUC, width=0)


def test_cost_is_small_against_a_patch_read():
    rng = np.random.default_rng(0)
    yy, xx = np.indices((256, 256))
    lab = np.ones((256, 256), np.uint8)
    for cy, cx in rng.integers(0, 256, (60, 2)):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 2
    lab[rng.random(lab.shape) < 0.5] = 0
    mark_boundaries(lab, NUC)
    t = time.perf_counter()
    for _ in range(8):
        mark_boundaries(lab, NUC)
    per_batch = time.perf_counter() - t
    assert per_batch < 0.25  # a batch of 8 patches of 256^2: ~10 ms (generous bound for shared CI machines)


def test_instances_to_store_separates_touching_instances():
    ids = np.zeros((12, 20), np.uint32)
    ids[2:10, 2:10] = 1
    ids[2:10, 10:18] = 2  # touches object 1 with no gap
    out = instances_to_store(ids, np.array([0, 1, 1]), NUC, width=1)
    assert out.dtype == np.uint8
    assert (out[ids == 0] == 1).all()
    assert (out[:, 9][2:10] == 3).all() and (out[:, 10][2:10] == 3).all()  # the contact line
    assert (out[2, 2:18] == 3).all() and (out[5, 2] == 3) and out[5, 5] == 2
    # interiors are split: the object class forms two components
    from scipy import ndimage as ndi

    assert ndi.label(out == 2)[1] == 2
    # the image border is no rim
    edge = np.ones((6, 6), np.uint32)
    assert (instances_to_store(edge, 1, NUC) == 2).all()


def test_instances_to_store_checks():
    ids = np.zeros((5, 5), np.int32)
    ids[1:3, 1:3] = 2
    with pytest.raises(MedsegError, match="classes"):
        instances_to_store(ids, np.array([0, 1]), NUC)  # id 2 has no class
    with pytest.raises(MedsegError, match="not classes of the schema"):
        instances_to_store(ids, np.array([0, 1, 7]), NUC)
    with pytest.raises(MedsegError, match="with_objects"):
        instances_to_store(ids, 1, ClassSchema())
    with pytest.raises(MedsegError, match="negative"):
        instances_to_store(-ids, 1, NUC)
    assert (instances_to_store(np.zeros((4, 4), np.uint32), 1, NUC) == 1).all()


def test_dense_mask_rims_keep_other_classes():
    m = np.zeros((10, 16), np.uint8)
    m[:, 4:8] = 2  # nucleus
    m[:, 8:12] = 1  # stroma
    out = mark_dense_boundaries(m, TWO, width=1)
    b = TWO.boundary_value
    assert (out[:, 4] == b).all() and (out[:, 7] == b).all() and (out[:, 5:7] == 2).all()
    assert (out[:, 8:12] == 1).all() and (out[:, :4] == 0).all()
    np.testing.assert_array_equal(mark_dense_boundaries(out, TWO, width=1), out)  # idempotent
    assert mark_dense_boundaries(m, ClassSchema.default(3)) is m
    with pytest.raises(MedsegError, match="only"):
        mark_dense_boundaries(np.full((4, 4), 9, np.uint8), TWO)
