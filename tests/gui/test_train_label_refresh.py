"""The Train widget's label refresh while a run goes on: a label store that was not written since the run's
snapshot costs nothing (no snapshot, no hashing on the main thread); a paint is picked up with only the
changed chunks looked up (a stroke undone in between is nothing new); a plain Labels layer (no version) is still compared by its contents."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._napari.widgets.train import STORE_CHOICE, TrainWidget
from napari_medseg.core.classes import ClassSchema
from napari_medseg.labels.snapshot import LabelSnapshot
from napari_medseg.labels.store import LabelStore


@pytest.fixture
def running(make_napari_viewer, tmp_path, monkeypatch):
    """A Train widget that believes a run is going on (no worker thread: only the refresh is tested)."""
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((256, 256), np.uint8), name="img")
    w = TrainWidget(viewer)
    w.image_combo.setCurrentText("img")
    yield viewer, w
    w._worker = None
    w.shutdown()


def _counting(monkeypatch) -> dict[str, int]:
    calls = {"snapshots": 0, "hashes": 0}
    of_store, fingerprint = LabelSnapshot.of_store.__func__, LabelSnapshot.fingerprint

    def counted_of_store(cls, *a, **k):
        calls["snapshots"] += 1
        return of_store(cls, *a, **k)

    def counted_fingerprint(self):
        calls["hashes"] += 1
        return fingerprint(self)

    monkeypatch.setattr(LabelSnapshot, "of_store", classmethod(counted_of_store))
    monkeypatch.setattr(LabelSnapshot, "fingerprint", counted_fingerprint)
    return calls


def test_an_unchanged_store_is_not_snapshotted_and_a_paint_is_picked_up(running, monkeypatch):
    _viewer, w = running
    store = LabelStore.in_memory((256, 256), chunks=(64, 64), classes=ClassSchema(names=("bg", "fg")))
    store.write((slice(0, 100), slice(0, 100)), 1)
    w.session.attach_labels(_viewer.layers["img"], store)
    w.labels_combo.setCurrentText(STORE_CHOICE)
    w._worker = object()  # a run is going on
    w._labels_snap = LabelSnapshot.of_store(store)  # the run's snapshot (as start() keeps it)
    calls = _counting(monkeypatch)
    for _ in range(3):  # the 20 s timer fires: nothing was painted
        w._maybe_refresh_labels()
    assert calls == {"snapshots": 0, "hashes": 0} and w._labels_box.get() is None
    store.write((slice(200, 210), slice(200, 210)), 2)  # a stroke
    looked_up = []
    orig = store.io.get_chunk
    monkeypatch.setattr(store.io, "get_chunk", lambda lvl, c: looked_up.append(c) or orig(lvl, c))
    w._maybe_refresh_labels()
    new = w._labels_box.get()
    assert new is not None and calls == {"snapshots": 1, "hashes": 0} and looked_up == [(3, 3)]
    np.testing.assert_array_equal(new[...], store[...])
    w._maybe_refresh_labels()  # and nothing again until the next stroke
    assert calls == {"snapshots": 1, "hashes": 0} and w._labels_box.get() is new
    store.write((slice(200, 210), slice(200, 210)), 1)  # a stroke, undone before the next refresh
    store.write((slice(200, 210), slice(200, 210)), 2)
    w._maybe_refresh_labels()
    assert calls == {"snapshots": 2, "hashes": 0} and w._labels_box.get() is new  # nothing new for the run
    w._maybe_refresh_labels()
    assert calls == {"snapshots": 2, "hashes": 0}


def test_a_labels_layer_is_still_compared_by_its_contents(running):
    viewer, w = running
    labels = np.zeros((256, 256), np.uint8)
    labels[10:20, 10:20] = 1
    layer = viewer.add_labels(labels, name="scribbles")
    w.labels_combo.setCurrentText("scribbles")
    w._worker = object()
    w._labels_snap = LabelSnapshot.of_array(labels, ClassSchema(names=("bg", "fg")))
    w._maybe_refresh_labels()
    assert w._labels_box.get() is None  # the same contents: no new snapshot for the worker
    layer.data[30:40, 30:40] = 2
    w._maybe_refresh_labels()
    assert w._labels_box.get() is not None and (w._labels_box.get()[30:40, 30:40] == 2).all()
