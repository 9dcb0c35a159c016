"""The napari window with napari-medseg's widgets docked, measured on the real window at 1600 x 1000 under
Xvfb: the widgets share one tabbed dock with readable tab titles ("Annotate", "Train", "Predict"), whether
``napari-medseg gui`` docks them or the Plugins menu opens them; the dock is narrow, so the canvas keeps
about 60 % of the width and napari's layer controls and list keep theirs; after a sample opens the whole
image is in view, once the docks have taken their width."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication, QDockWidget, QMainWindow, QTabBar

from napari_medseg._napari import dock_layout, launch
from napari_medseg._napari.layers import camera_of

PLUGIN = "napari-medseg"
WIDTH, HEIGHT = 1600, 1000
CANVAS_SHARE = 0.6


@pytest.fixture(autouse=True)
def data_folder(tmp_path, monkeypatch):
    """The user data folder (where a sample's labels go): a temporary one."""
    folder = tmp_path / "user-data"
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(folder))
    return folder


def _window(viewer) -> QMainWindow:
    """napari's main window (through Qt: the top-level window holding the viewer's layer list dock)."""
    for top in QApplication.topLevelWidgets():
        if isinstance(top, QMainWindow) and top.isVisible() and top.windowTitle() == viewer.title:
            return top
    raise AssertionError("no napari window shown")


def _shown_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True, title="medseg-dock-test")
    viewer.window.resize(WIDTH, HEIGHT)
    qtbot.wait(50)
    return viewer


def _settle(qtbot, ms: int = 600) -> None:
    qtbot.wait(ms)  # the docks take their width, the canvas its size, the view is fitted again


def _tab_bars(window) -> list[list[str]]:
    return [[tb.tabText(i) for i in range(tb.count())] for tb in window.findChildren(QTabBar)
            if tb.isVisible() and tb.count()]


def _shown_tab(window, titles: list[str]) -> str:
    """The current tab of the tab bar showing ``titles``."""
    for tb in window.findChildren(QTabBar):
        if tb.isVisible() and [tb.tabText(i) for i in range(tb.count())] == titles:
            return tb.tabText(tb.currentIndex())
    raise AssertionError(f"no tab bar {titles}: {_tab_bars(window)}")


def _docks(window) -> dict[str, QDockWidget]:
    return {d.windowTitle(): d for d in window.findChildren(QDockWidget) if d.isVisible()}


def _plugins_menu_action(window, name: str):
    """Plugins > napari-medseg > ``name`` in the window's menu bar."""
    for top in window.menuBar().actions():
        if top.text().replace("&", "") == "Plugins":
            for sub in top.menu().actions():
                if sub.text() == PLUGIN and sub.menu() is not None:
                    for action in sub.menu().actions():
                        if action.text() == name:
                            return action
    raise AssertionError(f"no Plugins > {PLUGIN} > {name} in the menu bar")


def _private_access(caught) -> list[str]:
    """napari's "Private attribute access" warnings raised from napari-medseg's code."""
    package = Path(dock_layout.__file__).parents[1]
    return [f"{Path(w.filename).name}:{w.lineno}: {w.message}" for w in caught
            if "Private attribute access" in str(w.message) and package in Path(w.filename).parents]


def _canvas_width(viewer) -> int:
    return int(viewer.canvas.size[1])  # (height, width), kept in sync with the Qt canvas by napari


def _assert_napari_docks_not_squeezed(window) -> None:
    docks = _docks(window)
    for name in ("layer controls", "layer list"):
        assert name in docks, f"napari's {name} is not shown"
        assert docks[name].width() >= max(240, docks[name].widget().minimumSizeHint().width())


def _assert_all_in_view(viewer) -> None:
    """Every layer's full extent (pixel edges) over the displayed axes lies within the canvas."""
    extent = viewer.layers.extent
    axes = list(viewer.dims.displayed)
    lo = np.asarray(extent.world[0])[axes] - np.asarray(extent.step)[axes] / 2
    hi = np.asarray(extent.world[1])[axes] + np.asarray(extent.step)[axes] / 2
    camera = camera_of(viewer)
    center = np.asarray(camera.center)[-2:]
    half = np.asarray(viewer.canvas.size, float) / camera.zoom / 2
    tol = 1.0 / camera.zoom  # one screen pixel
    assert np.all(lo >= center - half - tol) and np.all(hi <= center + half + tol), (
        f"image {lo}..{hi} but the view shows {center - half}..{center + half} (canvas {viewer.canvas.size})")


