"""Whole-slide objects block by block (``objects.tiled``): the same objects as ``find_objects`` on the whole
array, ids unique, nothing cut or duplicated, resumption, 3D, objects larger than the halo, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr
from skimage.draw import disk
from tiled_helpers import BND, LES, NUC, SCHEMA, discs_2d, write_prediction

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.events import drive
from napari_medseg.objects.instances import find_objects
from napari_medseg.objects.tiled import (
    InstancesDone,
    InstancesProgress,
    InstancesStart,
    instances_from_prediction,
    read_objects,
)


def assert_same_objects(a: np.ndarray, a_cls: np.ndarray, b: np.ndarray, b_cls: np.ndarray) -> None:
    """``a`` and ``b`` hold the same objects (pixel sets and classes) up to a permutation of the ids."""
    assert a.shape == b.shape
    m = (a > 0) | (b > 0)
    pairs = np.unique(np.stack([a[m], b[m]], 1), axis=0)
    assert (pairs > 0).all(), "an object pixel of one result is background in the other"
    assert len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1])), "not a one-to-one pairing"
    assert np.array_equal(a_cls[pairs[:, 0]], b_cls[pairs[:, 1]])


def run(path, **kw):
    events = []
    res = drive(instances_from_prediction(path, **kw), events.append)
    return res, events


def test_blocks_give_the_objects_of_the_whole_array(tmp_path):
    pred = discs_2d()
    p = write_prediction(tmp_path / "a.prediction.zarr", pred)
    res, events = run(p, block=128, halo=32)
    whole = find_objects(pred, SCHEMA)
    lab, cls = read_objects(p)
    assert whole.n > 150 and res.n == whole.n and res.complete and res.cut == 0
    assert_same_objects(lab, cls, whole.labels, whole.classes)
    # ids 1..n, each used, classes of the two object classes counted per class
    assert np.array_equal(np.unique(lab), np.arange(res.n + 1))
    assert res.per_class == {"nucleus": int((cls[1:] == NUC).sum()), "lesion": int((cls[1:] == LES).sum())}
    assert min(res.per_class.values()) > 10
    # events: start, one progress per block, done
    assert isinstance(events[0], InstancesStart) and events[0].total_blocks == 5 * 6
    prog = [e for e in events if isinstance(e, InstancesProgress)]
    assert [e.done for e in prog] == list(range(1, 31)) and prog[-1].objects == res.n
    assert isinstance(events[-1], InstancesDone) and events[-1] == res
    # the NGFF labels image: listed, uint32, pyramid, attributes for the measurements
    root = zarr.open_group(str(p), mode="r")
    assert "objects" in root["labels"].attrs["labels"] and "prediction" in root["labels"].attrs["labels"]
    g = root["labels/objects"]
    assert g["0"].dtype == np.uint32 and g["1"].shape == (300, 350)
    meta = g.attrs["medseg_objects"]
    assert meta["n"] == res.n and meta["classes"] == cls.tolist() and meta["class_names"] == list(SCHEMA.names)
    assert meta["complete"] is True
    assert set(np.unique(g["1"][...])) <= set(range(res.n + 1))
    # the per-object table: one row per id, centroids and sizes of the objects as written
    import pandas as pd

    t = pd.read_csv(p / "objects.csv")
    assert t["id"].tolist() == list(range(1, res.n + 1))
    assert t["class"].tolist() == [SCHEMA.names[c] for c in cls[1:]]
    assert np.array_equal(t["n_pixels"].to_numpy(), np.bincount(lab.ravel())[1:])
    yy, xx = np.nonzero(lab)
    cy = np.bincount(lab[yy, xx], weights=yy)[1:] / t["n_pixels"].to_numpy()
    assert np.allclose(t["centroid_y_px"], cy) and np.allclose(t["area_um2"], t["n_pixels"] * 0.25)


def test_block_size_and_workers_do_not_change_the_objects(tmp_path):
    pred = discs_2d(seed=3)
    a = write_prediction(tmp_path / "a.prediction.zarr", pred)
    b = write_prediction(tmp_path / "b.prediction.zarr", pred)
    run(a, block=128, halo=32)
    run(b, block=(96, 160), halo=40, workers=2)
    la, ca = read_objects(a)
    lb, cb = read_objects(b)
    assert_same_objects(la, ca, lb, cb)
    whole = find_objects(pred, SCHEMA, min_size=60)
    c = write_prediction(tmp_path / "c.prediction.zarr", pred)
    res, _ = run(c, block=128, halo=32, min_size=60)
    assert res.n == whole.n < len(ca) - 1
    assert_same_objects(*read_objects(c), whole.labels, whole.classes)


def test_interrupted_run_resumes_to_the_identical_result(tmp_path):
    pred = discs_2d(seed=1)
    full = write_prediction(tmp_path / "full.prediction.zarr", pred)
    run(full, block=128, halo=32)
    part = write_prediction(tmp_path / "part.prediction.zarr", pred)
    gen = instances_from_prediction(part, block=128, halo=32)
    for ev in gen:
        if isinstance(ev, InstancesProgress) and ev.done == 13:
            break
    gen.close()
    journal = sorted((part / "medseg/objects/journal").iterdir())
    assert len(journal) == 13
    assert json.loads((part / "medseg/objects/run.json").read_text())["status"] == "running"
    # a block killed after its chunks but before its journal entry is redone
    journal[-1].unlink()
    res, events = run(part, block=128, halo=32)
    assert events[0].resumed_blocks == 12 and res.resumed_blocks == 12
    a, ca = read_objects(full)
    b, cb = read_objects(part)
    assert np.array_equal(a, b) and np.array_equal(ca, cb)  # identical ids, not only the same objects
    assert (full / "objects.csv").read_bytes() == (part / "objects.csv").read_bytes()
    for k in ("1", "2"):
        ga = zarr.open_group(str(full), mode="r")[f"labels/objects/{k}"][...]
        gb = zarr.open_group(str(part), mode="r")[f"labels/objects/{k}"][...]
        assert np.array_equal(ga, gb)
    # a finished run is not redone; other settings start again
    again, ev2 = run(part, block=128, halo=32)
    assert again.n == res.n and not [e for e in ev2 if isinstance(e, InstancesProgress)]
    other, _ = run(part, block=128, halo=32, min_size=60)
    assert other.n < res.n and other.resumed_blocks == 0


def test_volume(tmp_path):
    rng = np.random.default_rng(0)
    pred = np.ones((60, 90, 100), np.uint8)
    zz, yy, xx = np.mgrid[:60, :90, :100]
    centres = [(32, 32, 32), (31, 64, 33), (10, 50, 60)] + [tuple(rng.integers(0, s) for s in pred.shape)
                                                          for _ in range(40)]
    for c in centres:
        r = rng.uniform(2, 6)
        d2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
        pred[(d2 <= (r + 2) ** 2) & (pred == 1)] = BND
        pred[d2 <= r * r] = NUC
    p = write_prediction(tmp_path / "v.prediction.zarr", pred)
    res, events = run(p, block=32, halo=16)
    whole = find_objects(pred, SCHEMA)
    assert events[0].total_blocks == 2 * 3 * 4 and res.n == whole.n > 30 and res.complete
    assert_same_objects(*read_objects(p), whole.labels, whole.classes)
    lvl1 = zarr.open_group(str(p), mode="r")["labels/objects/1"]
    assert lvl1.ndim == 3


def test_objects_larger_than_the_halo_are_joined_across_blocks(tmp_path):
    """A lesion wider than the halo is cut in every window: found again on its own box, it is written once,
    with the pixels find_objects gives it on the whole array, and the next id; its row joins the table."""
    pred = discs_2d(seed=2)
    rr, cc = disk((300, 350), 70, shape=pred.shape)
    pred[rr, cc] = LES
    p = write_prediction(tmp_path / "big.prediction.zarr", pred)
    res, _ = run(p, block=128, halo=32)
    whole = find_objects(pred, SCHEMA)
    assert res.joined >= 1 and res.cut == 0 and res.complete and res.n == whole.n
    assert "joined across blocks" in res.message
    lab, cls = read_objects(p)
    assert_same_objects(lab, cls, whole.labels, whole.classes)
    big = int(lab[300, 350])
    assert big > res.n - res.joined and cls[big] == LES  # ids after every block's objects
    table = pd.read_csv(p / "objects.csv")
    assert list(table["id"]) == list(range(1, res.n + 1))
    row = table[table["id"] == big].iloc[0]
    assert row["class"] == "lesion" and row["n_pixels"] == (lab == big).sum()
    attrs = zarr.open_group(str(p), mode="r")["labels/objects"].attrs["medseg_objects"]
    assert attrs["complete"] is True and attrs["joined"] == res.joined
    # resumed: the same objects and ids
    res2, _ = run(p, block=128, halo=32)
    assert res2.n == res.n and np.array_equal(read_objects(p)[0], lab)


def test_objects_too_large_to_join_are_reported(tmp_path, monkeypatch):
    from napari_medseg.objects import stitch

    monkeypatch.setattr(stitch, "JOIN_MAX_PIXELS", 100 * 100)
    pred = discs_2d(seed=2)
    rr, cc = disk((300, 350), 70, shape=pred.shape)
    pred[rr, cc] = LES
    p = write_prediction(tmp_path / "big.prediction.zarr", pred)
    res, _ = run(p, block=128, halo=32)
    assert res.cut == 1 and not res.complete and res.cut_per_class["lesion"] == 1
    y0, x0, y1, x1 = res.cut_boxes[0]
    assert y0 <= 231 and x0 <= 281 and y1 >= 370 and x1 >= 420  # the disc (and lesions it touches)
    assert "too large to join" in res.message and "--halo" in res.message
    lab, _ = read_objects(p)
    assert not lab[300, 350]  # left out, but counted
    run_file = json.loads((p / "medseg/objects/run.json").read_text())
    assert run_file["result"]["cut"] == 1 and run_file["status"] == "complete"
    attrs = zarr.open_group(str(p), mode="r")["labels/objects"].attrs["medseg_objects"]
    assert attrs["complete"] is False and attrs["cut"] == 1
    # with a halo larger than the object, it is found like every other object
    res2, _ = run(p, block=128, halo=80)
    whole = find_objects(pred, SCHEMA)
    assert res2.cut == 0 and res2.complete and res2.n == whole.n == res.n + 1
    assert_same_objects(*read_objects(p), whole.labels, whole.classes)


def test_empty_prediction(tmp_path):
    p = write_prediction(tmp_path / "e.prediction.zarr", np.ones((300, 260), np.uint8))
    res, events = run(p, block=128, halo=32)
    assert res.n == 0 and res.complete and res.per_class == {"nucleus": 0, "lesion": 0}
    assert "no objects" in res.message
    lab, cls = read_objects(p)
    assert not lab.any() and cls.tolist() == [0]


def test_bad_inputs(tmp_path):
    with pytest.raises(MedsegError, match="not a napari-medseg prediction"):
        run(tmp_path)
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(MedsegError, match="not a napari-medseg prediction"):
        run(tmp_path / "plain.zarr")
    plain = ClassSchema(("background", "tumour"))
    p = write_prediction(tmp_path / "n.prediction.zarr", np.ones((64, 64), np.uint8), schema=plain)
    with pytest.raises(MedsegError, match="no object classes.*--objects"):
        run(p)
    # a schema given explicitly wins over the stored one
    res, _ = run(p, schema=plain.with_objects(["tumour"]), block=32, halo=8)
    assert res.n == 1 and res.joined == 1 and res.cut == 0  # the one 64 x 64 object: larger than the halo
    res, _ = run(p, schema=plain.with_objects(["tumour"]), block=32, halo=32)
    assert res.n == 1 and res.cut == 0
    q = write_prediction(tmp_path / "u.prediction.zarr", np.ones((64, 64), np.uint8), status="interrupted")
    with pytest.raises(MedsegError, match="unfinished"):
        run(q)
    r = write_prediction(tmp_path / "r.prediction.zarr", np.ones((64, 64), np.uint8))
    with pytest.raises(MedsegError, match="block"):
        run(r, block=(32, 32, 32))
    with pytest.raises(MedsegError, match=">= 0"):
        run(r, halo=-1)
    with pytest.raises(MedsegError, match="no objects"):
        read_objects(r)
