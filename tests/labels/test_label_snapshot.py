"""Snapshots of a label store for training: no copies, values from the index, a version per write batch,
and a refresh that looks up only the chunks changed since the last snapshot."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from napari_medseg.core.classes import ClassSchema
from napari_medseg.labels import ops
from napari_medseg.labels.snapshot import LabelSnapshot
from napari_medseg.labels.store import LabelStore

CLASSES = ClassSchema(names=("background", "tumor", "stroma"))


@pytest.fixture(params=["disk", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        s = LabelStore.in_memory((300, 400), chunks=(64, 64), classes=CLASSES)
    else:
        s = LabelStore.create(tmp_path / "s.labels.zarr", (300, 400), chunks=(64, 64), classes=CLASSES)
    yield s
    s.close()


def test_version_counts_write_batches(store):
    v0 = store.version
    store.write((slice(0, 10), slice(0, 10)), 2)
    assert store.version == v0 + 1
    store.write((slice(0, 10), slice(0, 10)), 2)  # nothing changed: no batch
    assert store.version == v0 + 1
    store.write_chunks({(1, 1): np.full((64, 64), 3, np.uint8), (2, 2): np.ones((64, 64), np.uint8)})
    assert store.version == v0 + 2  # one batch, however many chunks


def test_snapshot_shares_the_stores_chunks_and_takes_values_from_the_index(store, monkeypatch):
    store.write((slice(0, 70), slice(0, 10)), 2)
    store.write((slice(200, 210), slice(300, 310)), 3)
    monkeypatch.setattr(np, "unique", lambda *a, **k: pytest.fail("np.unique over painted labels"))
    snap = LabelSnapshot.of_store(store)
    assert snap.painted_chunks() == store.painted_chunks() == [(0, 0), (1, 0), (3, 4)]
    assert snap.chunk_classes() == store.chunk_classes() == {(0, 0): {2}, (1, 0): {2}, (3, 4): {3}}
    assert snap.n_painted == 70 * 10 + 100 and snap.version == store.version
    for c in snap.painted_chunks():
        blk = snap._blocks[c]
        assert blk is store.io.get_chunk(0, c) and not blk.flags.writeable  # a reference, not a copy
    store.write((slice(0, 5), slice(0, 5)), 0)  # a write replaces a chunk: the snapshot keeps its version
    assert snap[0:5, 0:5].tolist() == [[2] * 5] * 5 and store[0:5, 0:5].max() == 0
    assert snap.is_current(store) is False
    clone = pickle.loads(pickle.dumps(snap))  # a snapshot can still go to another process
    np.testing.assert_array_equal(clone[...], snap[...])


def test_a_refresh_looks_up_only_the_chunks_changed_since(store, monkeypatch):
    store.write((slice(0, 300), slice(0, 400)), 1)  # every chunk painted
    first = LabelSnapshot.of_store(store)
    assert first.is_current(store)
    assert LabelSnapshot.of_store(store, first)._blocks == first._blocks
    store.write((slice(100, 110), slice(100, 110)), 3)
    assert not first.is_current(store)
    looked_up = []
    orig = store.io.get_chunk
    monkeypatch.setattr(store.io, "get_chunk", lambda lvl, c: looked_up.append((lvl, c)) or orig(lvl, c))
    second = LabelSnapshot.of_store(store, first)
    assert looked_up == [(0, (1, 1))] and second.is_current(store)
    np.testing.assert_array_equal(second[...], store[...])
    assert (first[100:110, 100:110] == 1).all()  # the earlier snapshot is unchanged
    other = LabelStore.in_memory((300, 400), chunks=(64, 64), classes=CLASSES)
    assert not first.is_current(other)
    assert not second.same_blocks(first)
    store.write((slice(100, 110), slice(100, 110)), 1)  # the stroke undone: the labels of ``first`` again
    third = LabelSnapshot.of_store(store, first)
    assert third.same_blocks(first) and third.is_current(store) and not first.is_current(store)


def test_version_counts_on_across_save_as(tmp_path):
    mem = LabelStore.in_memory((200, 300), chunks=(64, 64), classes=CLASSES)
    mem.write((slice(10, 100), slice(10, 100)), 3)
    snap = LabelSnapshot.of_store(mem)
    ops.save_as(mem, tmp_path / "saved.zarr")
    assert mem.version > snap.version and not snap.is_current(mem)
    again = LabelSnapshot.of_store(mem, snap)
    np.testing.assert_array_equal(again[...], mem[...])
    mem.close()


def test_a_dense_array_snapshot_is_compared_by_fingerprint():
    a = np.zeros((100, 100), np.uint8)
    a[5:9, 5:9] = 2
    s1 = LabelSnapshot.of_array(a, CLASSES)
    a[50, 50] = 1
    s2 = LabelSnapshot.of_array(a, CLASSES)
    assert s1.version is None and s1.fingerprint() != s2.fingerprint()
    assert s2.chunk_classes() == {(0, 0): frozenset({1, 2})} and s2.n_painted == 17
