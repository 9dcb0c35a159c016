"""``napari-medseg sample``: copies image, ground truth and classes; refuses to overwrite; DICOM export."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.cli import main
from napari_medseg.core.classes import ClassSchema
from napari_medseg.io import open_path


@pytest.mark.slow
def test_sample_ct_cli_with_dicom(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", "ct", "--out", str(out), "--dicom"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ct_classes.json", "sample-ct-dicom", "sample-ct-labels.nii.gz", "sample-ct.nii.gz"]
    ClassSchema.from_json((out / "ct_classes.json").read_text())
    nii = open_path(out / "sample-ct.nii.gz")[0]
    (dcm,) = open_path(out / "sample-ct-dicom")
    # the same volume at the same place through both readers
    np.testing.assert_array_equal(np.asarray(dcm.levels[0][20:24]), np.asarray(nii.levels[0][20:24]))
    np.testing.assert_allclose(dcm.pixel_size, nii.pixel_size, rtol=1e-5)
    np.testing.assert_allclose(dcm.metadata["affine_ras"], nii.metadata["affine_ras"], atol=1e-3)
    assert "sample-ct.nii.gz" in capsys.readouterr().out


def test_sample_cli_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample-ct.nii.gz").write_bytes(b"mine")
    assert main(["sample", "ct", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "sample-ct.nii.gz").read_bytes() == b"mine"


def test_sample_cli_bad_choice_exits(tmp_path):
    with pytest.raises(SystemExit):
        main(["sample", "mri", "--out", str(tmp_path)])
    assert main(["sample", "slide", "--out", str(tmp_path), "--dicom"]) == 2
