"""write_nifti_labels: labels of a volume written back in the source's own geometry (NIfTI or DICOM)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.io.nifti import open_nifti
from napari_medseg.objects.instances import Objects
from napari_medseg.objects.volumes_out import write_nifti_labels

# stored orientations that the reader has to flip and transpose: RAS, LAS, and a permuted oblique-ish one
AFFINES = {
    "ras": np.diag([0.8, 0.8, 2.5, 1.0]) + np.array([[0, 0, 0, -40], [0, 0, 0, 12], [0, 0, 0, 7], [0, 0, 0, 0]]),
    "las": np.diag([-1.0, 1.0, 3.0, 1.0]),
    "permuted": np.array([[0, -0.8, 0, 10], [0, 0, 2.5, -5], [-1.2, 0, 0, 30], [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_affine_shape_and_voxels_preserved(tmp_path, name):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 300, (12, 10, 8)).astype(np.int16)
    src_path = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(stored, AFFINES[name]), str(src_path))
    src = open_nifti(src_path, kind="image")
    labels = np.asarray(src.levels[0]).astype(np.int64)  # ZYX/LPS: the values mark where each voxel came from
    out = write_nifti_labels(labels, tmp_path / "labels.nii.gz", like=src_path)
    img = nib.load(str(out))
    assert img.shape == stored.shape
    assert np.allclose(img.affine, AFFINES[name])
    assert np.array_equal(np.asarray(img.dataobj), stored)  # each label lies on the voxel it was found on
    assert img.header.get_intent()[0] == "label"
    assert img.get_data_dtype() == np.uint16  # the smallest unsigned type for values up to 299
    # napari-medseg reads it back as labels over the same voxels
    back = open_nifti(out)
    assert back.kind == "labels" and np.array_equal(np.asarray(back.levels[0]), labels)


def test_objects_and_source_object_accepted(tmp_path):
    src_path = tmp_path / "src.nii"
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), AFFINES["las"]), str(src_path))
    src = open_nifti(src_path, kind="image")
    lab = np.zeros(src.shape, np.uint32)
    lab[1:3, 1:3, 1:3] = 7
    write_nifti_labels(Objects(lab, np.array([0] + [1] * 7)), tmp_path / "o.nii.gz", like=src)
    img = nib.load(str(tmp_path / "o.nii.gz"))
    assert np.allclose(img.affine, AFFINES["las"]) and int(np.asarray(img.dataobj).max()) == 7


def test_dicom_source_geometry(tmp_path):
    from napari_medseg.io.dicom import open_dicom
    from napari_medseg.samples.dicom import write_dicom_series

    vol = np.zeros((5, 6, 7), np.float32)
    spacing, origin = (2.0, 0.7, 0.6), (-10.0, 20.0, 5.0)
    write_dicom_series(vol, tmp_path / "dcm", spacing, origin)
    src = open_dicom(tmp_path / "dcm")[0]
    lab = np.zeros(src.shape, np.uint8)
    lab[3, 4, 5] = 1
    write_nifti_labels(lab, tmp_path / "seg.nii.gz", like=tmp_path / "dcm")
    img = nib.load(str(tmp_path / "seg.nii.gz"))
    data = np.asarray(img.dataobj)
    assert data.shape == (7, 6, 5)  # columns, rows, slices
    i, j, k = np.argwhere(data == 1)[0]
    assert (i, j, k) == (5, 4, 3)
    # voxel (slice 3, row 4, column 5) of an axial series sits at LPS origin + (c*dx, r*dy, k*dz); RAS flips x, y
    lps = np.array([origin[0] + 5 * 0.6, origin[1] + 4 * 0.7, origin[2] + 3 * 2.0])
    ras = img.affine @ np.array([i, j, k, 1.0])
    assert np.allclose(ras[:3], lps * [-1, -1, 1])


def test_errors(tmp_path):
    src_path = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(src_path))
    with pytest.raises(GeometryMismatchError):
        write_nifti_labels(np.zeros((3, 4, 4), np.uint8), tmp_path / "x.nii.gz", like=src_path)
    with pytest.raises(MedsegError, match="nii"):
        write_nifti_labels(np.zeros((4, 4, 4), np.uint8), tmp_path / "x.tif", like=src_path)
    with pytest.raises(MedsegError, match="integers"):
        write_nifti_labels(np.zeros((4, 4, 4), np.float32), tmp_path / "x.nii.gz", like=src_path)
    with pytest.raises(MedsegError, match="does not exist"):
        write_nifti_labels(np.zeros((4, 4, 4), np.uint8), tmp_path / "no" / "x.nii.gz", like=src_path)
    with pytest.raises(MedsegError):
        write_nifti_labels(np.zeros((4, 4, 4), np.uint8), tmp_path / "x.nii.gz", like=tmp_path / "missing.nii.gz")
