"""Stacking separate co-registered files as the channels of one image (io/stack.py)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medseg.core.errors import MedsegError
from napari_medseg.io import nifti
from napari_medseg.io.stack import check_geometry, corner_distance_mm, open_stack, split_paths, stack_arrays

AFF = np.array([[-0.9, 0, 0, 10.0], [0, -0.9, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def _save(path, data_xyz, aff=AFF):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data_xyz), aff), str(path))
    return path


def _pair(tmp_path, shape=(24, 20, 12)):
    rng = np.random.default_rng(0)
    t1 = rng.normal(300, 50, shape).astype(np.float32)
    t2 = rng.normal(900, 80, shape).astype(np.float32)
    return _save(tmp_path / "t1.nii.gz", t1), _save(tmp_path / "t2.nii.gz", t2), t1, t2


def test_stack_is_czyx_with_each_file_as_a_channel(tmp_path):
    a, b, t1, t2 = _pair(tmp_path)
    src = open_stack([a, b])
    one = nifti.open_nifti(a)
    assert src.axes == "CZYX" and src.levels[0].shape == (2, *one.shape)
    assert src.channel_names == ("t1", "t2")
    np.testing.assert_array_equal(np.asarray(src.levels[0][0]), np.asarray(one.levels[0]))
    np.testing.assert_array_equal(np.asarray(src.levels[0][1]), np.asarray(nifti.open_nifti(b).levels[0]))
    assert src.pixel_size == one.pixel_size
    np.testing.assert_allclose(src.metadata["affine_ras"], one.metadata["affine_ras"])
    assert src.metadata["stack_paths"] == [str(a), str(b)]
    lims = src.metadata["channel_contrast_limits"]
    assert lims[0][1] < 600 < lims[1][0]  # each channel keeps its own contrast
    # a comma-separated string and explicit names
    src2 = open_stack(f"{a}, {b}", names=["T1w", "T2w"])
    assert src2.channel_names == ("T1w", "T2w")
    with pytest.raises(MedsegError, match="one name per channel"):
        open_stack([a, b], names=["only one"])


def test_stack_is_lazy(tmp_path, nifti_reads):
    """Opening reads only the readers' subsamples; one slice of the stack reads one chunk of each file."""
    rng = np.random.default_rng(1)
    vols = [rng.normal(100 * (k + 1), 10, (64, 64, 40)).astype(np.float32) for k in range(2)]
    paths = [_save(tmp_path / f"m{k}.nii", v) for k, v in enumerate(vols)]
    read = nifti_reads  # 4 slices per chunk
    src = open_stack(paths)
    total = sum(v.size for v in vols)
    assert sum(read) <= 0.2 * total, f"open read {sum(read)} of {total} voxels"
    read.clear()
    sl = np.asarray(src.levels[0][:, 17])
    assert sl.shape[0] == 2
    assert 0 < sum(read) <= 2 * 4 * 64 * 64, f"one slice read {sum(read)} voxels"


def test_different_shape_is_refused_naming_the_file(tmp_path):
    a, _, _, _ = _pair(tmp_path)
    c = _save(tmp_path / "flair.nii.gz", np.zeros((24, 20, 11), np.float32) + 5.5)
    with pytest.raises(MedsegError, match=r"flair\.nii\.gz: its grid is \(11, 20, 24\).*same shape"):
        open_stack([a, c])


def test_spacing_difference_over_the_tolerance_is_refused(tmp_path):
    a, _, t1, _ = _pair(tmp_path)
    close = AFF.copy()
    close[2, 2] += 0.00005  # 0.05 um per voxel: the far corner moves 0.55 um, accepted
    ok = _save(tmp_path / "ok.nii.gz", t1 + 1, close)
    assert open_stack([a, ok]).n_channels == 2
    far = AFF.copy()
    far[2, 2] += 0.01
    bad = _save(tmp_path / "bad.nii.gz", t1 + 1, far)
    with pytest.raises(MedsegError, match=r"bad\.nii\.gz: its voxel spacing .* by 0\.01 mm"):
        open_stack([a, bad])


def test_origin_or_direction_difference_is_refused_with_the_distance(tmp_path):
    a, _, t1, _ = _pair(tmp_path)
    moved = AFF.copy()
    moved[0, 3] += 0.25
    m = _save(tmp_path / "moved.nii.gz", t1 + 1, moved)
    with pytest.raises(MedsegError, match=r"moved\.nii\.gz: its position/orientation .* up to 0\.25 mm apart"):
        open_stack([a, m])
    tiny = AFF.copy()
    tiny[1, 3] += 0.0004
    assert open_stack([a, _save(tmp_path / "tiny.nii.gz", t1 + 1, tiny)]).n_channels == 2


