"""Painting a slide zoomed out, on the real napari canvas (real Qt mouse events through the viewer): strokes
anywhere in view land in the label store at full resolution (as blocks of a coarse level's cells), fine detail
under untouched cells is kept and undo restores it exactly, zooming back in paints at full resolution again,
a stroke outside the editable window moves it there, the window is outlined and coarse painting announced."""

from __future__ import annotations

import numpy as np
import pytest
from painting_gui_helpers import CLASSES, PS, SLIDE, blocks_only, canvas_pos, line, look_at, qt_stroke, world

from napari_medseg._napari.painting.controller import PaintingController
from napari_medseg.labels.store import LabelStore

ALL = (slice(0, SLIDE[0]), slice(0, SLIDE[1]))
WHOLE_ZOOM = 0.3  # the whole 3000 x 4000 px slide in view: the window shows level 2 (4 x 4 px cells)


def _setup(make_napari_viewer, tmp_path, follow=True):
    viewer = make_napari_viewer(show=True)
    img = viewer.add_image(np.zeros(SLIDE, np.uint8), scale=(PS, PS), translate=(10.0, 20.0), name="slide")
    store = LabelStore.create(tmp_path / "slide.labels.zarr", SLIDE, chunks=(256, 256), classes=CLASSES,
                              pixel_size=(PS, PS), coarsest=500)
    notes: list[str] = []
    infos: list[str] = []
    ctl = PaintingController(viewer, store, img, max_window=1024, follow=follow, notify=notes.append,
                             inform=infos.append)
    ctl.notes, ctl.infos = notes, infos
    layer = ctl.layer
    viewer.layers.selection.active = layer
    layer.mode, layer.selected_label = "paint", 2
    return viewer, store, ctl


@pytest.fixture
def slide(make_napari_viewer, tmp_path):
    viewer, store, ctl = _setup(make_napari_viewer, tmp_path)
    yield viewer, store, ctl
    ctl.close()
    store.close()


def _zoom_out(viewer, ctl):
    look_at(viewer, ctl, 1500, 2000, WHOLE_ZOOM)
    ctl.follow_view()  # what the debounced camera handler does


def test_zoomed_out_stroke_lands_in_the_store_at_full_resolution(slide, qtbot):
    viewer, store, ctl = slide
    _zoom_out(viewer, ctl)
    ctl.layer.brush_size = 3
    qt_stroke(viewer, qtbot, ctl, line((2700, 300), (2700, 1200)))  # far from the centre of the view
    ctl.flush(wait=True)
    painted = store.read(ALL) == 2
    assert painted[2700, 300:1201].all() and painted[2600:2800].sum() == painted.sum()
    assert blocks_only(painted, 4)  # each painted layer pixel is a 4 x 4 block of store pixels
    assert ctl.window == ALL and ctl.level == 2  # the window covers the whole view, at 1/4 resolution
    assert not ctl.notes


def test_coarse_stroke_keeps_fine_detail_and_undo_restores_it_exactly(slide, qtbot):
    viewer, store, ctl = slide
    region = (slice(1980, 2060), slice(540, 720))
    for i in range(40):  # a one-pixel diagonal of class 3, painted earlier at full resolution
        store.write((slice(2000 + i, 2001 + i), slice(600 + i, 601 + i)), 3)
    before = store.read(region)
    _zoom_out(viewer, ctl)
    ctl.layer.brush_size = 2
    qt_stroke(viewer, qtbot, ctl, line((2010, 560), (2010, 700)))
    ctl.flush(wait=True)
    after = store.read(region)
    changed = after != before
    assert changed.any() and (after[changed] == 2).all()
    assert blocks_only(changed[0:, 0:], 4)  # the region starts on a multiple of 4
    assert after[2035 - 1980, 635 - 540] == 3 and after[2039 - 1980, 639 - 540] == 3  # away from the stroke
    assert (store.read((slice(0, 1900), ALL[1])) == 0).all()  # nothing else changed
    ctl.layer.undo()
    ctl.flush(wait=True)
    np.testing.assert_array_equal(store.read(region), before)  # the fine diagonal is back, pixel for pixel
    assert store.class_counts()[2] == 0


def test_zooming_back_in_paints_at_full_resolution_again(slide, qtbot):
    viewer, store, ctl = slide
    _zoom_out(viewer, ctl)
    ctl.layer.brush_size = 3
    qt_stroke(viewer, qtbot, ctl, line((2700, 300), (2700, 700)))
    look_at(viewer, ctl, 2680, 500, 4.0)  # zoom in where the coarse stroke is
    ctl.follow_view()
    np.testing.assert_allclose(ctl.layer.scale, (PS, PS))
    w = ctl.window
    assert w[0].stop - w[0].start <= 1024 and w[0].start <= 2700 < w[0].stop
    assert np.asarray(ctl.layer.data)[2700 - w[0].start, 500 - w[1].start] == 2  # the coarse stroke, saved, shown
    ctl.layer.selected_label, ctl.layer.brush_size = 3, 1
    qt_stroke(viewer, qtbot, ctl, line((2650, 450), (2650, 550), 60))
    ctl.flush(wait=True)
    fine = store.read((slice(2640, 2660), slice(440, 560))) == 3
    assert fine[10, 10:110].all() and fine.sum() < 3 * 120  # a thin line, not 4 x 4 blocks
    assert (store.read((slice(2690, 2710), slice(300, 701))) == 2).any()


