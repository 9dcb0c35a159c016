"""DICOM-SEG out: every frame lands on its own source slice (in that file's row/column order), for a
non-axial series whose files are named out of slice order; segments carry the class names; clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.cli import main
from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.io.reader import open_path
from napari_medseg.objects.dicom_seg import write_dicom_seg
from napari_medseg.objects.instances import Objects
from napari_medseg.samples.dicom import write_dicom_series

NAMES = ("background", "lesion", "cyst")


@pytest.fixture
def series(tmp_path):
    """A coronal series (rows along -z): the reader must flip and transpose it into ZYX LPS+."""
    vol = np.zeros((6, 20, 24), np.int16)  # slice k, row r, column c as stored
    folder = tmp_path / "dicom"
    names = [f"img_{(k * 7) % 6}.dcm" for k in range(6)]  # file names not in slice order
    write_dicom_series(vol, folder, spacing=(2.0, 1.5, 1.0), origin_lps=(10.0, -5.0, 30.0),
                       orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), file_names=names)
    src = next(s for s in open_path(folder) if s.kind == "image")
    return folder, src


def _stored_frames(seg, folder):
    """{SOPInstanceUID: (rows, cols) segment-number frame} read back with highdicom."""
    import pydicom

    files = sorted(folder.glob("*.dcm"))
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    pix = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    return dict(zip(uids, pix)), {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
                                  for f in files}


def test_frames_land_on_their_source_slices(series, tmp_path):
    import highdicom as hd
    import pydicom

    folder, src = series
    assert src.axes == "ZYX"
    lab = np.zeros(src.shape, np.uint8)
    lab[1:3, 4:9, 5:12] = 1  # a lesion block
    lab[4, 10:14, 2:4] = 2   # a cyst on one package slice
    out = write_dicom_seg(lab, tmp_path / "seg.dcm", like=folder, class_names=NAMES, colors=("#000000", "#ff0000",
                                                                                              "#00ff00"))
    seg = hd.seg.segread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "cyst"]
    frames, files = _stored_frames(seg, folder)
    # each source file's frame equals the labels at that file's voxels, found through the reader itself:
    # the package volume of a series whose only non-zero voxels are one file's is that file's footprint
    for uid, frame in frames.items():
        ds = pydicom.dcmread(files[uid])
        marker = np.arange(1, ds.Rows * ds.Columns + 1, dtype=np.int32).reshape(ds.Rows, ds.Columns)
        one = tmp_path / f"one_{uid[-6:]}"
        vols = []
        for f in sorted(folder.glob("*.dcm")):
            d = pydicom.dcmread(f)
            vols.append((f.name, marker if str(d.SOPInstanceUID) == uid else np.zeros_like(marker), d))
        for name, px, d in vols:
            d.PixelData = px.astype(np.uint16).tobytes()
            one.mkdir(exist_ok=True)
            d.save_as(one / name)
        probe = np.asarray(next(s for s in open_path(one) if s.kind == "image").levels[0])
        where = probe > -1024 + 0.5  # the intercept: unmarked voxels read -1024
        values = probe[where].astype(np.int64) + 1024  # the marker: 1 + row * cols + col of the file
        expected = np.zeros((ds.Rows, ds.Columns), np.uint8)
        r, c = np.divmod(values - 1, ds.Columns)
        expected[r, c] = lab[where]
        np.testing.assert_array_equal(frame, expected)
    # every labelled voxel is in some frame, with its class
    stored = np.concatenate([f.ravel() for f in frames.values()])
    assert np.bincount(stored, minlength=3).tolist() == np.bincount(lab.ravel(), minlength=3).tolist()


def test_objects_write_their_classes_and_errors(series, tmp_path):
    import highdicom as hd

    folder, src = series
    ids = np.zeros(src.shape, np.uint32)
    ids[1:3, 4:9, 5:8] = 1
    ids[1:3, 4:9, 9:12] = 2
    out = write_dicom_seg(Objects(ids, np.array([0, 1, 2], np.int32)), tmp_path / "o.dcm", like=folder,
                          class_names=NAMES)
    assert len(hd.seg.segread(out).SegmentSequence) == 2
    with pytest.raises(GeometryMismatchError, match="shape"):
        write_dicom_seg(ids[:2], tmp_path / "x.dcm", like=folder, class_names=NAMES)
    with pytest.raises(MedsegError, match="empty"):
        write_dicom_seg(np.zeros(src.shape, np.uint8), tmp_path / "x.dcm", like=folder, class_names=NAMES)
    with pytest.raises(MedsegError, match="class names"):
        write_dicom_seg(ids, tmp_path / "x.dcm", like=folder, class_names=NAMES[:2])
    nii = tmp_path / "v.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), nii)
    with pytest.raises(MedsegError, match="DICOM series"):
        write_dicom_seg(np.ones((6, 5, 4), np.uint8), tmp_path / "x.dcm", like=nii, class_names=NAMES)


def test_cli_export_dicom_seg(series, tmp_path, capsys):
    import tifffile

    folder, src = series
    ids = np.zeros(src.shape, np.uint16)
    ids[2:4, 3:8, 3:9] = 1
    tif = tmp_path / "objects.tif"
    tifffile.imwrite(tif, ids)
    assert main(["objects", "export", str(tif), "--components", "--dicom-seg", str(tmp_path / "s.dcm"),
                 "--like", str(folder)]) == 0
    assert "segments" in capsys.readouterr().out and (tmp_path / "s.dcm").is_file()
    assert main(["objects", "export", str(tif), "--components", "--dicom-seg", str(tmp_path / "s.dcm")]) == 2
    assert "--like" in capsys.readouterr().err
