"""The editable window's geometry and its coarse edits, without a viewer: every level's window covers the
view it is chosen for and sits on chunk edges, and coarse edits reach the store exactly (blocks where a cell
changed, the original pixels elsewhere, the original back when a cell returns to its value), also with chunks
that are not a multiple of the level's factor."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from napari_medseg._napari.painting.window_edits import WindowEdits, resident, same
from napari_medseg._napari.painting.window_geometry import WindowGeometry, store_transform
from napari_medseg.core.classes import ClassSchema
from napari_medseg.labels.store import LabelStore

CLASSES = ClassSchema(names=("background", "a", "b"))


@pytest.mark.parametrize("chunk", [256, 100])
def test_windows_cover_the_view_at_the_level_chosen_for_it(chunk):
    shape = (3000, 4100)
    store = LabelStore.in_memory(shape, chunks=(chunk, chunk), classes=CLASSES, coarsest=300)
    geom = WindowGeometry.of_store(store, max_window=1024)
    assert geom.n_levels == len(store.level_shapes) > 3
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        c = rng.uniform(0, 1, 2) * shape
        half = rng.uniform(50, 4000, 2)
        lo, hi = list(c - half), list(c + half)
        k, fits = geom.level_for_view(lo, hi)
        seen.add(k)
        win = geom.window_for(c, k)
        f = geom.factors[k]
        for a in range(2):
            assert win[a].start % chunk == 0 and (win[a].stop % chunk == 0 or win[a].stop == shape[a])
            assert -(-(win[a].stop - win[a].start) // f[a]) <= 1024  # at most max_window layer pixels
            if fits:  # the whole (clipped) view is inside
                assert win[a].start <= max(0, lo[a]) and min(shape[a], hi[a]) <= win[a].stop
        assert geom.level_of(win, prefer=k) == k and geom.level_of(win) <= k
    assert seen >= {0, 1, 2}
    store.close()


def _expected(original, cells_now, cells_then, f):
    up = lambda a: np.repeat(np.repeat(a, f, 0), f, 1)[: original.shape[0], : original.shape[1]]  # noqa: E731
    return np.where(up(cells_now) != up(cells_then), up(cells_now), original)


@pytest.mark.parametrize("chunk", [64, 100, 50])  # 50 px chunks: 4 px cells straddle chunk edges
def test_coarse_edits_write_blocks_keep_detail_and_restore_it(chunk):
    shape = (700, 900)
    store = LabelStore.in_memory(shape, chunks=(chunk, chunk), classes=CLASSES, coarsest=200)
    rng = np.random.default_rng(1)
    detail = (rng.random(shape) < 0.02).astype(np.uint8) * 3  # scattered single pixels
    store.write((slice(0, 700), slice(0, 900)), detail)
    original = store.read((slice(0, 700), slice(0, 900)))
    geom = WindowGeometry.of_store(store, max_window=256)
    k = 2
    f = geom.factors[k][0]
    assert f == 4
    edits = WindowEdits(store, geom)
    win = geom.window_for((350, 450), k)
    assert win == (slice(0, 700), slice(0, 900))  # the whole slide fits 256 cells at 1/4
    data = edits.load(win, k)
    then = data.copy()
    # paint a band of cells with 2, erase a few cells (0), and repaint one cell with the value it shows
    data[40:60, 10:200] = 2
    data[100:103, 100:103] = 0
    y, x = np.argwhere(then[120:] == 3)[0] + (120, 0)
    data[y, x] = 3
    edits.mark(([40, 10], [60, 200]))
    edits.mark(([100, 100], [103, 103]))
    edits.mark(([y, x], [y + 1, x + 1]))
    job, bad = edits.take(data, 3)
    assert not bad and not edits.dirty
    job.run(store, origin=None)
    np.testing.assert_array_equal(store.read(win), _expected(original, data, then, f))
    # back to what the cells showed (undo): the fine detail returns, pixel for pixel
    data[40:60, 10:200] = then[40:60, 10:200]
    data[100:103, 100:103] = then[100:103, 100:103]
    edits.full_diff(data)  # finds the rewritten chunks (nothing differs from what was read any more)
    job, _ = edits.take(data, 3)
    job.run(store, origin=None)
    np.testing.assert_array_equal(store.read(win), original)
    store.close()


def test_coarse_values_beyond_the_schema_stay_unsaved():
    store = LabelStore.in_memory((700, 900), chunks=(64, 64), classes=CLASSES, coarsest=200)
    geom = WindowGeometry.of_store(store, max_window=256)
    edits = WindowEdits(store, geom)
    data = edits.load(geom.window_for((0, 0), 2), 2)
    data[5, 5] = 9
    data[100, 100] = 2
    edits.mark(([5, 5], [6, 6]))
    edits.mark(([100, 100], [101, 101]))
    job, bad = edits.take(data, 3)
    assert bad == {9} and edits.dirty == {(0, 0)}
    job.run(store, origin=None)
    assert store.painted_chunks() == [(6, 6)] and (store.read((slice(400, 404), slice(400, 404))) == 2).all()
    store.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_resident_maps_every_page_of_a_window_read_from_zeros():
    """``np.zeros`` leaves pages unmapped until first touched; ``resident`` touches them all (in the calling
    thread, the writer thread for a window move) and keeps the values."""
    buf = mmap.mmap(-1, 8192 * 8192)  # 64 MB of fresh zero pages, as a large np.zeros gets, whatever malloc does
    a = np.frombuffer(buf, np.uint8).reshape(8192, 8192)
    a[5, 7] = 3
    before = _rss_bytes()
    out = resident(a)
    grown = _rss_bytes() - before
    assert out is a and grown > 0.9 * a.nbytes
    assert int(a.sum()) == 3 and a[5, 7] == 3
    resident(np.zeros((0, 5), np.uint8))  # empty and strided arrays are left as they are
    b = np.arange(24, dtype=np.uint16).reshape(4, 6)[:, ::2]
    assert resident(b) is b and (b == np.arange(24, dtype=np.uint16).reshape(4, 6)[:, ::2]).all()


@pytest.mark.parametrize("shape", [(0, 4), (3000, 500), (40, 3, 700), ()])
def test_same_agrees_with_array_equal_in_every_block(shape):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, shape).astype(np.uint8)
    assert same(a, a.copy()) and same(a, a)
    if a.size:
        for i in (0, a.size // 2, a.size - 1):  # a difference in the first, a middle and the last block
            b = a.copy()
            b.flat[i] = 9
            assert not same(a, b) and not np.array_equal(a, b)
    assert not same(a, np.zeros((*shape, 1), np.uint8))  # another shape


def test_store_transform_puts_store_pixels_on_the_images_pixels():
    assert store_transform((0.5, 0.5)) == ((0.5, 0.5), (0.0, 0.0))
    # the same pixel size: the image's own translate; twice as coarse: centred between two image pixels
    assert store_transform((0.5, 0.5), (1, 0.5, 0.5), (0, 10.0, 20.0)) == ((0.5, 0.5), (10.0, 20.0))
    scale, tr = store_transform((1.0, 2.0), (0.5, 0.5), (10.0, 20.0))
    assert scale == (1.0, 2.0) and tr == pytest.approx((10.25, 20.75))
