"""Reference labels (``reference_layers``): not editable, and never left selected when they are added."""

from __future__ import annotations

import numpy as np

from napari_medseg._napari.reference_layers import guard_reference_layers, is_reference, mark_reference


def _reference(viewer, shape, name="ground truth"):
    return viewer.add_labels(np.zeros(shape, np.uint8), name=name, metadata=mark_reference({}))


def test_rgb_image_is_selected_instead_of_its_reference_labels(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    guard_reference_layers(viewer)
    viewer.add_image(np.zeros((32, 32), np.uint8), name="other size")
    img = viewer.add_image(np.zeros((64, 48, 3), np.uint8), name="rgb", rgb=True)
    gt = _reference(viewer, (64, 48))
    assert is_reference(gt) and not gt.editable
    qtbot.waitUntil(lambda: viewer.layers.selection.active is img, timeout=3000)
    plain = viewer.add_labels(np.zeros((64, 48), np.uint8), name="mine")  # other labels: as napari does
    assert plain.editable and viewer.layers.selection.active is plain


def test_guard_added_later_fixes_what_is_there(make_napari_viewer):
    viewer = make_napari_viewer()
    img = viewer.add_image(np.zeros((16, 16), np.uint8), name="img")
    gt = _reference(viewer, (16, 16))
    assert gt.editable and viewer.layers.selection.active is gt  # napari's own behaviour
    guard_reference_layers(viewer)
    guard_reference_layers(viewer)  # once per viewer
    assert not gt.editable and viewer.layers.selection.active is img


def test_reference_labels_stay_locked_until_the_role_is_removed(make_napari_viewer):
    viewer = make_napari_viewer()
    guard_reference_layers(viewer)
    gt = _reference(viewer, (16, 16))
    gt.editable = True
    assert not gt.editable
    del gt.metadata["napari_medseg"]["role"]  # a user who wants to edit them on purpose
    gt.editable = True
    assert gt.editable
