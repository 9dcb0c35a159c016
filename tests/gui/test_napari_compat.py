"""napari through its public API only: the compat functions do what they say on a real viewer, and painting a
slide through the viewer a dock widget gets (napari's ``PublicOnlyProxy``) never makes napari warn about
private attribute access (napari shows those warnings over the canvas)."""

from __future__ import annotations

import warnings

import numpy as np
from napari.utils._proxies import PublicOnlyProxy
from painting_gui_helpers import CLASSES, PS, SLIDE, line, look_at, qt_stroke
from qtpy.QtWidgets import QApplication

from napari_medseg._napari import napari_compat as compat
from napari_medseg._napari.painting.controller import PaintingController
from napari_medseg.labels.store import LabelStore


def _private_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "Private attribute access" in str(w.message)]


def test_canvas_size_is_the_real_canvas_size(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    qt_canvas = viewer.window._qt_viewer.canvas  # the test may look inside napari
    assert compat.canvas_size(viewer) == tuple(qt_canvas.size)
    viewer.window.resize(900, 700)
    qtbot.waitUntil(lambda: tuple(qt_canvas.size) != (0, 0))
    QApplication.processEvents()
    assert compat.canvas_size(viewer) == tuple(qt_canvas.size)
    assert compat.canvas_size(object()) == compat.DEFAULT_CANVAS


def test_reset_undo_history_keeps_the_mode(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((50, 60), np.uint8))
    layer.mode, layer.brush_size = "paint", 5
    layer.paint((20, 20), 2)
    compat.reset_undo_history(layer)
    layer.undo()  # nothing left to undo
    assert layer.data[20, 20] == 2 and layer.mode == "paint" and layer.editable
    layer.editable = False
    compat.reset_undo_history(layer)  # a layer that cannot be edited stays so
    assert not layer.editable


def test_show_outline_draws_the_layer_extent(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((50, 60), np.uint8))
    assert not layer.bounding_box.visible
    assert compat.show_outline(layer, "#ffd400", 2)
    assert layer.bounding_box.visible and not layer.bounding_box.points and layer.bounding_box.line_thickness == 2
    assert not compat.show_outline(object())


def test_compat_functions_warn_nothing_through_the_proxy(make_napari_viewer):
    viewer = make_napari_viewer()
    proxy = PublicOnlyProxy(viewer)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        layer = proxy.add_labels(np.zeros((50, 60), np.uint8))
        compat.canvas_size(proxy)
        layer.mode = "paint"
        compat.reset_undo_history(layer)
        compat.show_outline(layer)
    assert _private_warnings(record) == []


def test_painting_through_the_plugin_viewer_proxy_warns_nothing(make_napari_viewer, tmp_path, qtbot):
    raw = make_napari_viewer(show=True)
    viewer = PublicOnlyProxy(raw)  # what napari hands a dock widget (the Annotate widget passes it on)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        img = viewer.add_image(np.zeros(SLIDE, np.uint8), scale=(PS, PS), name="slide")
        store = LabelStore.create(tmp_path / "s.zarr", SLIDE, chunks=(256, 256), classes=CLASSES,
                                  pixel_size=(PS, PS), coarsest=500)
        ctl = PaintingController(viewer, store, img, max_window=1024, inform=lambda m: None)
        ctl.layer.mode, ctl.layer.brush_size = "paint", 3
        look_at(raw, ctl, 500, 500, 4.0)
        ctl.follow_view()
        qt_stroke(raw, qtbot, ctl, line((500, 450), (500, 550)))  # full resolution
        look_at(raw, ctl, 1500, 2000, 0.3)
        ctl.follow_view()  # a coarse level, the overview re-read
        qt_stroke(raw, qtbot, ctl, line((2500, 500), (2500, 900)))
        ctl.layer.undo()
        store.write((slice(100, 110), slice(3900, 3910)), 3)  # someone else writes: the window re-reads
        look_at(raw, ctl, 2500, 3500, 4.0)
        qt_stroke(raw, qtbot, ctl, line((2500, 3450), (2500, 3550)))  # starts outside: the window moves there
        ctl.show_region((slice(100, 110), slice(3900, 3910)))
        ctl.flush(wait=True, full=True)
        ctl.close(remove_layers=True)
        store.close()
    assert _private_warnings(record) == []
    assert (LabelStore.open(tmp_path / "s.zarr", mode="r").read((slice(500, 501), slice(450, 551))) == 2).all()
