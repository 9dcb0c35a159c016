"""The Annotate dock widget in a real napari viewer: labels that open by themselves (beside the image or in
the user data folder, never the cache), classes table, counts (also after an accepted prediction), region
jumps, colours shared with predictions, and every user error as a message with nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fs_helpers import read_only
from napari.utils.notifications import notification_manager

from napari_medseg._napari.layerdata import prediction_colormap, store_colormap
from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.painting.controller import AUTOSAVE_NOTE
from napari_medseg._napari.session import session_for
from napari_medseg._napari.widgets.annotate import AnnotateWidget, rescue_dir
from napari_medseg.core.classes import ClassSchema
from napari_medseg.labels.store import LabelStore

PLUGIN = "napari-medseg"




@pytest.fixture(autouse=True)
def data_folder(tmp_path, monkeypatch):
    """The user data folder (labels of images that cannot keep them beside them): a temporary one."""
    folder = tmp_path / "user-data"
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(folder))
    return folder


@pytest.fixture
def records():
    start = len(notification_manager.records)
    return lambda: [str(r.message) for r in notification_manager.records[start:]]


def _image(viewer, folder: Path, shape=(600, 800), name="slide", scale=(0.5, 0.5)):
    path = folder / f"{name}.tif"
    path.write_bytes(b"")  # the widget only needs the image's path to place the store beside it
    return viewer.add_image(np.zeros(shape, np.uint8), name=name, scale=scale,
                            metadata={"napari_medseg": {"path": str(path), "axes": "YX"}})


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    qtbot.addWidget(w)
    yield viewer, w
    w.close_store()


def test_manifest_dock_widget_is_the_annotate_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate")
    assert isinstance(w, AnnotateWidget)
    assert AUTOSAVE_NOTE in w.autosave_label.text() and "2 s" in AUTOSAVE_NOTE


def test_labels_open_by_themselves_beside_the_image_ready_to_paint(widget, tmp_path, records, qtbot):
    """No "open" step: an image's labels open (created beside it) and the paintable layer is selected."""
    viewer, w = widget
    _image(viewer, tmp_path, shape=(2000, 2000))
    qtbot.waitUntil(lambda: w.store is not None, timeout=3000)
    store, ctl = w.store, w.controller
    assert store.path == tmp_path / "slide.labels.zarr" and store.shape == (2000, 2000)
    assert f"Your labels are saved automatically to {store.path} (beside the image)" in w.status_label.text()
    assert "Nothing painted yet" in w.status_label.text()
    assert session_for(viewer).store_for(viewer.layers["slide"]) is store
    assert viewer.layers.selection.active is ctl.layer and ctl.layer.editable
    assert [w.class_table.item(i, 1).text() for i in range(w.class_table.rowCount())] == ["background", "foreground"]
    ctl.layer.brush_size = 10
    ctl.layer.paint((50, 50), 2)
    ctl.layer.paint((1800, 1700), 1)
    w.save_now()
    assert w.class_table.item(1, 3).text() == f"{store.class_counts()[2]:,}" != "0"
    assert w.class_table.item(0, 3).text() != "0"
    assert "Painted in 2 chunks of the 2000 x 2000 px image" in w.status_label.text()
    cam = camera_of(viewer)
    w.next_region()
    first = tuple(cam.center[-2:])
    w.next_region()
    second = tuple(cam.center[-2:])
    assert w.region_label.text() == "2 / 2" and first != second
    assert first[0] < 1000 * 0.5 < second[0]  # reading order: the top-left region first
    w.previous_region()
    assert w.region_label.text() == "1 / 2"
    w.close_store()
    assert not (tmp_path / "slide.labels.zarr" / ".medseg.lock").exists()
    assert LabelStore.open(tmp_path / "slide.labels.zarr", mode="r").class_counts()[2] > 0


def test_image_without_a_writable_folder_keeps_its_labels_in_the_user_data_folder(widget, tmp_path, qtbot,
                                                                                    data_folder):
    viewer, w = widget
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "slide.tif").write_bytes(b"")
    with read_only(ro):
        _image(viewer, ro)
        qtbot.waitUntil(lambda: w.store is not None, timeout=3000)
        assert w.store.path == data_folder / "labels" / "slide.labels.zarr" and w.store.persistent
        assert "folder cannot be written" in w.status_label.text()
        w.controller.layer.paint((20, 20), 2)
        w.close_store()
    assert not (ro / "slide.labels.zarr").exists()
    viewer.add_image(np.zeros((300, 400), np.uint8), name="from memory")  # no file at all
    w.image_combo.setCurrentText("from memory")
    qtbot.waitUntil(lambda: w.store is not None, timeout=3000)
    assert w.store.path == data_folder / "labels" / "from memory.labels.zarr"
    assert "has no folder of its own" in w.status_label.text()


