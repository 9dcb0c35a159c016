"""Proofreading a whole slide's objects through a window: edits written into level 0, the coarser levels as a
pyramid rebuilt from scratch would hold them, the class list, the table; objects crossing the window's edge
locked; undone edits write nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from tiled_helpers import NUC, discs_2d, write_prediction

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.events import drive
from napari_medseg.io.ngff_write import downsample_block
from napari_medseg.objects.slide_edit import open_window, save_window
from napari_medseg.objects.tiled import instances_from_prediction, read_objects


@pytest.fixture
def slide(tmp_path):
    p = write_prediction(tmp_path / "s.prediction.zarr", discs_2d())
    drive(instances_from_prediction(p, block=128, halo=32), lambda ev: None)
    return p


def _levels(p):
    g = zarr.open_group(str(p), mode="r")["labels/objects"]
    return [np.asarray(g[k][...]) for k in sorted(g.array_keys(), key=int)]


def _inner_ids(win, n=3):
    """Objects wholly inside the window (not locked), largest first."""
    lab = win.objects.labels
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    free = [(c, i) for i, c in zip(ids.tolist(), counts.tolist()) if i not in win.locked]
    return [i for _, i in sorted(free, reverse=True)[:n]]


def test_edits_reach_every_level_the_classes_and_the_table(slide):
    before = _levels(slide)
    assert len(before) >= 2
    box = (slice(100, 400), slice(150, 500))
    win = open_window(slide, box)
    assert win.locked and all(i in np.unique(win.objects.labels) for i in win.locked)
    a, b, c = _inner_ids(win)
    n0 = len(win.classes_before) - 1
    win.editor.delete([a])
    win.editor.relabel([b], 3)
    # split c along a vertical line through its middle
    ys, xs = np.nonzero(win.objects.labels == c)
    mid = int(np.median(xs))
    edit = win.editor.split_by_line(c, np.array([[ys.min() - 2, mid], [ys.max() + 2, mid]], float))
    new = [i for i in edit.added]
    assert new and all(i > n0 for i in new)  # the slide's numbering continues
    counts = save_window(win)
    assert counts["removed"] == 1 and counts["added"] == len(new) and counts["changed"] == 3 + len(new)
    after = _levels(slide)
    expect0 = before[0].copy()
    expect0[box] = win.objects.labels
    np.testing.assert_array_equal(after[0], expect0)
    lvl = expect0
    for got in after[1:]:  # as build_pyramid would make them from the new level 0
        f = tuple(round(s / d) for s, d in zip(lvl.shape, got.shape))
        lvl = downsample_block(lvl, f, "nearest")
        np.testing.assert_array_equal(got, lvl)
    lab, cls = read_objects(slide)
    assert not (lab == a).any() and cls[b] == 3 and all(cls[i] == cls[c] for i in new)
    table = pd.read_csv(slide / "objects.csv")
    pd.testing.assert_frame_equal(win.table, table, check_dtype=False)  # what it wrote, kept for the widget
    assert a not in set(table["id"]) and set(new) <= set(table["id"])
    assert table.loc[table["id"] == b, "class"].iloc[0] == "lesion"
    for i in (c, *new):
        assert table.loc[table["id"] == i, "n_pixels"].iloc[0] == (lab == i).sum()
    assert list(table["id"]) == sorted(table["id"])


def test_objects_crossing_the_edge_are_locked_and_undone_edits_write_nothing(slide):
    before = _levels(slide)
    win = open_window(slide, (slice(100, 400), slice(150, 500)))
    edge = sorted(win.locked)[0]
    for act in (lambda: win.editor.delete([edge]), lambda: win.editor.merge([edge, _inner_ids(win, 1)[0]]),
                lambda: win.editor.relabel([edge], NUC)):
        with pytest.raises(MedsegError, match=f"object {edge} continues outside"):
            act()
    win.editor.delete(_inner_ids(win, 1))
    win.editor.undo()
    assert save_window(win) == {"changed": 0, "removed": 0, "added": 0}
    for x, y in zip(before, _levels(slide)):
        np.testing.assert_array_equal(x, y)


def test_bad_windows(slide, tmp_path):
    with pytest.raises(MedsegError, match="outside the slide"):
        open_window(slide, (slice(5000, 6000), slice(0, 10)))
    with pytest.raises(MedsegError, match="needs 2 slices"):
        open_window(slide, (slice(0, 10),))
    plain = write_prediction(tmp_path / "p.prediction.zarr", discs_2d())
    with pytest.raises(MedsegError, match="holds no objects"):
        open_window(plain, (slice(0, 10), slice(0, 10)))
