"""Where the Predict widget writes a prediction when no output is chosen: beside the image when the image is
a file in a folder that can be written and is not a cache folder; else in the predictions folder of the
user data folder (``core.user_folders``), never the cache, which cleaning tools empty. And its messages about
the labels are in plain words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fs_helpers import read_only

from napari_medseg._napari.widgets.predict import PredictWidget, default_output
from napari_medseg.core import user_folders


def _file(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"")
    return path


def test_beside_an_image_in_a_writable_folder(folders, tmp_path):
    image = _file(tmp_path / "slides", "case 7.ome.tif")
    out, why = default_output(str(image), "case 7")
    assert out == tmp_path / "slides" / "case 7.prediction.zarr"
    assert why == "beside the image"


def test_an_image_in_the_cache_folder_goes_to_the_predictions_folder(folders):
    data, cache = folders
    image = _file(cache / "samples", "slide.ome.tif")  # a sample: its folder can be written, but is a cache
    out, why = default_output(str(image), "slide")
    assert out == data / "predictions" / "slide.prediction.zarr" == user_folders.predictions_folder() / out.name
    assert not user_folders.in_cache(out)
    assert "cache" in why and "data folder" in why


def test_an_image_of_the_platform_cache_folder_goes_to_the_predictions_folder(folders, tmp_path, monkeypatch):
    """The platform's cache folder counts too, also when ``$NAPARI_MEDSEG_CACHE`` points elsewhere."""
    import platformdirs

    platform_cache = tmp_path / "platform-cache"
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: str(platform_cache))
    image = _file(platform_cache, "ct.nii.gz")
    out, _ = default_output(str(image), "ct")
    assert out == folders[0] / "predictions" / "ct.prediction.zarr"


def test_without_a_data_folder_setting_it_is_the_platform_data_folder(tmp_path, monkeypatch):
    """No direct ``user_data_dir`` call in the widget: the folder is ``user_folders``' (never the cache)."""
    import platformdirs

    monkeypatch.delenv("NAPARI_MEDSEG_DATA", raising=False)
    monkeypatch.delenv("NAPARI_MEDSEG_CACHE", raising=False)
    monkeypatch.setattr(platformdirs, "user_data_dir", lambda *a, **k: str(tmp_path / "share" / "napari-medseg"))
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: str(tmp_path / "cache" / "napari-medseg"))
    image = _file(tmp_path / "cache" / "napari-medseg", "slide.ome.tif")
    out, _ = default_output(str(image), "slide")
    assert out == tmp_path / "share" / "napari-medseg" / "predictions" / "slide.prediction.zarr"


def test_an_image_without_a_file_goes_to_the_predictions_folder(folders):
    out, why = default_output(None, "../from memory")  # a layer name never steers the output elsewhere
    assert out == folders[0] / "predictions" / "from memory.prediction.zarr"
    assert "no folder of its own" in why
    out, _ = default_output(str(folders[1].parent / "gone" / "slide.tif"), "slide")  # moved or deleted since
    assert out == folders[0] / "predictions" / "slide.prediction.zarr"


def test_an_image_in_a_read_only_folder_goes_to_the_predictions_folder(folders, tmp_path):
    image = _file(tmp_path / "ro", "slide.tif")
    with read_only(tmp_path / "ro"):
        out, why = default_output(str(image), "slide")
    assert out == folders[0] / "predictions" / "slide.prediction.zarr"
    assert "cannot be written" in why


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    return viewer, w


def _add(viewer, path: Path | None, name: str):
    meta = {"napari_medseg": {"path": str(path), "axes": "YX"}} if path else {}
    return viewer.add_image(np.zeros((64, 64), np.uint8), name=name, metadata=meta)


def test_the_widget_predicts_a_sample_into_the_predictions_folder(viewer_widget, folders, tmp_path):
    viewer, w = viewer_widget
    data, cache = folders
    sample = _add(viewer, _file(cache, "slide.ome.tif"), "slide")
    mine = _add(viewer, _file(tmp_path / "mine", "case.tif"), "case")
    assert w._default_out(sample, type("S", (), {"path": sample.metadata["napari_medseg"]["path"]})) \
        == data / "predictions" / "slide.prediction.zarr"
    assert w._default_out(mine, type("S", (), {"path": str(tmp_path / "mine" / "case.tif")})) \
        == tmp_path / "mine" / "case.prediction.zarr"
    # the empty output field shows where the prediction will go, for the image chosen
    w.image_combo.setCurrentText("slide")
    assert w.out_edit.placeholderText() == str(data / "predictions" / "slide.prediction.zarr")
    assert "cache" in w.out_edit.toolTip()
    w.image_combo.setCurrentText("case")
    assert w.out_edit.placeholderText() == str(tmp_path / "mine" / "case.prediction.zarr")


def test_accepting_without_open_labels_says_what_to_do_in_plain_words(viewer_widget):
    viewer, w = viewer_widget
    _add(viewer, None, "img")
    w.image_combo.setCurrentText("img")
    w._run = type("R", (), {"result": viewer.add_labels(np.zeros((64, 64), np.uint8), name="img prediction"),
                            "shown": True, "out": None})()
    w.accept_view()
    text = w.messages.entries[-1][2]
    assert "Annotate" in text and "label store" not in text.lower()
    assert "label store" not in w.accept_btn.toolTip().lower()
