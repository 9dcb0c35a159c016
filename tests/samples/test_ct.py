"""The sample CT: deterministic, HU values, anatomy where the LPS+ ZYX convention puts it, read via NIfTI."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from napari_medseg.io import open_path
from napari_medseg.samples import ct

SMALL = (32, 128, 128)
SMALL_SPACING = (5.0, 3.0, 3.0)  # same field of view as the full sample


@pytest.fixture(scope="module")
def small():
    t0 = time.perf_counter()
    hu, lab = ct.make_phantom(shape=SMALL, spacing=SMALL_SPACING)
    print(f"small CT phantom in {time.perf_counter() - t0:.1f} s")  # reported, not asserted
    return hu, lab


def test_phantom_is_deterministic(small):
    hu, lab = ct.make_phantom(shape=SMALL, spacing=SMALL_SPACING)
    assert np.array_equal(hu, small[0]) and np.array_equal(lab, small[1])


def test_hounsfield_units(small):
    hu, lab = small
    assert hu.dtype == np.int16 and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {1, 2, 3, 4, 5}
    corner = hu[:, :8, :8]
    assert abs(np.median(corner) + 1000) < 30                    # air
    med = {v: float(np.median(hu[lab == v])) for v in (2, 3, 4, 5)}
    assert 45 < med[2] < 80                                       # liver ~60
    assert 20 < med[3] < 200                                      # kidney: medulla 30, cortex 150
    assert med[4] > 200                                           # bone
    assert -900 < med[5] < -700                                   # lung
    assert 5 < float(np.std(hu[lab == 2])) < 60                   # noise, not a flat painting


def test_anatomy_follows_lps_zyx_convention(small):
    """Z inferior->superior, Y anterior->posterior, X patient right->left."""
    _, lab = small
    zc = {v: np.argwhere(lab == v).mean(axis=0) for v in (2, 3, 4, 5)}
    nz, ny, nx = lab.shape
    assert zc[2][2] < nx / 2           # liver on the patient's right: low X
    assert zc[4][1] > ny / 2           # spine posterior: high Y
    assert zc[5][0] > zc[3][0]         # lungs above the kidneys: higher Z
    kid = np.argwhere(lab == 3)
    assert (kid[:, 2] < nx / 2).any() and (kid[:, 2] > nx / 2).any()   # two kidneys


def test_nifti_roundtrip_through_reader(tmp_path, small):
    hu, lab = small
    ct._write_nifti_gz(tmp_path / "i.nii.gz", hu, SMALL_SPACING, labels=False)
    ct._write_nifti_gz(tmp_path / "l.nii.gz", lab, SMALL_SPACING, labels=True)
    import nibabel as nib

    assert nib.aff2axcodes(nib.load(str(tmp_path / "i.nii.gz")).affine) == ("R", "A", "S")  # stored RAS
    img = open_path(tmp_path / "i.nii.gz")[0]
    gt = open_path(tmp_path / "l.nii.gz")[0]
    assert img.axes == "ZYX" and img.modality == "CT" and img.contrast_limits == (-160.0, 240.0)
    assert img.pixel_size == pytest.approx(SMALL_SPACING)
    np.testing.assert_array_equal(np.asarray(img.levels[0]), hu)
    assert gt.kind == "labels"
    np.testing.assert_array_equal(np.asarray(gt.levels[0]), lab)
    # written twice: the same bytes (no gzip time stamp)
    ct._write_nifti_gz(tmp_path / "j.nii.gz", hu, SMALL_SPACING, labels=False)
    assert (tmp_path / "i.nii.gz").read_bytes() == (tmp_path / "j.nii.gz").read_bytes()


def test_load_sample_ct():
    t0 = time.perf_counter()
    img, gt = ct.load_sample_ct()
    print(f"load_sample_ct (incl. generation if not cached): {time.perf_counter() - t0:.1f} s")
    assert img.shape == gt.shape == ct.SHAPE and img.pixel_size == pytest.approx(ct.SPACING)
    assert img.modality == "CT" and img.dtype == np.int16
    assert gt.kind == "labels" and gt.metadata["classes"]["names"] == list(ct.ct_classes().names)


@pytest.mark.slow
def test_full_sample_deterministic_across_cache_folders(tmp_path, monkeypatch):
    digests = []
    for name in ("a", "b"):
        monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / name))
        t0 = time.perf_counter()
        paths = ct.sample_ct_paths()
        print(f"full CT sample generated in {time.perf_counter() - t0:.1f} s (reported only)")
        digests.append([hashlib.sha1(p.read_bytes()).hexdigest() for p in paths])
    assert digests[0] == digests[1]