def test_a_fill_zoomed_out_covers_the_slide_and_undo_empties_it(slide, qtbot):
    viewer, store, ctl = slide
    _zoom_out(viewer, ctl)
    ctl.layer.mode = "fill"
    ctl.layer.contiguous = False
    qt_stroke(viewer, qtbot, ctl, [(1500, 2000)])
    ctl.flush(wait=True)
    assert store.class_counts()[2] == SLIDE[0] * SLIDE[1]  # every store pixel, not just a 1024 px window
    ctl.layer.undo()
    ctl.flush(wait=True)
    assert store.painted_chunks() == []


def test_paint_right_after_zooming_out_follows_first(slide, qtbot):
    viewer, store, ctl = slide
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.follow_view()
    first = ctl.window
    look_at(viewer, ctl, 1500, 2000, WHOLE_ZOOM)  # and paint at once, before the window follows by itself
    ctl.layer.brush_size = 3
    qt_stroke(viewer, qtbot, ctl, line((2700, 3000), (2700, 3800)))
    ctl.flush(wait=True)
    assert ctl.window != first
    assert (store.read((slice(2690, 2710), slice(3000, 3801))) == 2).any(axis=0).all()


def test_a_stroke_outside_the_window_moves_the_window_there(make_napari_viewer, tmp_path, qtbot):
    viewer, store, ctl = _setup(make_napari_viewer, tmp_path, follow=False)
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.move_window(ctl.window_for_view())
    first = ctl.window
    look_at(viewer, ctl, 2500, 3500, 4.0)  # the window does not follow the view
    ctl.layer.brush_size = 5
    qt_stroke(viewer, qtbot, ctl, line((2500, 3450), (2500, 3550)))
    ctl.flush(wait=True)
    assert ctl.window != first and ctl.window[0].start <= 2500 < ctl.window[0].stop
    assert (store.read((slice(2500, 2501), slice(3450, 3551))) == 2).all()
    ctl.close()
    store.close()


def test_the_editable_window_is_outlined_on_the_canvas(slide, qtbot, make_napari_viewer, tmp_path):
    viewer, store, ctl = slide
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.follow_view()
    box = ctl.layer.bounding_box
    assert box.visible and not box.points
    edge_y = ctl.window[0].stop  # the window's lower edge, in view
    look_at(viewer, ctl, edge_y, 500, 1.0)
    ctl.follow_view = lambda *a, **k: None  # keep the window where it is for the picture
    qtbot.wait(50)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    x, y = (int(round(v)) for v in canvas_pos(viewer, ctl, edge_y - 0.5, 500))
    patch = shot[max(0, y - 3): y + 4, x - 3: x + 4, :3].reshape(-1, 3).astype(int)
    assert ((patch[:, 0] > 180) & (patch[:, 1] > 150) & (patch[:, 2] < 100)).any(), patch  # the yellow line
    small = make_napari_viewer()
    img = small.add_image(np.zeros((300, 400), np.uint8), name="small")
    st = LabelStore.create(tmp_path / "small.zarr", (300, 400), classes=CLASSES)
    c2 = PaintingController(small, st, img)
    assert not c2.layer.bounding_box.visible  # shown whole: nothing to outline
    c2.close()
    st.close()


def test_painting_zoomed_out_is_announced_once(slide, qtbot):
    viewer, store, ctl = slide
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.follow_view()
    qt_stroke(viewer, qtbot, ctl, line((500, 480), (500, 520)))
    assert ctl.infos == []  # full resolution: nothing to say
    _zoom_out(viewer, ctl)
    for row in (1000, 1200):
        qt_stroke(viewer, qtbot, ctl, line((row, 1000), (row, 1400)))
    assert len(ctl.infos) == 1 and "1/4 resolution" in ctl.infos[0] and "4 x 4" in ctl.infos[0]


def test_external_writes_reach_a_coarse_window_and_unsaved_strokes_win(slide, qtbot):
    viewer, store, ctl = slide
    _zoom_out(viewer, ctl)
    ctl.layer.brush_size = 2
    qt_stroke(viewer, qtbot, ctl, line((400, 400), (400, 440)))  # not saved yet
    store.write((slice(1000, 1002), slice(1000, 1002)), 3)  # e.g. an accepted prediction
    store.write((slice(398, 402), slice(400, 440)), 1)  # under the unsaved stroke
    assert ctl.layer.get_value(world(ctl, 1001, 1001), world=True) == 3
    ctl.flush(wait=True, full=True)
    assert (store.read((slice(1000, 1002), slice(1000, 1002))) == 3).all()
    assert (store.read((slice(400, 401), slice(404, 436))) == 2).all()


def test_a_stroke_where_the_window_cannot_go_says_so(make_napari_viewer, tmp_path, qtbot):
    viewer, store, ctl = _setup(make_napari_viewer, tmp_path, follow=False)
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.move_window(ctl.window_for_view())
    ctl.layer.paint((50, 50), 7)  # not a class: the window cannot be saved, so it cannot move
    look_at(viewer, ctl, 2500, 3500, 4.0)
    ctl.layer.selected_label = 2
    qt_stroke(viewer, qtbot, ctl, line((2500, 3450), (2500, 3550)))
    assert any("Nothing was painted there" in n and "outlined" in n for n in ctl.notes)
    assert store.painted_chunks() == []
    ctl.close()
    store.close()