def test_labels_left_in_the_cache_folder_are_moved_out(widget, tmp_path, qtbot, monkeypatch, data_folder, records):
    """Older versions kept a sample's labels beside it in the cache folder: they move to the data folder."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(cache))
    old = LabelStore.create(cache / "slide.labels.zarr", (600, 800), image_path=str(cache / "slide.tif"),
                            image_shape=(600, 800), pixel_size=(0.5, 0.5))
    old.write((slice(10, 20), slice(10, 20)), 2)
    old.close()
    viewer, w = widget
    _image(viewer, cache)
    qtbot.waitUntil(lambda: w.store is not None, timeout=3000)
    new = data_folder / "labels" / "slide.labels.zarr"
    assert w.store.path == new and not (cache / "slide.labels.zarr").exists()
    assert w.store[15, 15] == 2 and w.class_table.item(1, 3).text() == "100"
    assert any("were in the cache folder" in m and str(new) in m for m in records())
    assert any("were in the cache folder" in text for _, _, text in w.messages.entries)


def test_counts_follow_a_prediction_accepted_into_the_labels(widget, tmp_path, qtbot):
    """Accepting a prediction writes the store outside the brush: the counts refresh, and the widget says
    what changed."""
    from napari_medseg.core.source import ImageSource
    from napari_medseg.labels.accept import accept_prediction

    viewer, w = widget
    layer = _image(viewer, tmp_path)
    qtbot.waitUntil(lambda: w.store is not None, timeout=3000)
    assert w.class_table.item(1, 3).text() == "0"
    pred = np.zeros((600, 800), np.uint8)
    pred[100:200, 100:300] = 1  # class 1 = store value 2
    src = ImageSource(levels=[layer.data], axes="YX", pixel_size=(0.5, 0.5), name="slide")
    prediction = ImageSource(levels=[pred], axes="YX", pixel_size=(0.5, 0.5), name="pred", kind="labels")
    n = accept_prediction(w.store, prediction, src, 0, (slice(0, 600), slice(0, 800)))
    assert n == 600 * 800
    qtbot.waitUntil(lambda: w.class_table.item(1, 3).text() == f"{100 * 200:,}", timeout=3000)
    assert w.class_table.item(0, 3).text() == f"{600 * 800 - 100 * 200:,}"
    assert any("outside the brush" in text and "+480,000" in text for _, _, text in w.messages.entries)
    assert np.array(w.controller.layer.data)[150, 150] == 2  # the editable layer shows it too


def test_messages_stay_readable_in_the_widget(widget, tmp_path, qtbot, records):
    viewer, w = widget
    _image(viewer, tmp_path)
    qtbot.waitUntil(lambda: w.store is not None, timeout=3000)
    assert not w.remove_class(0)
    assert w.messages.entries[-1][1:] == ("error", "Select a class to remove (the background class stays).")
    assert "Select a class to remove" in w.messages.toPlainText()
    assert any("background class stays" in m for m in records())  # and napari's notification too


def test_classes_table_edits_colors_and_removal(widget, tmp_path, records, monkeypatch):
    viewer, w = widget
    _image(viewer, tmp_path)
    w.open_store()
    store, ctl = w.store, w.controller
    assert w.add_class("stroma") and store.classes.names == ("background", "foreground", "stroma")
    w.class_table.item(1, 1).setText("tumor")  # edit in the table
    assert store.classes.names == ("background", "tumor", "stroma")
    assert w.set_class_color(2, "#123456")
    np.testing.assert_allclose(ctl.layer.colormap.map(np.array([3]))[0][:3], [0x12 / 255, 0x34 / 255, 0x56 / 255],
                               atol=1e-3)
    # the same class keeps its colour in the store labels and in a prediction layer
    pred = prediction_colormap(store.classes)
    lab = store_colormap(store.classes)
    for k in range(1, 3):
        np.testing.assert_allclose(lab.map(np.array([k + 1]))[0][:3], pred.map(np.array([k]))[0][:3])
    w.class_table.item(2, 1).setText("tumor")  # duplicate name: refused, table restored
    assert any("unique" in m for m in records())
    assert w.class_table.item(2, 1).text() == "stroma" and store.classes.names[2] == "stroma"
    ctl.layer.paint((100, 100), 3)
    ctl.layer.paint((300, 300), 2)
    monkeypatch.setattr(w, "_confirm", lambda text: "will become not annotated" in text)
    assert w.remove_class(1)  # tumor: its pixels become "not annotated", stroma 3 -> 2
    assert store.classes.names == ("background", "stroma")
    assert np.array(ctl.layer.data)[100, 100] == 2 and np.array(ctl.layer.data)[300, 300] == 0
    assert store[100, 100] == 2 and store[300, 300] == 0
    assert not w.remove_class(0) and any("background class stays" in m for m in records())


def test_read_only_folder_keeps_labels_in_memory_and_offers_another_place(widget, tmp_path, records):
    viewer, w = widget
    ro = tmp_path / "ro"
    ro.mkdir()
    _image(viewer, ro)
    with read_only(ro):
        assert w.open_store(ro / "slide.labels.zarr")  # the user chose a labels file there
        assert any("not writable" in m and "choose another folder" in m for m in records())
        assert not w.store.persistent and "NOT SAVED" in w.status_label.text()
        assert "bold" in w.save_as_button.styleSheet()
        w.controller.layer.paint((50, 50), 2)
        w.save_now()
        assert w.store.unsaved_chunks == 1
    assert w.save_as(tmp_path / "rescued.labels.zarr")
    assert f"Your labels are saved automatically to {tmp_path / 'rescued.labels.zarr'}" in w.status_label.text()
    w.close_store()
    assert LabelStore.open(tmp_path / "rescued.labels.zarr", mode="r")[50, 50] == 2


def test_unsaved_labels_are_rescued_when_the_store_is_closed(widget, tmp_path, records):
    viewer, w = widget
    ro = tmp_path / "ro"
    ro.mkdir()
    _image(viewer, ro)
    with read_only(ro):
        assert w.open_store(ro / "slide.labels.zarr")
        w.controller.layer.paint((70, 70), 2)
        w.close_store()  # e.g. napari quits without "Save to another folder..."
    rescued = sorted(rescue_dir().glob("slide-*.labels.zarr"))
    assert rescued and any(str(rescued[-1]) in m for m in records())
    assert LabelStore.open(rescued[-1], mode="r")[70, 70] == 2


def test_folder_turning_read_only_while_painting_warns_and_loses_nothing(widget, tmp_path, records, qtbot):
    viewer, w = widget
    _image(viewer, tmp_path)
    w.open_store()
    with read_only(tmp_path / "slide.labels.zarr"):
        w.controller.layer.paint((50, 50), 2)
        w.save_now()
        qtbot.waitUntil(lambda: any("cannot be written" in m for m in records()), timeout=3000)
        assert w.store.unsaved_chunks == 1 and w.save_as_button.isEnabled()
    assert w.save_as(tmp_path / "elsewhere.zarr")
    w.close_store()
    assert LabelStore.open(tmp_path / "elsewhere.zarr", mode="r")[50, 50] == 2


def test_store_of_another_image_is_refused_and_widget_stays_usable(widget, tmp_path, records):
    viewer, w = widget
    _image(viewer, tmp_path, name="a")
    w.image_combo.setCurrentText("a")
    assert w.open_store()
    a_store = w.store.path
    w.close_store()
    _image(viewer, tmp_path, shape=(512, 512), name="b")
    w.image_combo.setCurrentText("b")
    assert not w.open_store(a_store)
    msg = records()[-1]
    assert "(600, 800)" in msg and "(512, 512)" in msg
    assert w.store is None and w.labels_file_button.isEnabled()
    assert w.open_store(tmp_path / "b.labels.zarr") and w.store.shape == (512, 512)


def test_same_store_in_two_viewers(make_napari_viewer, qtbot, tmp_path, records):
    v1, v2 = make_napari_viewer(), make_napari_viewer()
    w1, w2 = AnnotateWidget(v1), AnnotateWidget(v2)
    qtbot.addWidget(w1)
    qtbot.addWidget(w2)
    for v in (v1, v2):
        _image(v, tmp_path)
    try:
        assert w1.open_store()
        w1.controller.layer.paint((10, 10), 2)
        w1.save_now()
        assert not w2.open_store()
        assert any("already open for editing" in m and "read-only" in m for m in records())
        assert w2.open_store(read_only=True)
        assert not w2.controller.layer.editable and "View only" in w2.status_label.text()
        assert np.array(w2.controller.layer.data)[10, 10] == 2
    finally:
        w2.close_store()
        w1.close_store()


def test_project_folder_and_classes_from_the_image(widget, tmp_path):
    viewer, w = widget
    layer = _image(viewer, tmp_path)
    layer.metadata["napari_medseg"]["classes"] = ClassSchema(names=("bg", "gland", "lumen")).to_dict()
    project = tmp_path / "project"
    project.mkdir()
    assert w.open_store(project)
    assert w.store.path == project / "slide.labels.zarr"
    assert w.store.classes.names == ("bg", "gland", "lumen")


def test_view_only_switch_reopens_the_same_labels(widget, tmp_path, qtbot):
    viewer, w = widget
    _image(viewer, tmp_path)
    qtbot.waitUntil(lambda: w.store is not None, timeout=3000)
    path = w.store.path
    w.controller.layer.paint((30, 30), 2)
    w.save_now()
    w.view_only_check.setChecked(True)  # as a user clicks it
    assert w.store.path == path and not w.store.writable and not w.controller.layer.editable
    assert "View only" in w.status_label.text() and not w.save_button.isEnabled()
    assert np.array(w.controller.layer.data)[30, 30] == 2
    w.view_only_check.setChecked(False)
    assert w.store.writable and w.controller.layer.editable
    assert f"Your labels are saved automatically to {path} (beside the image)" in w.status_label.text()
