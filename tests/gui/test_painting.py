"""The editable window over a label store in a real napari viewer: alignment, exact edit tracking (paint,
fill, erase, undo, the mouse drag path), autosave, window moves, the overview, volumes, bad labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
from painting_gui_helpers import look_at

from napari_medseg._napari.layerdata import from_layer
from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.painting.controller import (
    PaintingController,
    touched_box,
)
from napari_medseg.core.classes import ClassSchema
from napari_medseg.labels.store import LabelStore

CLASSES = ClassSchema(names=("background", "tumor", "stroma"))
PS = 0.5  # um per pixel


@dataclass
class MouseEvent:
    type: str
    position: tuple
    is_dragging: bool = False
    dims_displayed: tuple = (0, 1)
    dims_point: tuple | None = None
    view_direction: tuple | None = None
    pos: tuple = (0, 0)
    button: int = 1
    handled: bool = False
    modifiers: tuple = ()


@pytest.fixture
def slide(make_napari_viewer, tmp_path):
    """A 3000 x 4000 px slide image layer, its store (256 px chunks) and a controller (1024 px window)."""
    viewer = make_napari_viewer()
    img = viewer.add_image(np.zeros((3000, 4000), np.uint8), scale=(PS, PS), translate=(10.0, 20.0), name="slide")
    store = LabelStore.create(tmp_path / "slide.labels.zarr", (3000, 4000), chunks=(256, 256), classes=CLASSES,
                              pixel_size=(PS, PS), coarsest=500)
    notes: list[str] = []
    ctl = PaintingController(viewer, store, img, max_window=1024, notify=notes.append)
    ctl.notes = notes
    yield viewer, store, ctl
    ctl.close()
    store.close()


def _world(ctl, y, x):
    """World coordinates of store pixel (y, x)."""
    return tuple(t + v * s for t, v, s in zip(ctl._translate, (y, x), ctl._scale))


def _goto(viewer, ctl, y, x, zoom=4.0):
    camera_of(viewer).center = _world(ctl, y, x)
    camera_of(viewer).zoom = zoom
    ctl.follow_view()


def test_window_is_aligned_capped_and_follows_the_view(slide):
    viewer, store, ctl = slide
    _goto(viewer, ctl, 1500, 2000)
    w = ctl.window
    assert all(s.start % 256 == 0 for s in w) and all(s.stop - s.start <= 1024 for s in w)
    assert w[0].start <= 1500 < w[0].stop and w[1].start <= 2000 < w[1].stop
    np.testing.assert_allclose(ctl.layer.scale, (PS, PS))
    np.testing.assert_allclose(ctl.layer.translate, (10 + w[0].start * PS, 20 + w[1].start * PS))
    # store pixel (y, x) of the window lands on image pixel (y, x): same world position
    img = viewer.layers["slide"]
    np.testing.assert_allclose(ctl.layer.data_to_world((5, 7)), img.data_to_world((w[0].start + 5, w[1].start + 7)))
    assert ctl.overview_layer is not None and ctl.overview_layer.multiscale and not ctl.overview_layer.editable
    _goto(viewer, ctl, 200, 3800)
    assert ctl.window[0].start == 0 and ctl.window[1].stop == 4000
    assert ctl.layer.data.shape == tuple(s.stop - s.start for s in ctl.window)


def test_paint_fill_erase_undo_are_saved_exactly(slide, qtbot):
    viewer, store, ctl = slide
    _goto(viewer, ctl, 1500, 2000)
    w0 = [s.start for s in ctl.window]
    layer = ctl.layer
    layer.brush_size = 10
    layer.paint((100, 100), 2)
    layer.paint((600, 700), 3)
    ctl.flush(wait=True)
    shown = np.array(layer.data)
    np.testing.assert_array_equal(store.read(ctl.window), shown)
    assert {c for c in store.painted_chunks()} == {((w0[0] + 100) // 256, (w0[1] + 100) // 256),
                                                 ((w0[0] + 600) // 256, (w0[1] + 700) // 256)}
    layer.undo()  # label 3 gone
    layer.fill((100, 100), 3)  # the label-2 blob becomes 3
    ctl.flush(wait=True)
    np.testing.assert_array_equal(store.read(ctl.window), np.array(layer.data))
    assert set(store.class_counts()) >= {2, 3} and store.class_counts()[2] == 0 and store.class_counts()[3] > 0
    layer.paint((100, 100), 0)  # erase with a big brush: the chunk becomes empty and is deleted
    layer.brush_size = 40
    layer.paint((100, 100), 0)
    ctl.flush(wait=True)
    assert store.painted_chunks() == []
    assert not any(p.is_file() and not p.name.startswith(".") for p in (store.path / "0").rglob("*"))


def test_mouse_drag_path_and_debounced_autosave(slide, qtbot):
    viewer, store, ctl = slide
    _goto(viewer, ctl, 1500, 2000)
    layer = ctl.layer
    viewer.layers.selection.active = layer
    layer.mode, layer.brush_size, layer.selected_label = "paint", 5, 2
    w0 = [s.start for s in ctl.window]
    pts = [_world(ctl, w0[0] + 50, w0[1] + 50 + 10 * i) for i in range(30)]
    mouse_press_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_press", pts[0], dims_point=pts[0])))
    for p in pts[1:]:
        mouse_move_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_move", p, is_dragging=True, dims_point=p)))
    mouse_release_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_release", pts[-1], dims_point=pts[-1])))
    assert ctl.edits.dirty and store.painted_chunks() == []  # not yet saved ...
    qtbot.waitUntil(lambda: len(store.painted_chunks()) == 2 and not ctl.unsaved, timeout=5000)  # ... autosaved
    assert ctl.flush_log and ctl.flush_log[-1]["chunks"] == 2
    np.testing.assert_array_equal(store.read(ctl.window), np.array(layer.data))


def test_moving_the_window_saves_loads_and_overview_shows_the_rest(slide):
    viewer, store, ctl = slide
    store.write((slice(2900, 2910), slice(100, 110)), 3)  # painted earlier, elsewhere
    _goto(viewer, ctl, 500, 3500)
    first = ctl.window
    ctl.layer.paint((20, 20), 2)
    _goto(viewer, ctl, 2900, 200)  # the window moves: the stroke is saved, the earlier paint shown
    assert ctl.window != first
    assert (store.read(first) == 2).any()
    w = ctl.window
    np.testing.assert_array_equal(np.array(ctl.layer.data)[2900 - w[0].start: 2910 - w[0].start,
                                                           100 - w[1].start: 110 - w[1].start], 3)
    assert not ctl.layer._undo_history  # undo does not reach into the previous window
    # the overview: everything outside the window, blank inside it (the editable layer shows it live)
    lv0 = ctl.overview_layer.data[0]
    assert (np.asarray(lv0[first[0], first[1]]) == 2).any()
    assert not np.asarray(lv0[w[0], w[1]]).any()
    coarse = np.asarray(ctl.overview_layer.data[-1])
    assert coarse.any()


def test_zoomed_out_overview_shows_new_paint(slide):
    viewer, store, ctl = slide
    camera_of(viewer).center = _world(ctl, 1500, 2000)
    camera_of(viewer).zoom = 0.05  # the whole slide in view ...
    ctl.move_window(ctl.geom.window_for((500, 500), 0), level=0)  # ... but the window elsewhere, not following
    ctl.overview_layer.locked_data_level = len(store.level_shapes) - 1  # the level napari keeps cached
    assert ctl.overview_layer.data_level == len(store.level_shapes) - 1
    world = _world(ctl, 2950, 3950)
    assert ctl.overview_layer.get_value(world, world=True) == (3, 0)  # (level, value): multiscale
    store.write((slice(2940, 2960), slice(3940, 3960)), 3)  # outside the window, e.g. an imported mask
    assert ctl.overview_layer.get_value(world, world=True) == (3, 3)


def test_window_moves_zoomed_in_refresh_the_overview_without_replacing_its_data(slide):
    """The overview is refreshed on every window move. Replacing a multiscale layer's data puts napari 0.9 on its
    coarsest level with the corners of the finer level it showed: the next slice is empty and vispy's draw
    raises, which aborts a PyQt6 viewer (opening a label store zoomed in on a slide did it). The overview's
    coarsest level is refilled in place instead: the layer keeps its data and the level napari chose."""
    viewer, store, ctl = slide
    _goto(viewer, ctl, 1500, 2000, zoom=1.0)
    ctl.overview_layer.locked_data_level = 1  # a finer level than the coarsest, as zoomed in
    replaced = []
    ctl.overview_layer.events.data.connect(lambda e: replaced.append(e))
    store.write((slice(2940, 2960), slice(3940, 3960)), 3)  # outside any window here
    _goto(viewer, ctl, 500, 500, zoom=1.0)  # the window moves: the overview is refreshed
    assert ctl.overview_layer.data_level == 1 and not replaced
    coarse = np.asarray(ctl.overview_layer.data[-1])  # the array napari keeps for the zoomed-out view
    f = store.level_shapes[0][0] // coarse.shape[0]
    assert (coarse[2950 // f, 3950 // f] == 3), "the refreshed coarsest level lacks the new labels"


def test_external_writes_reach_the_window_and_are_not_overwritten(slide):
    viewer, store, ctl = slide
    _goto(viewer, ctl, 1500, 2000)
    w = ctl.window
    ctl.layer.paint((10, 10), 2)
    ctl.flush(wait=True)
    # e.g. "accept prediction": another writer fills a region of the store
    store.write((slice(w[0].start + 300, w[0].start + 310), slice(w[1].start + 300, w[1].start + 310)), 3)
    assert (np.array(ctl.layer.data)[300:310, 300:310] == 3).all()
    ctl.flush(wait=True, full=True)
    assert (store.read((slice(w[0].start + 300, w[0].start + 310), slice(w[1].start + 300, w[1].start + 310))) == 3).all()


def test_labels_beyond_the_schema_are_kept_not_lost(slide):
    viewer, store, ctl = slide
    _goto(viewer, ctl, 1500, 2000)
    first = ctl.window
    ctl.layer.paint((50, 50), 7)  # the schema has store values 1..3
    ctl.flush(wait=True)
    assert ctl.edits.dirty and store.painted_chunks() == []
    assert any("[7]" in n and "add classes" in n for n in ctl.notes)
    _goto(viewer, ctl, 200, 200)
    assert ctl.window == first and any("not moved" in n for n in ctl.notes)
    before = store.classes
    ctl.close()  # closing extends the schema rather than dropping the strokes
    assert store.classes.max_store_value == 7
    assert (store.read(first) == 7).any()
    # the classes that were there keep their colours (and object classes, if any)
    assert store.classes.colors[:len(before.colors)] == before.colors
    assert store.classes.objects == before.objects


def test_volume_paints_in_slices_and_in_3d(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    vol = viewer.add_image(np.zeros((20, 64, 80), np.uint16), scale=(2.5, 0.8, 0.8), name="ct")
    src = from_layer(vol, reopen=False)
    assert src.axes == "ZYX" and src.pixel_size == (2.5, 0.8, 0.8)
    store = LabelStore.for_image(src, folder=tmp_path, classes=CLASSES, chunks=(8, 32, 32))
    ctl = PaintingController(viewer, store, vol)
    assert ctl.window == (slice(0, 20), slice(0, 64), slice(0, 80)) and ctl.overview_layer is None
    layer = ctl.layer
    layer.brush_size = 6
    viewer.dims.set_point(0, 5 * 2.5)
    layer.paint((5, 30, 30), 2)  # on slice 5 only (n_edit_dimensions = 2)
    ctl.flush(wait=True)
    saved = store[...]
    assert saved[5].any() and not saved[4].any() and not saved[6].any()
    layer.n_edit_dimensions = 3  # a 3D brush
    layer.paint((12, 40, 40), 3)
    ctl.flush(wait=True)
    saved = store[...]
    assert (saved == 3).any(axis=(1, 2)).sum() > 1
    np.testing.assert_array_equal(saved, np.array(layer.data))
    ctl.close()
    store.close()


def test_volume_too_big_to_show_whole_gets_a_slab_that_follows_the_slider(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    vol = viewer.add_image(np.zeros((40, 64, 80), np.uint8), scale=(2.0, 1.0, 1.0), name="mr")
    store = LabelStore.create(tmp_path / "mr.zarr", (40, 64, 80), chunks=(8, 32, 32), classes=CLASSES,
                              pixel_size=(2.0, 1.0, 1.0))
    ctl = PaintingController(viewer, store, vol, volume_max_voxels=16 * 64 * 80)
    viewer.dims.set_point(0, 3 * 2.0)
    ctl.follow_view()
    w = ctl.window
    assert w[0].stop - w[0].start <= 16 and w[0].start <= 3 < w[0].stop and w[1:] == (slice(0, 64), slice(0, 80))
    ctl.layer.paint((3 - w[0].start, 10, 10), 2)
    viewer.dims.set_point(0, 35 * 2.0)  # scroll far: the slab follows, the stroke is saved
    ctl.follow_view()
    assert ctl.window[0].start <= 35 < ctl.window[0].stop
    assert store[3, 10, 10] == 2
    np.testing.assert_allclose(ctl.layer.data_to_world((0, 0, 0)), (ctl.window[0].start * 2.0, 0, 0))
    ctl.close()
    store.close()


def test_store_at_a_declared_level_sits_on_the_image(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    levels = [np.zeros((800, 1000), np.uint8), np.zeros((400, 500), np.uint8), np.zeros((200, 250), np.uint8)]
    img = viewer.add_image(levels, multiscale=True, scale=(0.25, 0.25), name="pyr")
    src = from_layer(img, reopen=False)
    store = LabelStore.for_image(src, folder=tmp_path, level=1, classes=CLASSES)
    assert store.shape == (400, 500) and store.pixel_size == (0.5, 0.5)
    ctl = PaintingController(viewer, store, img)
    # store pixel (i, j) covers image pixels (2i, 2j)..(2i+1, 2j+1): its centre is image pixel (2i+0.5, 2j+0.5)
    np.testing.assert_allclose(ctl.layer.data_to_world((10, 20)), img.data_to_world((20.5, 40.5)))
    ctl.close()
    store.close()


def test_touched_box_covers_napari_index_forms():
    shape = (100, 200)
    assert touched_box((slice(5, 9), slice(None)), shape) == ([5, 0], [9, 200])
    assert touched_box((np.array([3, 50]), np.array([7, 8])), shape) == ([3, 7], [51, 9])
    assert touched_box((4, Ellipsis), shape) == ([4, 0], [5, 200])
    assert touched_box(np.zeros(shape, bool), shape) == ([0, 0], [100, 200])
    assert touched_box((np.array([], int), np.array([], int)), shape) is None


def test_the_overview_shows_only_while_the_view_reaches_beyond_the_window_and_obeys_the_users_eye(slide):
    """Inside the window the overview is blank, so it is hidden (neither sliced nor drawn) while the window
    covers the view; it shows when the view reaches beyond (before the window follows), and once the user
    unticks its eye it stays hidden until ticked again."""
    viewer, store, ctl = slide
    ov = ctl.overview_layer
    _goto(viewer, ctl, 1500, 2000)  # zoomed in: the 1024 px window covers the view
    assert ctl.geom.beyond(ctl.window, *ctl.view_box()) is False and not ov.visible
    look_at(viewer, ctl, 2800, 3800, 4.0)  # panned away; the window has not followed yet
    assert ctl.geom.beyond(ctl.window, *ctl.view_box()) and ov.visible
    ctl.follow_view()
    assert not ov.visible
    camera_of(viewer).zoom = 0.05  # the whole slide: shown by a coarse window, which covers it all
    assert ov.visible  # the view is wider than the window until it follows
    ctl.follow_view()
    assert ctl.level > 0 and not ov.visible
    ov.visible = False  # the user unticks it: it stays hidden wherever the view goes
    _goto(viewer, ctl, 1500, 2000)
    look_at(viewer, ctl, 100, 100, 4.0)
    assert not ov.visible
    ov.visible = True  # ticked again: shown only where needed, as before
    ctl.follow_view()
    assert not ov.visible
    ctl.close()
    ov.visible = True  # a closed controller no longer hides it
    look_at(viewer, ctl, 1500, 2000, 4.0)
    assert ov.visible
