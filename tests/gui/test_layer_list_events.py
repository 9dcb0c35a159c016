"""The layer list ignores each layer's zoom-step event, and still shows everything else; finding it takes
no private attribute of napari's viewer (no "Private attribute access" warning in a dock widget)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from napari.utils._proxies import PublicOnlyProxy

from napari_medseg._napari import layer_list_events as lle


def _changes(model) -> list[int]:
    rows: list[int] = []
    model.dataChanged.connect(lambda a, b, roles=(): rows.append(a.row()))
    return rows


@pytest.fixture
def viewer(make_napari_viewer):
    v = make_napari_viewer()
    v.add_image(np.zeros((64, 64), np.uint8), name="img")
    v.add_labels(np.zeros((64, 64), np.uint8), name="labels")
    return v


def test_zoom_events_no_longer_repaint_the_layer_list(viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_LAYER_LIST_FILTER", "1")
    model = lle.layer_list_model(viewer)
    rows = _changes(model)
    viewer.layers["labels"].events.scale_factor()
    assert rows, "napari's layer list reacted to zoom events before: the filter would have nothing to do"
    assert lle.quiet_zoom_events(viewer)
    assert lle.quiet_zoom_events(viewer)  # once per viewer, however many widgets ask
    rows.clear()
    for layer in viewer.layers:
        layer.events.scale_factor()
    assert rows == []
    viewer.layers["labels"].name = "renamed"  # what the list shows still reaches it
    viewer.layers["img"].visible = False
    assert len(rows) >= 2
    assert "renamed" in [model.index(i).data() for i in range(model.rowCount())]


def test_refresh_and_paint_events_no_longer_repaint_it_but_thumbnails_do(viewer, monkeypatch):
    """A preview refresh or a prediction block emits reload / set_data / data / _extent_augmented several times a
    second, a brush dab emits paint: none changes what the list shows; the thumbnail that follows still
    reaches its role."""
    monkeypatch.setenv("NAPARI_MEDSEG_LAYER_LIST_FILTER", "1")
    model = lle.layer_list_model(viewer)
    layer = viewer.layers["labels"]
    roles: list[list[int]] = []
    model.dataChanged.connect(lambda a, b, r=(): roles.append(list(r)))
    layer.events.reload(layer=layer)
    assert [] in roles, "napari's layer list repainted all roles on reload before: nothing to filter"
    assert lle.quiet_zoom_events(viewer)
    roles.clear()
    for kind in ("reload", "set_data", "data", "_extent_augmented", "paint"):
        getattr(layer.events, kind)(layer=layer)
    assert [] not in roles  # no "all roles changed" (a thumbnail the layer redraws may follow, with its role)
    roles.clear()
    layer.data = np.ones((64, 64), np.uint8)  # a real change: its thumbnail still updates the row
    assert any(roles)  # the thumbnail role arrives (other events of a data change may still pass whole)


def test_zoom_only_setting_keeps_the_first_filter(viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_LAYER_LIST_FILTER", "zoom")
    assert lle.quiet_zoom_events(viewer)
    rows = _changes(lle.layer_list_model(viewer))
    viewer.layers["labels"].events.scale_factor()
    assert rows == []
    viewer.layers["labels"].events.reload(layer=viewer.layers["labels"])
    assert rows


def test_switched_off(viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_LAYER_LIST_FILTER", "0")
    assert not lle.quiet_zoom_events(viewer)
    rows = _changes(lle.layer_list_model(viewer))
    viewer.layers["labels"].events.scale_factor()
    assert rows


def test_without_a_window_nothing_happens():
    class Headless:
        window = None

    assert not lle.quiet_zoom_events(Headless())


def test_widgets_put_the_filter_in_place(viewer, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_MEDSEG_LAYER_LIST_FILTER", "1")
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    from napari_medseg._napari.widgets.predict import PredictWidget

    PredictWidget(viewer)
    assert getattr(lle.layer_list_model(viewer), "_medseg_filter", None) is not None


def test_unfiltered_restores_napari_behaviour_for_a_while(viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_LAYER_LIST_FILTER", "1")
    assert lle.quiet_zoom_events(viewer)
    rows = _changes(lle.layer_list_model(viewer))
    with lle.unfiltered(viewer):
        viewer.layers["labels"].events.scale_factor()
        assert rows
    rows.clear()
    viewer.layers["labels"].events.scale_factor()
    assert rows == []


def test_found_through_napari_proxy_without_private_attribute_access(viewer, monkeypatch):
    """A dock widget gets the viewer as napari's ``PublicOnlyProxy``; reading ``window._qt_viewer`` through
    it warns "Private attribute access ... will be unavailable no earlier than 0.10.0"."""
    monkeypatch.setenv("NAPARI_MEDSEG_LAYER_LIST_FILTER", "1")
    proxy = PublicOnlyProxy(viewer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lle.quiet_zoom_events(proxy)
        with lle.unfiltered(proxy):
            pass
    assert [str(w.message) for w in caught if "Private attribute access" in str(w.message)] == []
    rows = _changes(lle.layer_list_model(viewer))
    viewer.layers["labels"].events.scale_factor()
    assert rows == []
