"""Proofreading objects (napari_medseg.objects.edit): merge, split by a line, delete, relabel and undo change
only the objects' boxes, report what changed, and undo puts the array back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.edit import (
    Editor,
    delete,
    line_mask,
    merge,
    object_boxes,
    relabel,
    split_by_line,
    undo,
)
from napari_medseg.objects.instances import Objects


def _objects() -> Objects:
    lab = np.zeros((40, 60), np.uint32)
    lab[5:15, 5:15] = 1     # a square
    lab[5:15, 16:26] = 2    # its neighbour, one background column between them
    lab[25:35, 10:40] = 3   # a long bar (to split)
    classes = np.array([0, 1, 1, 2], np.int32)
    return Objects(lab, classes)


class Guarded(np.ndarray):
    """A label array that records every region written (to prove edits stay in their box)."""

    def __setitem__(self, key, value):
        self.writes.append(key)
        super().__setitem__(key, value)


def _guarded(obj: Objects) -> Objects:
    g = obj.labels.view(Guarded)
    g.writes = []
    return Objects(g, obj.classes)


def test_merge_joins_the_parts_closes_the_gap_and_undo_restores():
    obj = _guarded(_objects())
    orig = np.array(obj.labels)
    edit = merge(obj, [2, 1])
    assert edit.target == 1 and edit.removed == (2,) and edit.changed == (1,)
    assert not (obj.labels == 2).any()
    assert (obj.labels[5:15, 15] == 1).all()  # the background column between the two is closed
    assert obj.classes[2] == 0 and obj.classes[1] == 1
    assert (obj.labels[25:35, 10:40] == 3).all()  # the other object is untouched
    assert edit.boxes[1] == (slice(5, 15), slice(5, 26)) and edit.boxes[2] is None
    # only the merged objects' box (grown by a pixel) was written
    assert len(obj.labels.writes) == 1
    (rows, cols) = obj.labels.writes[0]
    assert rows.stop - rows.start <= 12 and cols.stop - cols.start <= 23
    undo(obj, edit)
    np.testing.assert_array_equal(obj.labels, orig)
    np.testing.assert_array_equal(obj.classes, [0, 1, 1, 2])


def test_merge_keeps_the_class_of_the_largest_part():
    obj = _objects()
    edit = merge(obj, [1, 3], close_gaps=False)
    assert edit.target == 1 and obj.classes[1] == 2  # object 3 (300 px) outweighs object 1 (100 px)
    assert ((obj.labels == 1).sum()) == 400


def test_split_by_line_makes_two_objects_of_the_same_class():
    obj = _objects()
    before = np.array(obj.labels)
    edit = split_by_line(obj, 3, np.array([[20.0, 20.0], [40.0, 20.0]]))  # a vertical cut at column 20
    assert edit.target == 3 and edit.added == (4,)
    assert obj.n == 4 and obj.classes[4] == 2
    assert not (obj.labels[25:35, 20] > 0).any()  # the cut pixels belong to no object
    left, right = (obj.labels[25:35, 10:20] > 0), (obj.labels[25:35, 21:40] > 0)
    assert left.all() and right.all()
    # the larger part (19 columns) keeps id 3
    assert (obj.labels[25:35, 21:40] == 3).all() and (obj.labels[25:35, 10:20] == 4).all()
    assert edit.boxes[4] == (slice(25, 35), slice(10, 20))
    undo(obj, edit)
    np.testing.assert_array_equal(obj.labels, before)
    assert obj.n == 3


def test_split_by_a_diagonal_path_separates_face_connected_parts():
    lab = np.zeros((30, 30), np.uint32)
    lab[5:25, 5:25] = 1
    obj = Objects(lab, np.array([0, 1], np.int32))
    split_by_line(obj, 1, [[0, 0], [29, 29]])  # one-pixel diagonal: 8-connected, still a cut
    assert obj.n == 2
    assert set(np.unique(obj.labels)) == {0, 1, 2}


def test_a_line_that_does_not_cut_is_refused_and_changes_nothing():
    obj = _objects()
    before = np.array(obj.labels)
    with pytest.raises(MedsegError, match="does not cut object 3 in two"):
        split_by_line(obj, 3, [[20, 20], [30, 20]])  # stops inside the bar
    with pytest.raises(MedsegError, match="does not cross object 3"):
        split_by_line(obj, 3, [[0, 0], [0, 50]])
    np.testing.assert_array_equal(obj.labels, before)
    assert obj.n == 3


def test_split_in_3d_with_a_line_drawn_on_one_slice_cuts_every_slice():
    lab = np.zeros((6, 20, 20), np.uint32)
    lab[1:5, 5:15, 5:15] = 1
    obj = Objects(lab, np.array([0, 1], np.int32))
    split_by_line(obj, 1, [[2, 10, 0], [2, 10, 19]])
    assert obj.n == 2
    assert not (obj.labels[:, 10, :] > 0).any()
    assert line_mask(np.array([[2, 10, 0], [2, 10, 19]]), (6, 20, 20)).sum() == 6 * 20


def test_line_width_widens_the_cut():
    m1 = line_mask(np.array([[0, 10], [19, 10]]), (20, 20), width=1)
    m3 = line_mask(np.array([[0, 10], [19, 10]]), (20, 20), width=3)
    assert m1.sum() == 20 and m3.sum() == 60


def test_delete_and_relabel_and_bad_ids():
    obj = _objects()
    edit = delete(obj, [1])
    assert not (obj.labels == 1).any() and obj.classes[1] == 0 and edit.removed == (1,)
    with pytest.raises(MedsegError, match="no object 1"):
        delete(obj, [1])
    with pytest.raises(MedsegError, match="no object 9"):
        relabel(obj, [9], 1)
    with pytest.raises(MedsegError, match="at least two"):
        merge(obj, [2])
    with pytest.raises(MedsegError, match="choose the objects"):
        delete(obj, [])
    r = relabel(obj, [2, 3], 5)
    assert r.box is None and list(obj.classes) == [0, 0, 5, 5]
    undo(obj, r)
    undo(obj, edit)
    assert list(obj.classes) == [0, 1, 1, 2] and (obj.labels == 1).sum() == 100


def test_editor_keeps_boxes_and_undoes_in_order():
    obj = _objects()
    original = np.array(obj.labels)
    ed = Editor(obj)
    assert ed.boxes == object_boxes(original)
    ed.split_by_line(3, [[20, 20], [40, 20]])
    ed.merge([1, 2])
    ed.delete([4])
    assert set(ed.boxes) == {1, 3}
    assert ed.boxes == object_boxes(obj.labels)  # the cache follows the edits
    for expected_kind in ("delete", "merge", "split"):
        assert ed.undo().kind == expected_kind
        assert ed.boxes == object_boxes(obj.labels)
    assert ed.undo() is None
    np.testing.assert_array_equal(obj.labels, original)
    assert obj.n == 3
