"""NIfTI and DICOM readers: orientation (LPS+ ZYX), spacing, HU, laziness, several series."""

from __future__ import annotations

import itertools
import random

import nibabel as nib
import numpy as np
import pytest

from napari_medseg.io import dicom, nifti, open_path, sniff, volume
from napari_medseg.samples.dicom import write_dicom_series

SPACING = (2.5, 0.8, 0.6)           # ZYX mm
ORIGIN_LPS = (-10.0, 20.0, -30.0)   # world position (x, y, z) of voxel (0, 0, 0), LPS mm
MARKER = (1, 2, 6)                  # z (inferior), y (anterior), x (patient left) in a (6, 7, 9) phantom


def phantom(shape=(6, 7, 9), seed=0) -> np.ndarray:
    """HU-like ZYX volume in the package convention with one bright marker voxel."""
    rng = np.random.default_rng(seed)
    v = rng.integers(-1000, 200, size=shape).astype(np.int16)
    v[MARKER] = 1500
    return v


def lps_world(idx_zyx, spacing=SPACING, origin=ORIGIN_LPS) -> np.ndarray:
    z, y, x = idx_zyx
    return np.array([origin[0] + x * spacing[2], origin[1] + y * spacing[1], origin[2] + z * spacing[0]])


def ras_of(affine_ras, idx) -> np.ndarray:
    return (np.asarray(affine_ras) @ np.r_[np.asarray(idx, float), 1.0])[:3]


def to_ras(lps) -> np.ndarray:
    return np.array([-lps[0], -lps[1], lps[2]])


def save_nifti_oriented(v_zyx, path, perm=(2, 1, 0), flips=(True, True, False), dtype=None):
    """Store ``v_zyx`` with storage axis i = ZYX axis ``perm[i]`` (flipped where ``flips[i]``) and the
    matching affine. perm=(2,1,0), flips=(True,True,False) is plain RAS storage (i->R, j->A, k->S)."""
    data = np.transpose(v_zyx, perm)
    for i, f in enumerate(flips):
        if f:
            data = np.flip(data, axis=i)
    # direction (RAS) of each ZYX axis increasing: Z->S, Y->P, X->L
    dirs = {0: np.array([0, 0, 1.0]), 1: np.array([0, -1.0, 0]), 2: np.array([-1.0, 0, 0])}
    aff = np.eye(4)
    origin_idx = [0, 0, 0]
    for i, (ax, f) in enumerate(zip(perm, flips)):
        aff[:3, i] = dirs[ax] * SPACING[ax] * (-1 if f else 1)
        origin_idx[ax] = v_zyx.shape[ax] - 1 if f else 0
    aff[:3, 3] = to_ras(lps_world(origin_idx))
    img = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return aff


ORIENTATIONS = [(perm, flips) for perm in itertools.permutations(range(3))
                for flips in itertools.product([False, True], repeat=3)]


@pytest.mark.parametrize("perm,flips", ORIENTATIONS[::5] + [((2, 1, 0), (True, True, False))])
def test_nifti_any_storage_order_lands_in_lps_zyx(tmp_path, perm, flips):
    v = phantom()
    save_nifti_oriented(v, tmp_path / "v.nii.gz", perm, flips)
    src = open_path(tmp_path / "v.nii.gz")[0]
    assert src.axes == "ZYX" and src.unit == "millimeter"
    np.testing.assert_array_equal(np.asarray(src.levels[0]), v)
    np.testing.assert_allclose(src.pixel_size, SPACING)
    # the reoriented affine still maps the marker to its world position
    np.testing.assert_allclose(ras_of(src.metadata["affine_ras"], MARKER), to_ras(lps_world(MARKER)), atol=1e-4)


def test_nifti_ras_marker_and_hu_scaling(tmp_path):
    v = phantom()
    save_nifti_oriented(v, tmp_path / "ct.nii", dtype=np.uint16)  # stored unsigned with scl_inter
    img = nib.load(str(tmp_path / "ct.nii"))
    assert img.dataobj.inter != 0  # the file really uses scl_inter
    src = nifti.open_nifti(tmp_path / "ct.nii")
    lvl = np.asarray(src.levels[0])
    assert lvl.dtype.kind == "i"  # integral scaling keeps integers (HU), no float squashing
    assert tuple(np.argwhere(lvl == 1500)[0]) == MARKER
    np.testing.assert_array_equal(lvl, v)
    assert src.modality == "CT"
    assert src.contrast_limits == (-160.0, 240.0)
    assert src.metadata["stored_axcodes"] == "RAS"


