"""LabelStore: reads and writes against a numpy reference, sparse chunks on disk, the per-chunk class
index (persisted, repaired after a crash), the overview pyramid, dense-mask import, locking, save-as."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import StoreLockedError
from napari_medseg.core.grid import chunk_key
from napari_medseg.core.source import ImageSource
from napari_medseg.labels import ops
from napari_medseg.labels.chunks import pool_max
from napari_medseg.labels.format import list_chunk_files
from napari_medseg.labels.index import INDEX_NAME, JOURNAL_NAME
from napari_medseg.labels.store import LabelStore

CLASSES = ClassSchema(names=("background", "tumor", "stroma", "necrosis"))
GEOMS = {
    2: dict(shape=(300, 500), chunks=(64, 64)),
    3: dict(shape=(20, 70, 90), chunks=(8, 32, 32)),
}


def _new(tmp_path: Path, nd: int, **kw) -> LabelStore:
    g = GEOMS[nd]
    return LabelStore.create(tmp_path / f"s{nd}.labels.zarr", g["shape"], chunks=g["chunks"], classes=CLASSES,
                             **kw)


def _decode_all_chunks(store_path: Path, ndim: int) -> dict[tuple[str, tuple[int, ...]], np.ndarray]:
    """Every chunk file on disk, decoded, per (level, chunk index)."""
    out = {}
    for lvl_dir in sorted(p for p in store_path.iterdir() if p.is_dir() and p.name.isdigit()):
        arr = zarr.open_array(store=str(store_path), path=lvl_dir.name, mode="r", zarr_format=2)
        for c in list_chunk_files(lvl_dir, ndim):
            sl = tuple(slice(i * ch, (i + 1) * ch) for i, ch in zip(c, arr.chunks))
            out[(lvl_dir.name, c)] = np.asarray(arr[sl])
    return out


def _random_writes(store: LabelStore, ref: np.ndarray, rng: np.random.Generator, n: int) -> None:
    for _ in range(n):
        lo = [int(rng.integers(0, s - 1)) for s in ref.shape]
        hi = [int(min(s, a + rng.integers(1, 80))) for a, s in zip(lo, ref.shape)]
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        val = int(rng.integers(0, CLASSES.max_store_value + 1))
        data = np.full([b - a for a, b in zip(lo, hi)], val, np.uint8)
        if rng.random() < 0.5:
            data = rng.integers(0, CLASSES.max_store_value + 1, size=data.shape).astype(np.uint8)
        store.write(region, data)
        ref[region] = data


@pytest.mark.parametrize("nd", [2, 3])
def test_random_writes_match_numpy_and_only_painted_chunks_exist(tmp_path, nd):
    store = _new(tmp_path, nd)
    ref = np.zeros(store.shape, np.uint8)
    rng = np.random.default_rng(nd)
    _random_writes(store, ref, rng, 25)
    # erase one whole region so some chunks become empty again
    erase = tuple(slice(0, s // 2) for s in store.shape)
    store.write(erase, 0)
    ref[erase] = 0
    np.testing.assert_array_equal(store[...], ref)
    # numpy basic indexing: ints, steps, negative indices, Ellipsis
    keys = [(slice(5, 77, 3),) * nd, (-1,) + (slice(None, None, 7),) * (nd - 1), (Ellipsis, 3),
            (slice(10, 10),) * nd, (slice(None),) * nd]
    for key in keys:
        np.testing.assert_array_equal(store[key], ref[key])
    # index == truth, and the disk holds exactly the painted chunks, none of them empty
    painted = {c for c in np.ndindex(*[-(-s // ch) for s, ch in zip(store.shape, store.chunks)])
               if ref[store.chunk_region(c)].any()}
    assert set(store.painted_chunks()) == painted
    for c, vals in store.chunk_classes().items():
        assert vals == frozenset(int(v) for v in np.unique(ref[store.chunk_region(c)]) if v)
    want = {v: int((ref == v).sum()) for v in range(1, CLASSES.max_store_value + 1)}
    assert store.class_counts() == want
    on_disk = _decode_all_chunks(store.path, nd)
    assert {c for (lvl, c) in on_disk if lvl == "0"} == painted
    assert all(blk.any() for blk in on_disk.values()), "an empty chunk was written"
    store.close()
    # reopen: the same answers from the persisted index
    again = LabelStore.open(store.path, mode="r")
    assert set(again.painted_chunks()) == painted
    assert again.class_counts() == want
    np.testing.assert_array_equal(again[...], ref)


def test_reads_skip_empty_space(tmp_path, monkeypatch):
    store = LabelStore.create(tmp_path / "big.zarr", (50_000, 50_000), chunks=(512, 512), classes=CLASSES)
    store.write((slice(30_000, 30_010), slice(40_000, 40_010)), 3)
    calls = []
    orig = store.io.get_chunk
    monkeypatch.setattr(store.io, "get_chunk", lambda lvl, c: calls.append((lvl, c)) or orig(lvl, c))
    out = store[20_000:36_000, 30_000:46_000]  # 32 x 32 chunks, one painted
    assert out.sum() == 3 * 100
    assert calls == [(0, (58, 78))]
    assert store.painted_chunks() == [(58, 78)]


def test_overview_pyramid_keeps_every_stroke(tmp_path):
    store = LabelStore.create(tmp_path / "ov.zarr", (1000, 1300), chunks=(64, 64), classes=CLASSES, coarsest=100,
                              pixel_size=(0.5, 0.5))
    assert len(store.level_shapes) >= 4
    store.write((slice(500, 501), slice(700, 701)), 4)  # a single pixel
    store.write((slice(10, 200), slice(10, 30)), 2)
    levels = ops.overview_levels(store)
    assert [lv.shape for lv in levels] == store.level_shapes
    coarse = np.asarray(levels[-1])
    assert (coarse == 4).sum() == 1 and (coarse == 2).any()
    # every level equals max-pooling of the one below
    for k in range(1, len(levels)):
        np.testing.assert_array_equal(np.asarray(levels[k]),
                                      pool_max(np.asarray(levels[k - 1]), store.level_factors[k]))
    store.write((slice(500, 501), slice(700, 701)), 0)
    assert not (np.asarray(ops.overview_levels(store)[-1]) == 4).any()
    meta = json.loads((store.path / ".zattrs").read_text())
    ds = meta["multiscales"][0]["datasets"]
    assert [d["path"] for d in ds] == [str(k) for k in range(len(levels))]
    assert ds[1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0]
    assert [p["class"] for p in meta["image-label"]["properties"]] == list(CLASSES.names)
    src = ops.to_image_source(store)
    assert src.kind == "labels" and src.shape == store.shape


@pytest.mark.parametrize("nd", [2, 3])
def test_dense_mask_import_is_an_explicit_conversion(tmp_path, nd):
    store = _new(tmp_path, nd)
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, size=store.shape).astype(np.int32)  # 0 = bg, 1 = tumor, 2 = stroma
    mask[(slice(0, 5),) * nd] = 9  # "unknown" in the source mask
    store.write((slice(0, 5),) * nd, 4)
    ops.import_dense_mask(store, mask, ignore_value=9)
    expect = mask + 1
    expect[(slice(0, 5),) * nd] = 4  # ignore_value keeps what was painted
    np.testing.assert_array_equal(store[...], expect.astype(np.uint8))
    ops.import_dense_mask(store, mask[(slice(0, 10),) * nd] > 0, region=(slice(0, 10),) * nd)
    assert set(np.unique(store[(slice(0, 10),) * nd])) <= {1, 2}


def test_for_image_paths_geometry_and_ngff_listing(tmp_path):
    img = ImageSource(levels=[np.zeros((400, 600, 3), np.uint8), np.zeros((200, 300, 3), np.uint8)], axes="YXC",
                      pixel_size=(0.25, 0.25), path=str(tmp_path / "slide.svs"), name="slide", rgb=True)
    s = LabelStore.for_image(img)
    assert s.path == tmp_path / "slide.labels.zarr" and s.shape == (400, 600) and s.pixel_size == (0.25, 0.25)
    s.write((slice(0, 10), slice(0, 10)), 2)
    s.close()
    again = LabelStore.for_image(img)
    assert again.painted_chunks() == [(0, 0)]
    again.close()
    proj = LabelStore.for_image(img, folder=tmp_path / "project", level=1)
    assert proj.path == tmp_path / "project" / "slide.labels.zarr" and proj.shape == (200, 300)
    assert proj.pixel_size == (0.5, 0.5)
    proj.close()
    # an NGFF zarr image gets labels/medseg inside it, listed in labels/.zattrs
    zimg = tmp_path / "img.zarr"
    zarr.open_group(str(zimg), mode="w", zarr_format=2)
    zsrc = ImageSource(levels=[np.zeros((100, 120), np.uint8)], axes="YX", pixel_size=(1.0, 1.0), path=str(zimg))
    zs = LabelStore.for_image(zsrc)
    assert zs.path == zimg / "labels" / "medseg"
    assert json.loads((zimg / "labels" / ".zattrs").read_text())["labels"] == ["medseg"]
    zs.close()


def test_lock_one_editor_readers_free_and_stale_lock_taken_over(tmp_path, caplog):
    s = _new(tmp_path, 2)
    with pytest.raises(StoreLockedError, match="already open for editing in this process"):
        LabelStore.open(s.path)
    reader = LabelStore.open(s.path, mode="r")
    assert reader.mode == "r"
    s.close()
    # a lock left by a process that died (same host)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (s.path / ".medseg.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                    "time": time.time() - 60, "token": "old"}))
    with caplog.at_level("WARNING"):
        s2 = LabelStore.open(s.path)
    assert "stale lock" in caplog.text
    s2.close()
    assert not (s.path / ".medseg.lock").exists()
    # a live lock of another process: refused, with who holds it
    (s.path / ".medseg.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                    "time": time.time(), "token": "other"}))
    with pytest.raises(StoreLockedError, match=f"process {os.getppid()}"):
        LabelStore.open(s.path)


def test_index_repaired_after_interrupted_batch(tmp_path):
    s = _new(tmp_path, 2)
    s.write((slice(0, 64), slice(0, 64)), 2)
    s.write((slice(100, 110), slice(200, 210)), 3)
    path = s.path
    s.close()
    # a crash after a chunk file was rewritten but before the index followed: chunk (0, 0) now holds 4s,
    # plus a chunk nobody indexed, and the journal naming the batch in flight
    arr = zarr.open_array(store=str(path), path="0", mode="r+", zarr_format=2)
    arr[0:64, 0:64] = 4
    arr[256:300, 448:500] = 2
    (path / JOURNAL_NAME).write_text(json.dumps({"chunks": [chunk_key((0, 0))]}))
    again = LabelStore.open(path)
    assert again.chunk_classes() == {(0, 0): frozenset({4}), (1, 3): frozenset({3}), (4, 7): frozenset({2})}
    assert not (path / JOURNAL_NAME).exists()
    again.close()
    # a corrupt index is rebuilt from the chunk listing
    (path / INDEX_NAME).write_text("{not json")
    third = LabelStore.open(path, mode="r")
    assert set(third.painted_chunks()) == {(0, 0), (1, 3), (4, 7)}


def test_killed_writer_leaves_a_consistent_store(tmp_path):
    s = _new(tmp_path, 2)
    path = s.path
    s.close()
    code = textwrap.dedent(f"""
        import numpy as np, sys
        from napari_medseg.labels.store import LabelStore
        s = LabelStore.open({str(path)!r})
        rng = np.random.default_rng(1)
        i = 0
        while True:
            y, x = rng.integers(0, 250, 2)
            s.write((slice(int(y), int(y) + 50), slice(int(x), int(x) + 50)), int(rng.integers(0, 5)))
            i += 1
            if i == 5:
                print("go", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go"
    time.sleep(0.7)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = LabelStore.open(path)  # takes over the dead writer's lock, repairs the index if needed
    full = again[...]
    for c, cnt in again.index.chunk_counts().items():
        blk = full[again.chunk_region(c)]
        assert cnt == {int(v): int((blk == v).sum()) for v in np.unique(blk) if v}
    assert set(again.painted_chunks()) == {c for c in np.ndindex(5, 8) if full[again.chunk_region(c)].any()}
    assert all(b.any() for b in _decode_all_chunks(path, 2).values())


def test_save_as_from_memory_and_classes_editing(tmp_path):
    mem = LabelStore.in_memory((200, 300), chunks=(64, 64), classes=CLASSES)
    assert mem.path is None and not mem.persistent
    mem.write((slice(10, 100), slice(10, 100)), 3)
    mem.write((slice(150, 160), slice(250, 260)), 4)
    assert mem.unsaved_chunks == len(mem.painted_chunks())
    ref = mem[...]
    ops.save_as(mem, tmp_path / "saved.zarr")
    assert mem.persistent and mem.unsaved_chunks == 0 and mem.path == tmp_path / "saved.zarr"
    mem.write((slice(0, 5), slice(0, 5)), 2)
    ref[0:5, 0:5] = 2
    mem.close()
    disk = LabelStore.open(tmp_path / "saved.zarr")
    np.testing.assert_array_equal(disk[...], ref)
    # classes: rename/add freely; removing a painted class relabels only the chunks that hold it
    ops.set_classes(disk, ClassSchema(names=("bg", "tumour", "stroma", "necrosis", "fat")))
    ops.remove_class(disk, 3)  # stroma: its pixels become "not annotated", necrosis 4 -> 3
    assert disk.classes.names == ("bg", "tumour", "necrosis", "fat")
    expect = ref.copy()
    expect[ref == 3] = 0
    expect[ref == 4] = 3
    np.testing.assert_array_equal(disk[...], expect)
    disk.close()
    assert LabelStore.open(tmp_path / "saved.zarr", mode="r").classes.names == ("bg", "tumour", "necrosis", "fat")


def test_painted_regions_and_pickle_for_workers(tmp_path):
    s = _new(tmp_path, 2)
    s.write((slice(0, 10), slice(0, 10)), 2)
    s.write((slice(60, 70), slice(60, 70)), 2)  # touches chunk (0,0)'s neighbour: same region
    s.write((slice(250, 260), slice(400, 410)), 3)
    assert ops.painted_regions(s) == [(slice(0, 128), slice(0, 128)), (slice(192, 300), slice(384, 448))]
    assert ops.painted_bbox(s) == (slice(0, 300), slice(0, 448))
    s.flush()
    clone = pickle.loads(pickle.dumps(s))
    assert clone.mode == "r" and clone.painted_chunks() == s.painted_chunks()
    np.testing.assert_array_equal(clone[...], s[...])
