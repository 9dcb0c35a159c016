"""``napari_compat_layers``: the plugin's layer handling uses no private napari attribute through the proxy
napari gives dock widgets (napari warns "Private attribute access ... will be unavailable no earlier than
0.10.0" for each), and the few napari internals it relies on are found, or cleanly not found."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from napari.utils._proxies import PublicOnlyProxy

from napari_medseg._napari import napari_compat_layers as compat

PLUGIN = "napari-medseg"
PACKAGE = Path(compat.__file__).parents[1]  # napari_medseg: the widget's modules and what they call


@pytest.fixture(autouse=True)
def data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(tmp_path / "user-data"))


def _private_access(caught) -> list[str]:
    return [f"{Path(w.filename).name}:{w.lineno}: {w.message}" for w in caught
            if "Private attribute access" in str(w.message) and PACKAGE in Path(w.filename).parents]


def test_annotate_widget_docked_reads_no_private_napari_attribute(make_napari_viewer, qtbot):
    """Through the manifest, as a user docks it: the widget gets napari's proxy of the viewer. Opening a
    sample, the labels opening by themselves, painting, a second image, removing it, closing: no private
    attribute read through the proxy."""
    viewer = make_napari_viewer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate")
        assert type(w.viewer).__name__ == "PublicOnlyProxy"
        viewer.open_sample(PLUGIN, "ct")
        qtbot.waitUntil(lambda: w.store is not None, timeout=10000)
        w.controller.layer.paint((32, 100, 100), 3)
        w.save_now()
        viewer.add_image(np.zeros((64, 64), np.float32), name="other")
        w.image_combo.setCurrentText("other")
        qtbot.waitUntil(lambda: w.store is not None and w.store.shape == (64, 64), timeout=10000)
        viewer.layers.remove("other")
        qtbot.waitUntil(lambda: w.store is not None and w.store.shape == (64, 256, 256), timeout=10000)
        w.close_store()
    assert _private_access(caught) == []
    assert w.class_table.rowCount() == 0


def test_unwrap_and_same_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((8, 8)), name="img")
    proxy = PublicOnlyProxy(viewer)
    wrapped = proxy.layers["img"]
    assert compat.unwrap(wrapped) is layer and compat.unwrap(layer) is layer
    assert compat.same_layer(wrapped, layer) and not compat.same_layer(wrapped, None)
    assert compat.is_image_layer(wrapped) and not compat.is_labels_layer(wrapped)


def test_layer_list_model_and_its_handler(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8)), name="img")
    model = compat.layer_list_model(PublicOnlyProxy(viewer))
    assert model is not None and model.rowCount() == 1
    handler = compat.layer_event_handler(model, viewer.layers)
    assert handler is not None and handler.__self__ is model
    other = make_napari_viewer()
    assert compat.layer_list_model(other) is not model  # each viewer its own list


def test_nothing_found_without_a_window():
    from napari.components import ViewerModel

    assert compat.layer_list_model(ViewerModel()) is None


def test_close_notifications(make_napari_viewer, qtbot):
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from napari.utils.notifications import Notification

    viewer = make_napari_viewer(show=True)
    toast = NapariQtNotification.from_notification(Notification("hello"))
    toast.setParent(viewer.window._qt_window.centralWidget())  # where napari puts its toasts
    toast.show()
    assert compat.close_notifications() >= 1
    qtbot.waitUntil(lambda: not toast.isVisible(), timeout=3000)

