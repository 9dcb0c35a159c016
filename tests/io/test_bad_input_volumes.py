"""Bad volumes: each case gives a clear MedsegError (or a reported skip), never a crash or a silent loss."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_medseg.core.errors import MedsegError
from napari_medseg.io import open_path
from napari_medseg.io.dicom import open_dicom
from napari_medseg.samples.dicom import write_dicom_series


def _vol(shape=(5, 6, 7), seed=0):
    return np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(np.int16)


def test_nifti_zero_length_axis(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.int16), np.eye(4)), str(tmp_path / "empty.nii.gz"))
    with pytest.raises(MedsegError, match="zero-length axis"):
        open_path(tmp_path / "empty.nii.gz")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_nii_gz(tmp_path, keep):
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.integers(-1000, 1000, (32, 32, 24)).astype(np.int16), np.eye(4)),
             str(tmp_path / "ok.nii.gz"))
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(MedsegError, match="cut.nii.gz") as e:
        open_path(tmp_path / "cut.nii.gz")
    assert "re-download" in str(e.value) or "damaged" in str(e.value) or "truncated" in str(e.value)


def test_truncated_nii(tmp_path):
    nib.save(nib.Nifti1Image(_vol(), np.eye(4)), str(tmp_path / "ok.nii"))
    data = (tmp_path / "ok.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[:-50])
    with pytest.raises(MedsegError, match="truncated"):
        open_path(tmp_path / "cut.nii")


def test_not_a_nifti(tmp_path):
    (tmp_path / "fake.nii").write_bytes(b"hello, I am not an image" * 20)
    with pytest.raises(MedsegError, match="fake.nii"):
        open_path(tmp_path / "fake.nii")


def test_dicom_two_series_and_one_broken_file(tmp_path):
    d = tmp_path / "dcm"
    write_dicom_series(_vol((5, 6, 7), 1), d, (2.0, 1.0, 1.0), uid_seed="one", series_number=1,
                       series_description="first", file_names=[f"a{i}.dcm" for i in range(5)])
    write_dicom_series(_vol((3, 8, 8), 2), d, (3.0, 0.5, 0.5), uid_seed="two", series_number=2,
                       series_description="second", file_names=[f"b{i}.dcm" for i in range(3)])
    broken = d / "a2.dcm"
    broken.write_bytes(broken.read_bytes()[:-40])  # pixel data cut short
    srcs = open_path(d)
    assert sorted(s.name for s in srcs) == ["first (series 1)", "second (series 2)"]
    first = next(s for s in srcs if s.name.startswith("first"))
    assert first.shape == (4, 6, 7)  # the broken slice is left out, the others kept
    skipped = first.metadata["skipped_files"]
    assert [s["file"] for s in skipped] == ["a2.dcm"]
    assert "truncated" in skipped[0]["reason"]
    assert "a2.dcm" in first.metadata["series_report"]
    # what is left is readable and in order (slice 2 gone)
    v = _vol((5, 6, 7), 1)
    np.testing.assert_array_equal(np.asarray(first.levels[0]), v[[0, 1, 3, 4]])
    # the gap is reported, and the spacing is the median position difference
    assert "spacing varies" in first.metadata["series_report"]


def test_dicom_file_without_pixels_other_size_and_junk(tmp_path):
    d = tmp_path / "dcm"
    paths = write_dicom_series(_vol((4, 6, 7)), d, (2.0, 1.0, 1.0), uid_seed="x")
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(d / "nopix.dcm")
    ds = pydicom.dcmread(paths[2])
    ds.Rows, ds.Columns = 3, 3
    ds.PixelData = np.zeros((3, 3), np.uint16).tobytes()
    ds.InstanceNumber = 99
    ds.ImagePositionPatient = [0, 0, 100]
    ds.save_as(d / "small.dcm")
    (d / "notes.txt").write_text("not an image")
    (src,) = open_path(d)
    assert src.shape == (4, 6, 7)
    reasons = {s["file"]: s["reason"] for s in src.metadata["skipped_files"]}
    assert set(reasons) == {"nopix.dcm", "small.dcm", "notes.txt"}
    assert "differs" in reasons["small.dcm"]
    assert "no pixel data" in reasons["nopix.dcm"]


def test_dicom_folder_without_series(tmp_path):
    d = tmp_path / "dcm"
    d.mkdir()
    (d / "x.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(MedsegError, match="no readable DICOM image series"):
        open_dicom(d)


def test_dicom_undecodable_pixels_named(tmp_path):
    d = tmp_path / "dcm"
    paths = write_dicom_series(_vol((3, 6, 7)), d, uid_seed="y")
    src = open_dicom(d)[0]
    paths[1].unlink()  # gone after opening: the lazy read names the file
    with pytest.raises(MedsegError, match=paths[1].name):
        np.asarray(src.levels[0][1])