def test_corner_distance_sees_a_rotation():
    rot = np.eye(4)
    th = np.deg2rad(1.0)
    rot[:2, :2] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    d = corner_distance_mm(np.eye(4), rot, (100, 100, 1))
    assert 1.5 < d < 2.6  # ~ 99 * sqrt(2) * 1 deg in rad at the far corner
    assert corner_distance_mm(np.eye(4), np.eye(4), (5, 5, 5)) == 0.0


def test_mixing_with_and_without_affine_and_2d_with_3d_is_refused(tmp_path):
    with pytest.raises(MedsegError, match="has no position/orientation"):
        check_geometry([("a.nii", (4, 4), (1.0, 1.0), np.eye(4)), ("b.png", (4, 4), (1.0, 1.0), None)])
    with pytest.raises(MedsegError, match="2D .* or 3D"):
        stack_arrays([np.zeros((4, 4)), np.zeros((2, 4, 4))], ["a", "b"], [(1, 1), (1, 1, 1)])


def test_a_4d_file_contributes_all_its_channels(tmp_path):
    a, _, t1, _ = _pair(tmp_path)
    four = _save(tmp_path / "dwi.nii.gz", np.stack([t1 * 2, t1 * 3], axis=-1))
    src = open_stack([a, four])
    assert src.n_channels == 3 and src.channel_names == ("t1", "dwi:volume 0", "dwi:volume 1")
    np.testing.assert_allclose(np.asarray(src.levels[0][2]), 3 * np.asarray(src.levels[0][0]), rtol=1e-5)


def test_stack_arrays_for_layers():
    x = np.arange(64, dtype=np.uint8).reshape(8, 8)
    y = np.ones((8, 8), np.float32)
    arr, names = stack_arrays([x, y], ["ct", "pet"], [(0.5, 0.5), (0.5, 0.5)])
    assert arr.shape == (2, 8, 8) and arr.dtype == np.float32 and names == ["ct", "pet"]
    np.testing.assert_array_equal(np.asarray(arr[0]), x)
    with pytest.raises(MedsegError, match=r"pet: its voxel spacing"):
        stack_arrays([x, y], ["ct", "pet"], [(0.5, 0.5), (0.5, 0.51)])


def test_split_paths():
    assert split_paths("a.nii.gz, b.nii.gz,") == ["a.nii.gz", "b.nii.gz"]
    assert split_paths(["a,b", "c"]) == ["a", "b", "c"]


def test_cli_trains_and_predicts_on_stacked_files(tmp_path, capsys):
    """``train --image t1,t2`` trains a 2-channel model (here ``fusion_unet``) and ``predict t1,t2`` uses it."""
    from napari_medseg.cli import main
    from napari_medseg.models.checkpoint import load_checkpoint
    from napari_medseg.samples.multimodal import two_modality_and

    x, y = two_modality_and((16, 32, 32), seed=3)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    paths = [_save(tmp_path / f"m{k}.nii.gz", np.transpose(x[k], (2, 1, 0)), aff) for k in range(2)]
    lab = np.transpose(y.astype(np.int16) + 1, (2, 1, 0))  # 1 background, 2 the class
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lab), aff), str(tmp_path / "seg.nii.gz"))
    both = ",".join(str(p) for p in paths)
    rc = main(["train", "--image", both, "--labels", str(tmp_path / "seg.nii.gz"), "--model", "fusion_unet",
               "--channels", "4,8", "--steps", "2", "--patch-size", "16", "--batch-size", "1", "--out",
               str(tmp_path / "run"), "--no-progress", "--threads", "1", "--val-fraction", "0"])
    assert rc == 0, capsys.readouterr().err
    ckpts = sorted((tmp_path / "run").rglob("*.pt"))
    ck = load_checkpoint(ckpts[-1])
    assert ck.model_config.in_channels == 2 and ck.model_config.name == "fusion_unet"
    rc = main(["predict", str(ckpts[-1]), both, "--out", str(tmp_path / "pred"), "--window", "16", "32", "32",
               "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "pred" / "m0.prediction.zarr").exists()
    rc = main(["predict", str(ckpts[-1]), str(paths[0]), "--out", str(tmp_path / "pred1"), "--threads", "1"])
    assert rc != 0 and "channel" in capsys.readouterr().err
