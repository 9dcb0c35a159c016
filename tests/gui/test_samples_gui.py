"""Samples through the manifest in a real napari viewer, and the ``napari-medseg gui`` launcher: the
ground truth is reference labels (not paintable, never the layer selected after opening), and with the
widgets docked the sample's labels open by themselves in the user data folder, ready to paint."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_medseg._napari import launch
from napari_medseg.samples.ct import ct_classes
from napari_medseg.samples.slide import slide_classes

PLUGIN = "napari-medseg"


@pytest.fixture(autouse=True)
def data_folder(tmp_path, monkeypatch):
    """The user data folder (where a sample's labels go): a temporary one."""
    folder = tmp_path / "user-data"
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(folder))
    return folder


def _color(layer, value):
    return np.asarray(layer.colormap.map(np.array([value]))[0])


def test_open_sample_ct(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "ct")
    assert [ly.__class__.__name__ for ly in layers] == ["Image", "Labels"]
    img, gt = layers
    assert img.name == "sample CT" and gt.name == "ground truth"
    assert img.data.shape == (64, 256, 256)
    np.testing.assert_allclose(img.scale, (2.5, 1.5, 1.5))
    np.testing.assert_allclose(gt.scale, img.scale)
    assert tuple(img.contrast_limits) == (-160.0, 240.0)
    assert img.colormap.name == "gray"
    schema = ct_classes()
    for k, hexcolor in enumerate(schema.colors[1:], start=2):  # store value k = class k-1
        rgb = [int(hexcolor[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        np.testing.assert_allclose(_color(gt, k)[:3], rgb, atol=1e-3)
    assert _color(gt, 1)[3] == 0 and _color(gt, 0)[3] == 0   # background and unannotated see-through
    assert gt.visible and gt.opacity < 0.5
    # the middle slice shows the liver on the viewer's left (patient's right: radiological view)
    mid = np.asarray(gt.data[32])
    assert np.argwhere(mid == 2)[:, 1].mean() < 128
    viewer.dims.ndisplay = 3  # renders in 3D without error
    viewer.dims.ndisplay = 2


def _layer_list_shows_selected(viewer) -> list[str]:
    """The rows napari's Qt layer list shows selected (it can disagree with ``viewer.layers.selection``)."""
    from qtpy.QtWidgets import QAbstractItemView, QApplication

    from napari_medseg._napari.napari_compat_layers import layer_list_model

    source = layer_list_model(viewer)
    for top in QApplication.topLevelWidgets():
        for view in top.findChildren(QAbstractItemView):
            if getattr(view.model(), "sourceModel", lambda: None)() is source:
                return sorted(view.model().data(i) for i in view.selectionModel().selectedIndexes())
    raise AssertionError("no layer list found")


def test_sample_ground_truth_is_neither_selected_nor_paintable(make_napari_viewer, qtbot):
    """File > Open Sample with no widget open: the CT image is the selected layer (in the layer list too),
    the ground truth (a plain labels array napari would let you paint) is not editable, and stays so."""
    viewer = make_napari_viewer()
    img, gt = viewer.open_sample(PLUGIN, "ct")
    assert not gt.editable
    qtbot.waitUntil(lambda: viewer.layers.selection.active is img, timeout=3000)
    assert gt not in viewer.layers.selection
    assert _layer_list_shows_selected(viewer) == ["sample CT"]
    viewer.dims.ndisplay = 3
    viewer.dims.ndisplay = 2
    gt.data = np.asarray(gt.data)  # napari makes a layer editable again when its data is replaced
    assert not gt.editable
    viewer.layers.selection.active = gt  # the user may still select it, to look or change its opacity
    assert viewer.layers.selection.active is gt


@pytest.mark.slow  # generates the 8192 px slide on first use (about 20-40 s)
def test_open_sample_slide(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img, gt = viewer.open_sample(PLUGIN, "slide")
    assert img.multiscale and img.rgb and len(img.data) >= 3
    assert img.data[0].shape == (8192, 8192, 3)
    np.testing.assert_allclose(img.scale, (0.5, 0.5))
    assert gt.__class__.__name__ == "Labels" and gt.multiscale and not gt.visible
    assert not gt.editable
    qtbot.waitUntil(lambda: viewer.layers.selection.active is img, timeout=3000)
    np.testing.assert_allclose(gt.scale, img.scale)
    rgb = [int(slide_classes().colors[3][i:i + 2], 16) / 255 for i in (1, 3, 5)]
    np.testing.assert_allclose(_color(gt, 4)[:3], rgb, atol=1e-3)   # nucleus colour
    viewer.reset_view()


def test_launcher_docks_widgets_and_survives_broken_ones(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    real = launch.manifest_widgets()
    assert real, "the manifest lists widgets"
    monkeypatch.setattr(launch, "manifest_widgets", lambda: [("Missing widget", "napari-medseg.does_not_exist"), *real])
    info = launch.setup_viewer(viewer, sample="ct")
    assert info["layers"] == ["sample CT", "ground truth"]
    assert any("Missing widget" in s for s in info["skipped"])
    docked_at_start = [name for name, _ in real if name not in launch.ON_REQUEST]  # occasional tools: Plugins menu
    assert len(info["docked"]) + len(info["skipped"]) == len(docked_at_start) + 1
    assert "Stack channels" in [name for name, _ in real] and "Stack channels" not in info["docked"]
    assert len(viewer.layers) == 2


def test_launcher_window_is_ready_to_paint(make_napari_viewer, qtbot, data_folder):
    """``napari-medseg gui --sample ct``: the sample's labels open by themselves in the user data folder
    (the sample itself lives in the cache folder, which cleaners empty), with the sample's classes, and
    their paintable layer is the selected one."""
    viewer = make_napari_viewer()
    launch.setup_viewer(viewer, sample="ct")
    qtbot.waitUntil(lambda: "sample CT annotations" in viewer.layers, timeout=10000)
    labels = viewer.layers["sample CT annotations"]
    qtbot.waitUntil(lambda: viewer.layers.selection.active is labels, timeout=3000)
    assert labels.editable and _layer_list_shows_selected(viewer) == ["sample CT annotations"]
    assert not viewer.layers["ground truth"].editable
    path = labels.metadata["napari_medseg"]["label_store"]
    assert path == str(data_folder / "labels" / "sample-ct-v1.labels.zarr")
    assert labels.metadata["napari_medseg"]["classes"]["names"] == list(ct_classes().names)


def test_launcher_rejects_bad_path_before_window(tmp_path):
    from napari_medseg.cli import main

    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip at all")
    assert main(["gui", str(tmp_path / "broken.nii.gz")]) == 2
    assert main(["gui", str(tmp_path / "missing.tif")]) == 2


@pytest.mark.slow
def test_gui_command_from_a_fresh_shell(tmp_path):
    """The README quickstart: ``napari-medseg gui --sample ct`` in a new process (screenshot, then exit)."""
    shot = tmp_path / "ct.png"
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "napari_medseg.cli", "gui", "--sample", "ct", "--screenshot", str(shot)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_first_use_of_the_slide_shows_a_progress_dialog(qtbot, monkeypatch):
    """Generating the slide takes 20-40 s on the main thread (napari waits for sample functions): a modal
    progress dialog shows it, and goes away after."""
    from qtpy.QtWidgets import QApplication, QProgressDialog

    from napari_medseg._napari.contrib import sample_data
    from napari_medseg.samples import slide

    def dialogs():
        return [w for w in QApplication.topLevelWidgets() if isinstance(w, QProgressDialog) and w.isVisible()]

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_load(progress=None):
        progress(0.5)
        shown = dialogs()
        seen["value"] = shown[0].value() if shown else None
        seen["modal"] = bool(shown) and shown[0].isModal()
        raise Stop

    monkeypatch.setattr(slide, "sample_slide_cached", lambda: False)
    monkeypatch.setattr(slide, "load_sample_slide", fake_load)
    with pytest.raises(Stop):
        sample_data.sample_slide()
    assert seen == {"value": 50, "modal": True}
    assert dialogs() == []