def test_nifti_mr_percentile_contrast_and_4d(tmp_path):
    rng = np.random.default_rng(1)
    v = rng.gamma(2.0, 100.0, size=(6, 7, 9)).astype(np.float32)
    stack = np.stack([v, 2 * v], axis=-1)  # XYZT-like: 2 sequences
    ras = np.transpose(stack, (2, 1, 0, 3))[::-1, ::-1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ras), np.diag([0.6, 0.8, 2.5, 1])), str(tmp_path / "mr.nii.gz"))
    src = nifti.open_nifti(tmp_path / "mr.nii.gz")
    assert src.axes == "CZYX" and src.n_channels == 2
    np.testing.assert_allclose(src.pixel_size, SPACING)
    np.testing.assert_allclose(np.asarray(src.levels[0][1]), 2 * v)
    assert src.modality == "MR"
    lo, hi = src.contrast_limits
    assert 0 <= lo < hi <= float(stack.max())


def test_nifti_integer_few_values_is_labels(tmp_path):
    lab = np.zeros((6, 7, 9), np.uint8)
    lab[2:4, 2:5, 3:8] = 3
    lab[MARKER] = 5
    save_nifti_oriented(lab, tmp_path / "seg.nii.gz")
    src = open_path(tmp_path / "seg.nii.gz")[0]
    assert src.kind == "labels"
    np.testing.assert_array_equal(np.asarray(src.levels[0]), lab)


def test_nifti_label_intent_is_labels_even_with_many_values(tmp_path):
    lab = (np.arange(6 * 7 * 9) % 200).reshape(6, 7, 9).astype(np.uint8)
    save_nifti_oriented(lab, tmp_path / "many.nii.gz")
    assert nifti.open_nifti(tmp_path / "many.nii.gz").kind == "image"  # 200 values: looks like an image
    img = nib.load(str(tmp_path / "many.nii.gz"))
    img.header.set_intent("label")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), str(tmp_path / "seg.nii.gz"))
    assert nifti.open_nifti(tmp_path / "seg.nii.gz").kind == "labels"


def test_nifti_is_lazy(tmp_path, monkeypatch, nifti_reads):
    """Opening reads only a small subsample; one slice reads only its chunk, never the whole volume."""
    v = np.random.default_rng(2).integers(-1000, 1000, size=(40, 64, 64)).astype(np.int16)
    save_nifti_oriented(v, tmp_path / "big.nii")
    monkeypatch.setattr(nifti, "CHUNK_BYTES", 64 * 64 * 2 * 4)  # 4 slices per chunk (int16)
    read = nifti_reads
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", lambda *a, **k: pytest.fail("get_fdata() reads everything"))
    src = nifti.open_nifti(tmp_path / "big.nii")
    assert sum(read) <= 0.2 * v.size, f"open read {sum(read)} of {v.size} voxels"
    read.clear()
    sl = np.asarray(src.levels[0][17])
    np.testing.assert_array_equal(sl, v[17])
    assert 0 < sum(read) <= 4 * 64 * 64, f"one slice read {sum(read)} voxels"


def test_large_volume_gets_lazy_inplane_levels(tmp_path, monkeypatch):
    v = phantom(shape=(8, 128, 128))
    save_nifti_oriented(v, tmp_path / "v.nii")
    monkeypatch.setattr(volume, "LARGE_VOXELS", 8 * 64 * 64)
    src = nifti.open_nifti(tmp_path / "v.nii")
    shapes = [src.level_shape(i) for i in range(len(src.levels))]
    assert shapes[0] == (8, 128, 128) and len(shapes) >= 2
    assert shapes[1] == (8, 64, 64)  # anisotropic (2.5 vs 0.8/0.6 mm): only in-plane is halved
    np.testing.assert_allclose(src.level_pixel_size(1), (2.5, 1.6, 1.2))
    blk = np.asarray(src.levels[1][3, 10, 10])
    assert blk == np.round(v[3, 20:22, 20:22].mean()) and blk.dtype == np.int16