def test_launch_tabs_the_widgets_in_one_narrow_dock(make_napari_viewer, qtbot):
    """``napari-medseg gui --sample ct`` at 1600 x 1000: one tab group titled Annotate, Train, Predict,
    Objects, Annotate shown; the group as narrow as its widgets allow, the Train widget within ``DOCK_WIDTH``; the
    canvas keeps 60 % of the width when every widget fits that width."""
    viewer = _shown_viewer(make_napari_viewer, qtbot)
    with warnings.catch_warnings(record=True) as caught:  # the widgets get napari's public-only viewer proxy
        warnings.simplefilter("always")
        info = launch.setup_viewer(viewer, sample="ct")
        _settle(qtbot)
    assert info["docked"] == ["Annotate", "Train", "Predict", "Objects"]
    assert type(viewer.window.dock_widgets["Train (napari-medseg)"].viewer).__name__ == "PublicOnlyProxy"
    assert _private_access(caught) == []
    window = _window(viewer)
    assert window.width() == WIDTH
    assert ["Annotate", "Train", "Predict", "Objects"] in _tab_bars(window)
    docks = dock_layout.medseg_docks(window)
    assert sorted(d.windowTitle() for d in docks) == ["Annotate", "Objects", "Predict", "Train"]
    assert len({window.dockWidgetArea(d) for d in docks}) == 1
    assert _shown_tab(window, ["Annotate", "Train", "Predict", "Objects"]) == "Annotate"
    train = next(d for d in docks if d.windowTitle() == "Train")
    assert train.minimumSizeHint().width() <= dock_layout.DOCK_WIDTH + 5  # its form wraps and scrolls
    need = max(d.minimumSizeHint().width() for d in docks)
    width = docks[0].width()
    assert width <= max(dock_layout.DOCK_WIDTH, need) + 2, f"dock {width} px, its widgets need {need}"
    _assert_napari_docks_not_squeezed(window)
    wide = {d.windowTitle(): d.minimumSizeHint().width() for d in docks
            if d.minimumSizeHint().width() > dock_layout.DOCK_WIDTH + 5}
    assert not wide, f"these widgets need more than {dock_layout.DOCK_WIDTH} px: {wide}"  # two buttons a row
    assert _canvas_width(viewer) >= CANVAS_SHARE * WIDTH, f"canvas {_canvas_width(viewer)} of {WIDTH} px"


def test_plugins_menu_tabs_the_widgets_and_keeps_the_canvas(make_napari_viewer, qtbot):
    """Opened one by one from the Plugins menu (napari would stack them): Train alone leaves the canvas 60 %
    of the width and the sample whole in view; Annotate and Predict opened after it join its tabs, in the
    workflow's order, the one just opened shown."""
    viewer = _shown_viewer(make_napari_viewer, qtbot)
    viewer.open_sample(PLUGIN, "ct")
    window = _window(viewer)
    with warnings.catch_warnings(record=True) as caught:  # the widget gets napari's public-only viewer proxy
        warnings.simplefilter("always")
        _plugins_menu_action(window, "Train").trigger()
        _settle(qtbot)
    assert _private_access(caught) == []
    assert _canvas_width(viewer) >= CANVAS_SHARE * WIDTH, f"canvas {_canvas_width(viewer)} of {WIDTH} px"
    _assert_napari_docks_not_squeezed(window)
    _assert_all_in_view(viewer)  # the sample was whole in view before the dock took its width: it still is
    assert "Train" in _docks(window)
    camera_of(viewer).zoom *= 2  # the user zooms in (the view is theirs from the next resize on) ...
    viewer.window.resize(WIDTH - 10, HEIGHT)
    _settle(qtbot, 300)
    viewer.window.resize(WIDTH, HEIGHT)
    _settle(qtbot, 300)
    viewer.reset_view()  # ... and presses Home: the whole image in view, on a canvas the next widgets narrow
    _plugins_menu_action(window, "Annotate").trigger()
    _settle(qtbot)
    _plugins_menu_action(window, "Predict").trigger()
    _settle(qtbot)
    assert ["Annotate", "Train", "Predict"] in _tab_bars(window)
    assert _shown_tab(window, ["Annotate", "Train", "Predict"]) == "Predict"
    _assert_all_in_view(viewer)  # the wider Annotate and Predict widgets widened the dock: still whole
    assert len({window.dockWidgetArea(d) for d in dock_layout.medseg_docks(window)}) == 1


@pytest.mark.parametrize("sample", ["ct", pytest.param("slide", marks=pytest.mark.slow)])
def test_the_sample_opens_whole_in_view(make_napari_viewer, qtbot, sample):
    """After ``napari-medseg gui --sample``, once the docks have their width, the whole image is on the
    canvas (the CT's slice view too); the view is fitted again when the window changes size, until the
    user zooms."""
    viewer = _shown_viewer(make_napari_viewer, qtbot)
    launch.setup_viewer(viewer, sample=sample)
    _settle(qtbot)
    assert viewer.dims.ndisplay == 2
    _assert_all_in_view(viewer)
    viewer.window.resize(1200, 800)
    _settle(qtbot)
    _assert_all_in_view(viewer)
    camera = camera_of(viewer)
    camera.zoom *= 3  # the user zooms in: a later resize keeps their view
    zoom = camera.zoom
    viewer.window.resize(WIDTH, HEIGHT)
    _settle(qtbot)
    assert camera.zoom == zoom
