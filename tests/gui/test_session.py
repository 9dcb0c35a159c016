"""The per-viewer session keys everything by the layer itself: renaming an image layer keeps its labels in
every widget (Annotate, Train, Predict), and a layer's ``ImageSource`` is opened once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medseg._napari.jobs.train_job import snapshot_labels
from napari_medseg._napari.session import session_for
from napari_medseg._napari.widgets.annotate import AnnotateWidget
from napari_medseg._napari.widgets.predict import PredictWidget
from napari_medseg._napari.widgets.train import STORE_CHOICE, TrainWidget


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(tmp_path / "user-data"))
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))


def _image(viewer, folder: Path, name: str = "slide"):
    path = folder / f"{name}.tif"
    path.write_bytes(b"")  # the Annotate widget only needs the image's path to place the labels beside it
    return viewer.add_image(np.zeros((256, 320), np.uint8), name=name, scale=(0.5, 0.5),
                            metadata={"napari_medseg": {"path": str(path), "axes": "YX"}})


@pytest.fixture
def widgets(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    annotate, train, predict = AnnotateWidget(viewer), TrainWidget(viewer), PredictWidget(viewer)
    for w in (annotate, train, predict):
        qtbot.addWidget(w)
    yield viewer, annotate, train, predict
    train.shutdown()
    annotate.close_store()


def test_renaming_the_image_keeps_its_labels_in_every_widget(widgets, tmp_path, qtbot):
    viewer, annotate, train, predict = widgets
    image = _image(viewer, tmp_path)
    qtbot.waitUntil(lambda: annotate.store is not None, timeout=5000)
    store = annotate.store
    train.image_combo.setCurrentText("slide")
    train.labels_combo.setCurrentText(STORE_CHOICE)
    predict.image_combo.setCurrentText("slide")

    image.name = "case 7"

    session = session_for(viewer)
    assert session.store_for(image) is store
    # Annotate: the same labels stay open for the renamed image, which its list shows by the new name
    assert annotate.store is store and annotate.image_combo.currentText() == "case 7"
    # Train: the image chosen is the renamed one, and the label store is found for it
    assert train.image_combo.currentText() == "case 7"
    assert train._image_layer() is not None and session.store_for(train._image_layer()) is store
    snap, what = snapshot_labels(train.session, viewer, train._image_layer(), STORE_CHOICE, STORE_CHOICE)
    assert what == f"label store {store.path}" and snap.shape == store.shape
    # Predict: the same, and accepting a prediction gets past "the labels are not open"
    assert predict.image_combo.currentText() == "case 7"
    assert predict.session.store_for(predict._image_layer()) is store
    predict._run = type("R", (), {"result": viewer.add_labels(np.zeros((256, 320), np.uint8), name="pred"),
                                  "shown": True, "out": tmp_path / "no prediction here.zarr"})()
    predict.accept_view()
    said = predict.messages.entries[-1][2]
    assert "are not open" not in said and "not a napari-medseg prediction" in said


def test_a_new_layer_of_the_old_name_gets_no_labels(widgets, tmp_path, qtbot):
    """The labels belong to the layer, not to its name: another layer under the old name has none."""
    viewer, annotate, _train, _predict = widgets
    image = _image(viewer, tmp_path)
    qtbot.waitUntil(lambda: annotate.store is not None, timeout=5000)
    image.name = "first"
    other = viewer.add_image(np.zeros((256, 320), np.uint8), name="slide")
    session = session_for(viewer)
    assert session.store_for(image) is annotate.store and session.store_for(other) is None


def test_the_source_of_a_layer_is_opened_once(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 80), np.uint8), name="img")
    session = session_for(viewer)
    src = session.source_for(layer)
    assert src.shape == (64, 80) and session.source_for(viewer.layers["img"]) is src
    layer.data = np.ones((32, 40), np.uint8)  # new data: a new source
    assert session.source_for(layer).shape == (32, 40)