def write_series(folder, v, orientation=(1, 0, 0, 0, 1, 0), shuffle=True, prefix="IM", **kw):
    """A DICOM series of ``v`` (ZYX, package convention) with shuffled file names."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    # pixel (r, c) of the slice is stored so that the world position is unchanged: flip where a
    # direction points against the convention's Y (posterior) / X (left)
    data = v
    origin = np.array(lps_world((0, 0, 0)), float)
    if row[0] < 0:  # columns run towards patient right
        data = data[:, :, ::-1]
        origin[0] += (v.shape[2] - 1) * SPACING[2]
    if col[1] < 0:  # rows run towards anterior
        data = data[:, ::-1, :]
        origin[1] += (v.shape[1] - 1) * SPACING[1]
    names = [f"{prefix}{i:05d}" for i in range(v.shape[0])]
    if shuffle:
        random.Random(3).shuffle(names)
    return write_dicom_series(np.ascontiguousarray(data), folder, SPACING, origin, orientation=orientation,
                              file_names=names, **kw)


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0)])
def test_dicom_series_orientation_spacing_hu(tmp_path, orientation):
    v = phantom()
    write_series(tmp_path / "dcm", v, orientation)
    assert sniff(tmp_path / "dcm") == "dicom"
    (src,) = open_path(tmp_path / "dcm")
    assert src.axes == "ZYX" and src.modality == "CT"
    lvl = np.asarray(src.levels[0])
    assert lvl.dtype == np.int16
    assert tuple(np.argwhere(lvl == 1500)[0]) == MARKER
    np.testing.assert_array_equal(lvl, v)  # HU through RescaleIntercept -1024
    np.testing.assert_allclose(src.pixel_size, SPACING, rtol=1e-5)
    np.testing.assert_allclose(ras_of(src.metadata["affine_ras"], MARKER), to_ras(lps_world(MARKER)), atol=1e-3)
    assert src.contrast_limits == (-160.0, 240.0)
    assert src.metadata["skipped_files"] == []


def test_dicom_spacing_from_positions_not_thickness(tmp_path):
    paths = write_series(tmp_path / "dcm", phantom(), shuffle=False)
    import pydicom

    for p in paths:  # a lying SliceThickness must not matter
        ds = pydicom.dcmread(p)
        ds.SliceThickness = "5"
        ds.save_as(p)
    (src,) = open_path(tmp_path / "dcm")
    assert src.pixel_size[0] == pytest.approx(2.5)


def test_nifti_and_dicom_of_same_phantom_agree(tmp_path):
    v = phantom()
    save_nifti_oriented(v, tmp_path / "p.nii.gz", perm=(0, 2, 1), flips=(True, False, True))
    write_series(tmp_path / "dcm", v, (-1, 0, 0, 0, -1, 0))
    a = open_path(tmp_path / "p.nii.gz")[0]
    (b,) = open_path(tmp_path / "dcm")
    np.testing.assert_array_equal(np.asarray(a.levels[0]), np.asarray(b.levels[0]))
    np.testing.assert_allclose(a.pixel_size, b.pixel_size, rtol=1e-5)
    np.testing.assert_allclose(a.metadata["affine_ras"], b.metadata["affine_ras"], atol=1e-3)


def test_dicom_is_lazy_per_slice(tmp_path, monkeypatch):
    write_series(tmp_path / "dcm", phantom())
    calls = []
    orig = dicom._read_dicom_slice

    def counting(path, *a):
        calls.append(path)
        return orig(path, *a)

    monkeypatch.setattr(dicom, "_read_dicom_slice", counting)
    (src,) = dicom.open_dicom(tmp_path / "dcm")
    assert len(calls) <= 1  # one decode check per series at most
    calls.clear()
    np.asarray(src.levels[0][3])
    assert len(calls) == 1


def test_dicom_several_series_largest_first_and_reported(tmp_path):
    write_series(tmp_path / "dcm", phantom(), series_number=2, series_description="AX small", uid_seed="a",
                 prefix="a")
    write_series(tmp_path / "dcm", phantom((9, 7, 9), seed=4), series_number=5,
                 series_description="AX big", uid_seed="b", prefix="b")
    srcs = open_path(tmp_path / "dcm")
    assert [s.name for s in srcs] == ["AX big (series 5)", "AX small (series 2)"]
    assert [s.shape for s in srcs] == [(9, 7, 9), (6, 7, 9)]
    np.testing.assert_array_equal(np.asarray(srcs[1].levels[0]), phantom())
    rep = srcs[0].metadata["series_report"]
    assert "2 series" in rep and "AX big" in rep and "AX small" in rep
    # a single file opens its folder with its own series first
    one = open_path(next((tmp_path / "dcm").glob("a*")))
    assert one[0].name == "AX small (series 2)" and len(one) == 2


def test_dicom_series_in_subfolders(tmp_path):
    write_series(tmp_path / "dcm" / "s1", phantom(), uid_seed="a")
    write_series(tmp_path / "dcm" / "s2", phantom(), uid_seed="b", series_number=2)
    assert len(dicom.open_dicom(tmp_path / "dcm")) == 2


@pytest.mark.parametrize("cache_limit", [1 << 30, 0])
def test_nii_gz_decompressed_once_when_small(tmp_path, monkeypatch, cache_limit):
    """gzip cannot seek backwards: a small .nii.gz is decompressed once and kept; a big one is read per
    chunk. Both give the same voxels."""
    v = np.random.default_rng(5).integers(-1000, 1000, size=(20, 32, 32)).astype(np.int16)
    save_nifti_oriented(v, tmp_path / "v.nii.gz")
    monkeypatch.setattr(nifti, "GZ_CACHE_BYTES", cache_limit)
    monkeypatch.setattr(nifti, "CHUNK_BYTES", 32 * 32 * 2 * 2)
    reads = []
    orig = nib.arrayproxy.ArrayProxy.__getitem__
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", lambda self, key: reads.append(key) or orig(self, key))
    src = nifti.open_nifti(tmp_path / "v.nii.gz")
    n_open = len(reads)
    for z in (15, 2, 11):
        np.testing.assert_array_equal(np.asarray(src.levels[0][z]), v[z])
    if cache_limit:
        assert n_open == 1 and len(reads) == 1  # one whole read, every slice from memory
    else:
        assert len(reads) == n_open + 3     # one chunk per slice asked
