"""Where an image's labels go by default (``labels.location``) and the user folders behind it
(``core.user_folders``): beside the image when its folder can be written, else the user *data* folder,
never the cache folder; labels an older version left in the cache folder are moved out, never lost."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fs_helpers import read_only

from napari_medseg.core import user_folders
from napari_medseg.core.source import ImageSource
from napari_medseg.labels.location import labels_location, move_from_cache
from napari_medseg.labels.store import LabelStore


def _image(folder: Path | None, name: str = "slide", shape=(600, 800)) -> ImageSource:
    path = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.tif"
        path.write_bytes(b"")
    return ImageSource(levels=[np.zeros(shape, np.uint8)], axes="YX", pixel_size=(0.5, 0.5), name=name,
                       path=str(path) if path else None)


def _store_for(path: Path, image: ImageSource, value: int = 2) -> None:
    s = LabelStore.create(path, image.shape, image_path=image.path, image_shape=image.shape)
    s.write((slice(0, 4), slice(0, 4)), value)
    s.close()


def test_data_folder_is_the_platform_data_folder_never_the_cache(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.delenv("NAPARI_MEDSEG_DATA", raising=False)
    monkeypatch.delenv("NAPARI_MEDSEG_CACHE", raising=False)
    monkeypatch.setattr(platformdirs, "user_data_dir", lambda *a, **k: str(tmp_path / "share"))
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: str(tmp_path / "cache"))
    assert user_folders.data_folder() == tmp_path / "share"
    assert user_folders.labels_folder() == tmp_path / "share" / "labels"
    assert user_folders.runs_folder() == tmp_path / "share" / "runs"
    assert user_folders.rescue_folder() == tmp_path / "share" / "unsaved-labels"
    assert user_folders.in_cache(tmp_path / "cache" / "x" / "y.tif")
    assert not user_folders.in_cache(tmp_path / "share" / "labels")
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "sandbox"))  # a sandbox keeps everything
    assert user_folders.data_folder() == tmp_path / "sandbox"
    assert user_folders.in_cache(tmp_path / "cache" / "old.tif")  # the platform's one still counts
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(tmp_path / "mine"))
    assert user_folders.data_folder() == tmp_path / "mine"


def test_training_runs_go_to_the_data_folder(folders):
    from napari_medseg.training.rounds import run_dir

    data, _cache = folders
    assert run_dir(None).parent == data / "runs"
    assert run_dir("/somewhere/chosen") == Path("/somewhere/chosen")


def test_beside_a_writable_image(folders, tmp_path):
    img = _image(tmp_path / "images")
    loc = labels_location(img)
    assert loc.path == tmp_path / "images" / "slide.labels.zarr" and not loc.exists
    assert loc.why == "beside the image" and loc.from_cache is None
    _store_for(loc.path, img)
    assert labels_location(img).exists


def test_data_folder_when_the_image_folder_is_read_only_or_there_is_no_file(folders, tmp_path):
    data, _cache = folders
    img = _image(tmp_path / "ro")
    with read_only(tmp_path / "ro"):
        loc = labels_location(img)
    assert loc.path == data / "labels" / "slide.labels.zarr" and "cannot be written" in loc.why
    loc = labels_location(_image(None, name="pasted"))
    assert loc.path == data / "labels" / "pasted.labels.zarr" and "no folder of its own" in loc.why


def test_existing_labels_beside_a_read_only_image_are_still_used(folders, tmp_path):
    img = _image(tmp_path / "shared")
    _store_for(tmp_path / "shared" / "slide.labels.zarr", img)
    with read_only(tmp_path / "shared"):
        loc = labels_location(img)
    assert loc.path == tmp_path / "shared" / "slide.labels.zarr" and loc.exists


def test_namesakes_in_the_data_folder_get_their_own_labels(folders, tmp_path):
    data, _cache = folders
    a, b = _image(tmp_path / "ro_a"), _image(tmp_path / "ro_b")
    with read_only(tmp_path / "ro_a"), read_only(tmp_path / "ro_b"):
        la = labels_location(a)
        _store_for(la.path, a)
        lb = labels_location(b)
        assert lb.path == data / "labels" / "slide (2).labels.zarr" and not lb.exists
        _store_for(lb.path, b, value=1)
        assert labels_location(a).path == la.path and labels_location(a).exists
        assert labels_location(b).path == lb.path and labels_location(b).exists


def test_labels_in_the_cache_are_moved_to_the_data_folder(folders):
    data, cache = folders
    img = _image(cache, name="sample-ct-v1")
    old = cache / "sample-ct-v1.labels.zarr"
    _store_for(old, img)
    loc = labels_location(img)
    assert loc.from_cache == old and loc.path == data / "labels" / "sample-ct-v1.labels.zarr"
    assert move_from_cache(loc) == loc.path and not old.exists()
    assert LabelStore.open(loc.path, mode="r")[1, 1] == 2
    again = labels_location(img)  # next time: found in the data folder, nothing left to move
    assert again.path == loc.path and again.exists and again.from_cache is None


def test_labels_in_the_cache_that_are_open_elsewhere_stay_put(folders):
    _data, cache = folders
    img = _image(cache)
    old = cache / "slide.labels.zarr"
    _store_for(old, img)
    editing = LabelStore.open(old, mode="r+")  # another viewer holds it
    try:
        loc = labels_location(img)
        assert move_from_cache(loc) == old and old.exists() and not loc.path.exists()
    finally:
        editing.close()


def test_a_move_that_fails_keeps_the_old_labels(folders, monkeypatch):
    import shutil

    _data, cache = folders
    img = _image(cache)
    old = cache / "slide.labels.zarr"
    _store_for(old, img)
    loc = labels_location(img)

    def half_move(src, dst):
        shutil.copytree(src, dst)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "move", half_move)
    assert move_from_cache(loc) == old
    assert LabelStore.open(old, mode="r")[1, 1] == 2 and not loc.path.exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX paths")
def test_labels_of_a_moved_image_are_found_by_name_and_shape(folders, tmp_path):
    data, _cache = folders
    img = _image(tmp_path / "old_place")
    with read_only(tmp_path / "old_place"):
        loc = labels_location(img)
    _store_for(loc.path, img)
    os.remove(img.path)
    moved = _image(tmp_path / "ro_new")
    with read_only(tmp_path / "ro_new"):
        assert labels_location(moved).path == loc.path
        other = _image(tmp_path / "ro_new", name="slide", shape=(10, 10))
        assert labels_location(other).path == data / "labels" / "slide (2).labels.zarr"
