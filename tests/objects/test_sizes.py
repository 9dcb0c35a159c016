"""Object sizes and the zoom that brings them to the size a model learnt."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.sizes import median_diameter, uncut_counts, zoom_for


def _disks(radii, size=200):
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    for i, r in enumerate(radii):
        cy, cx = 30 + 45 * (i // 4), 30 + 45 * (i % 4)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i + 1
    return lab


def test_median_diameter_of_disks_and_balls():
    d = median_diameter(_disks([5, 10, 10, 20]))
    assert d == pytest.approx(20, rel=0.05)  # the disks' own diameters: 10, 20, 20, 40
    assert median_diameter(_disks([5, 10, 10, 20]), min_size=200) == pytest.approx(20, rel=0.05)
    assert median_diameter(_disks([2, 2, 2]), min_size=50) is None  # all too small
    zz, yy, xx = np.mgrid[:40, :40, :40]
    ball = ((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 64).astype(np.uint16)
    assert median_diameter(ball) == pytest.approx(16, rel=0.05)
    assert median_diameter(np.zeros((8, 8), np.int32)) is None


def test_bad_label_arrays():
    with pytest.raises(MedsegError, match="2D or 3D"):
        median_diameter(np.zeros(5, np.int32))
    with pytest.raises(MedsegError, match="integer"):
        median_diameter(np.zeros((4, 4), np.float32))


def test_zoom_for():
    assert zoom_for(24, 12) == 2.0
    assert zoom_for(24, 30) == pytest.approx(0.8)
    assert zoom_for(24, 6) == 2.0 and zoom_for(24, 100) == 0.5  # kept within the bounds
    assert zoom_for(24, 6, hi=4) == 4.0
    assert zoom_for(24, None) == 1.0 and zoom_for(24, math.nan) == 1.0
    with pytest.raises(MedsegError, match="reference"):
        zoom_for(0, 10)
    with pytest.raises(MedsegError, match="bounds"):
        zoom_for(24, 10, lo=1.5)


def test_uncut_counts_leave_out_objects_on_cut_sides():
    lab = np.zeros((10, 10), np.int32)
    lab[0:3, 4:6] = 1  # on the top side
    lab[4:6, 4:6] = 2  # inside
    lab[7:10, 0:2] = 3  # on the bottom and left sides
    assert sorted(uncut_counts(lab, [(False, False), (False, False)])) == [4, 6, 6]  # no side cut: all
    assert sorted(uncut_counts(lab, [(True, False), (False, False)])) == [4, 6]  # top cut: object 1 out
    assert list(uncut_counts(lab, [(True, True), (True, True)])) == [4]  # every side cut: the inner one only
    assert uncut_counts(np.zeros((4, 4), np.int32), [(True, True), (True, True)]).size == 0
