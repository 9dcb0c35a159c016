"""Bad input to the label store: a clear MedsegError each time, and nothing painted is ever lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fs_helpers import read_only

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import (
    GeometryMismatchError,
    MedsegError,
    StoreLockedError,
    UnreadableInputError,
)
from napari_medseg.core.source import ImageSource
from napari_medseg.labels import ops
from napari_medseg.labels.format import LabelValueError, StoreNotWritableError
from napari_medseg.labels.store import LabelStore

CLASSES = ClassSchema(names=("background", "tumor", "stroma"))


def _image(shape=(300, 400), path=None) -> ImageSource:
    return ImageSource(levels=[np.zeros(shape, np.uint8)], axes="YX", pixel_size=(0.5, 0.5), name="img",
                       path=str(path) if path else None)


def test_store_in_read_only_folder_stays_in_memory_and_saves_elsewhere(tmp_path):
    ro = tmp_path / "readonly"
    ro.mkdir()
    with read_only(ro):
        with pytest.raises(StoreNotWritableError, match="not writable; choose another folder"):
            LabelStore.create(ro / "s.zarr", (300, 400), classes=CLASSES)
        store = LabelStore.for_image(_image(path=ro / "img.tif"), classes=CLASSES, on_readonly="memory")
        assert not store.persistent and "choose another folder" in store.not_saved_reason
        assert store.intended_path == ro / "img.labels.zarr"
        store.write((slice(0, 50), slice(0, 50)), 2)  # painting goes on, in memory
        assert store.unsaved_chunks == 1
        assert not (ro / "img.labels.zarr").exists()
    ops.save_as(store, tmp_path / "elsewhere.zarr")
    store.close()
    again = LabelStore.open(tmp_path / "elsewhere.zarr", mode="r")
    assert (again[0:50, 0:50] == 2).all() and again.painted_chunks() == [(0, 0)]


def test_folder_turning_read_only_mid_session_loses_nothing(tmp_path):
    store = LabelStore.create(tmp_path / "s.zarr", (300, 400), chunks=(64, 64), classes=CLASSES)
    store.write((slice(0, 10), slice(0, 10)), 2)
    with read_only(tmp_path / "s.zarr"):
        with pytest.raises(StoreNotWritableError, match="kept in memory"):
            store.write((slice(100, 200), slice(100, 200)), 3)
        assert (store[100:200, 100:200] == 3).all()  # still readable: in memory
        store.write((slice(250, 260), slice(0, 10)), 2)  # further edits: memory, no new error
        assert store.unsaved_chunks >= 5 and not store.persistent
        # reopening it for editing elsewhere is refused with a clear reason, or kept in memory on request
        reader = LabelStore.open(tmp_path / "s.zarr", mode="r")
        assert reader.painted_chunks() == [(0, 0)]
    expect = store[...]
    ops.save_as(store, tmp_path / "rescued.zarr")
    store.close()
    rescued = LabelStore.open(tmp_path / "rescued.zarr", mode="r")
    np.testing.assert_array_equal(rescued[...], expect)


def test_open_read_only_store_for_editing(tmp_path):
    s = LabelStore.create(tmp_path / "s.zarr", (100, 100), classes=CLASSES)
    s.write((slice(0, 5), slice(0, 5)), 2)
    s.close()
    with read_only(tmp_path / "s.zarr"):
        with pytest.raises(StoreNotWritableError, match="cannot be written"):
            LabelStore.open(tmp_path / "s.zarr")
        mem = LabelStore.open(tmp_path / "s.zarr", on_readonly="memory")
        mem.write((slice(50, 60), slice(50, 60)), 3)
        assert (mem[0:5, 0:5] == 2).all() and (mem[50:60, 50:60] == 3).all() and mem.unsaved_chunks == 1


def test_store_made_for_another_image_is_refused_naming_both_shapes(tmp_path):
    img = _image((300, 400), tmp_path / "a.tif")
    s = LabelStore.for_image(img, classes=CLASSES)
    s.close()
    other = _image((512, 512), tmp_path / "a.tif")
    with pytest.raises(GeometryMismatchError, match=r"\(300, 400\).*\(512, 512\)"):
        LabelStore.open(s.path, image=other)
    with pytest.raises(GeometryMismatchError, match=r"\(300, 400\).*\(512, 512\)"):
        LabelStore.for_image(other)
    assert LabelStore.open(s.path, image=img, mode="r").shape == (300, 400)


def test_dense_mask_wrong_shape_or_float_is_refused_and_changes_nothing(tmp_path):
    s = LabelStore.create(tmp_path / "s.zarr", (300, 400), chunks=(64, 64), classes=CLASSES)
    s.write((slice(0, 10), slice(0, 10)), 3)
    before = s[...]
    with pytest.raises(GeometryMismatchError, match=r"\(400, 300\).*\(300, 400\)"):
        ops.import_dense_mask(s, np.zeros((400, 300), np.uint8))
    with pytest.raises(GeometryMismatchError, match="colour mask"):
        ops.import_dense_mask(s, np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(LabelValueError, match="float32"):
        ops.import_dense_mask(s, np.zeros((300, 400), np.float32))
    with pytest.raises(LabelValueError, match="float64"):
        s.write((slice(0, 5), slice(0, 5)), np.ones((5, 5)))
    np.testing.assert_array_equal(s[...], before)


def test_label_values_beyond_the_schema_are_refused_and_change_nothing(tmp_path):
    s = LabelStore.create(tmp_path / "s.zarr", (300, 400), chunks=(64, 64), classes=CLASSES)
    s.write((slice(0, 10), slice(0, 10)), 2)
    before = s[...]
    bad = np.full((20, 20), 2, np.uint8)
    bad[-1, -1] = 7
    with pytest.raises(LabelValueError, match=r"\[7\].*3 classes"):
        s.write((slice(0, 20), slice(0, 20)), bad)
    with pytest.raises(LabelValueError, match=r"\[-1\]"):
        s.write((slice(0, 2), slice(0, 2)), np.full((2, 2), -1, np.int16))
    mask = np.zeros((300, 400), np.int32)
    mask[-1, -1] = 5  # in the last block: the whole mask is checked before anything is written
    with pytest.raises(LabelValueError, match=r"\[5\].*3 classes"):
        ops.import_dense_mask(s, mask)
    s.write((slice(0, 10), slice(0, 10)), 3)
    with pytest.raises(LabelValueError, match="remove_class"):
        ops.set_classes(s, ClassSchema(names=("bg", "only")))
    before[0:10, 0:10] = 3
    np.testing.assert_array_equal(s[...], before)
    assert s.classes == CLASSES


def test_same_store_opened_by_two_editors(tmp_path):
    s = LabelStore.create(tmp_path / "s.zarr", (100, 100), classes=CLASSES)
    # a second editor in this process (another viewer): refused, told to open read-only
    with pytest.raises(StoreLockedError, match="open it read-only"):
        LabelStore.open(s.path)
    s.close()
    # another live process holds it
    code = textwrap.dedent(f"""
        import sys, time
        from napari_medseg.labels.store import LabelStore
        s = LabelStore.open({str(s.path)!r})
        print("held", flush=True)
        sys.stdin.readline()
        s.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=f"process {proc.pid}"):
            LabelStore.open(s.path)
        assert LabelStore.open(s.path, mode="r").shape == (100, 100)  # readers are welcome
        with pytest.raises(StoreLockedError):  # nor may anyone overwrite it meanwhile
            LabelStore.create(s.path, (100, 100), overwrite=True)
        assert (s.path / ".zattrs").exists()
    finally:
        proc.communicate("\n", timeout=30)
    LabelStore.open(s.path).close()  # released cleanly


def test_not_a_label_store(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnreadableInputError, match="not a zarr label store|not a napari-medseg label store"):
        LabelStore.open(tmp_path / "folder")
    with pytest.raises(UnreadableInputError, match="no label store here"):
        LabelStore.open(tmp_path / "missing")
    with pytest.raises(MedsegError, match="already exists"):
        s = LabelStore.create(tmp_path / "s.zarr", (10, 10))
        s.close()
        LabelStore.create(tmp_path / "s.zarr", (10, 10))
