"""The window grid is MONAI's; the block plan computes every needed window exactly once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference.tiling import (
    BlockGrid,
    WindowGrid,
    axis_starts,
    choose_block,
    crop_bounds,
    intersect,
    plan_blocks,
)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 3000), window=st.integers(1, 600), overlap=st.sampled_from([0.0, 0.25, 0.5, 0.7, 0.9]))
def test_axis_starts_match_monai(size, window, overlap):
    padded = max(size, window)
    si = _get_scan_interval((padded,), (window,), 1, (overlap,))
    ref = [s[0].start for s in dense_patch_slices((padded,), (window,), si)]
    assert list(axis_starts(size, window, overlap) + (padded - size) // 2) == ref


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 2000), window=st.integers(1, 300), overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75]))
def test_crop_bounds_partition_the_axis(size, window, overlap):
    starts = axis_starts(size, window, overlap)
    b = crop_bounds(starts, window, size)
    assert b[0, 0] == 0 and b[-1, 1] == size
    assert all(b[i, 1] == b[i + 1, 0] for i in range(len(b) - 1))
    for (lo, hi), s in zip(b, starts):  # each window owns pixels inside itself
        assert hi <= lo or (lo >= max(s, 0) and hi <= s + window)


@pytest.mark.parametrize("shape,window,block", [((300, 350), (64, 64), (96, 96)), ((40, 300, 200), (16, 64, 64), (32, 96, 96)),
                                                 ((5, 100, 90), (1, 32, 32), (2, 48, 48))])
@pytest.mark.parametrize("blend", ["gaussian", "crop"])
def test_plan_computes_each_window_once_and_covers_blocks(shape, window, block, blend):
    grid = WindowGrid(shape, window, 0.25, blend)
    blocks = BlockGrid(shape, block)
    todo = [b for i, b in enumerate(blocks.indices()) if i % 3 != 1]  # holes, as after a partial run
    plan = plan_blocks(grid, blocks, todo)
    computed = [w for ws in plan.compute.values() for w in ws]
    assert len(computed) == len(set(computed))
    for w in grid.indices():  # every window writing into a block to do is computed, while its first block runs
        hits = [b for b in todo if intersect(grid.output_box(w), blocks.box(b))]
        if hits:
            assert w in plan.targets and plan.targets[w] == sorted(hits)
            assert w in plan.compute[min(hits)]
        else:
            assert w not in plan.targets
    for b in todo:
        assert plan.need[b] == sum(1 for w, t in plan.targets.items() if b in t)


def test_plan_skips_windows_and_owner_is_fixed_by_grid():
    grid = WindowGrid((200, 200), (64, 64), 0.5)
    blocks = BlockGrid((200, 200), (64, 64))
    full = plan_blocks(grid, blocks, list(blocks.indices()))
    part = plan_blocks(grid, blocks, [(1, 1), (2, 2)], keep_window=lambda box: box[0][0] >= 96)
    assert part.skipped_windows > 0
    for w in part.targets:
        assert part.owner(w) == full.owner(w)
        assert part.grid.output_box(w)[0][0] >= 96


def test_choose_block_multiple_of_interval():
    assert choose_block((8192, 8192), (512, 512), (384, 384), (1536, 1536)) == (1536, 1536)
    assert choose_block((1000, 8192), (512, 512), (256, 256), (1536, 1536)) == (1000, 1536)
    b = choose_block((5000,), (500,), (375,), (1536,))
    assert b[0] % 375 == 0


def test_grid_refuses_bad_settings():
    with pytest.raises(MedsegError, match="overlap"):
        WindowGrid((100, 100), (32, 32), 1.0)
    with pytest.raises(MedsegError, match="blending"):
        WindowGrid((100, 100), (32, 32), 0.25, "median")
    with pytest.raises(MedsegError, match="window"):
        WindowGrid((100, 100), (32,), 0.25)


def test_window_boxes_cover_image():
    grid = WindowGrid((130, 70), (64, 64), 0.25)
    cover = np.zeros(grid.shape, int)
    for w in grid.indices():
        sl = tuple(slice(a, b) for a, b in grid.output_box(w))
        cover[sl] += 1
    assert cover.min() >= 1
    assert len(list(itertools.islice(grid.indices(), 3))) == 3
