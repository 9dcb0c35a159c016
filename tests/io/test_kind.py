"""Image or labels: NIfTI header, names and value structure decide (io/kind.py), and the caller can say.

The files live in a folder named ``data`` (pytest's own folder is named after the test, and a test name
holding ``labels`` or ``image`` would be a name hint).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_medseg.core.errors import UnreadableInputError
from napari_medseg.io import open_image, open_path
from napari_medseg.io.kind import guess_kind, name_hint, words
from napari_medseg.io.nifti import open_nifti

SHAPE = (20, 72, 64)  # ZYX


def save(path, zyx: np.ndarray, intent: str | None = None, slope: float | None = None, cal=None):
    """``zyx`` as a NIfTI stored XYZ (RAS), in its own dtype (no scaling unless ``slope``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(zyx, (2, 1, 0))), np.diag([0.8, 0.8, 2.0, 1.0]))
    img.set_data_dtype(zyx.dtype)
    if intent:
        img.header.set_intent(intent)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    if cal is not None:
        img.header["cal_min"], img.header["cal_max"] = cal
    nib.save(img, str(path))
    return path


def mri_like(levels: int = 40, consecutive: bool = False, seed: int = 0) -> np.ndarray:
    """uint8 MRI-like volume: smooth anatomy plus noise, quantised to ``levels`` values with a broad, smooth
    histogram: spread over 0..255 like a rescaled low-bit-depth scan (or 0..levels-1 if ``consecutive``)."""
    rng = np.random.default_rng(seed)
    anatomy = gaussian_filter(rng.normal(size=SHAPE), 4.0)
    x = anatomy / anatomy.std() + 0.35 * rng.normal(size=SHAPE)
    q = np.clip(np.round((x - x.min()) / np.ptp(x) * (levels - 1)), 0, levels - 1)
    return (q if consecutive else np.round(q * 255 / (levels - 1))).astype(np.uint8)


def label_map(n_classes: int = 3, seed: int = 0) -> np.ndarray:
    """0..n_classes-1 in large constant blobs (background 0 the most common)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(SHAPE, np.uint8)
    for c in range(1, n_classes):
        field = gaussian_filter(rng.normal(size=SHAPE), 5.0)
        out[(field > np.quantile(field, 0.85)) & (out == 0)] = c
    return out


def test_uint8_mri_with_few_values_is_an_image(tmp_path):
    """The reported case: 8-bit MRI with 20 - 60 distinct values used to open as labels."""
    for levels, consecutive in ((40, False), (20, False), (40, True)):
        v = mri_like(levels, consecutive)
        assert len(np.unique(v)) <= 64  # the old rule: <= 64 distinct values -> labels
        src = open_path(save(tmp_path / "data" / f"case{levels}{consecutive}.nii.gz", v))[0]
        assert src.kind == "image", src.metadata.get("kind_reason")
        assert src.modality == "MR" and src.contrast_limits is not None
        assert "noise" in src.metadata["kind_reason"]
        assert open_image(tmp_path / "data" / f"case{levels}{consecutive}.nii.gz").name.startswith("case")


@pytest.mark.parametrize("n_classes", [2, 3, 6])
def test_label_maps_with_constant_regions_are_labels(tmp_path, n_classes):
    lab = label_map(n_classes)
    src = open_path(save(tmp_path / "data" / "case.nii.gz", lab))[0]
    assert src.kind == "labels", src.metadata.get("kind_reason")
    np.testing.assert_array_equal(np.asarray(src.levels[0])[:, ::-1, ::-1], lab)  # RAS stored -> LPS read
    assert src.metadata.get("kind_evidence") == "values" and src.contrast_limits is None
    with pytest.raises(UnreadableInputError, match="holds labels but no image.*kind='image'"):
        open_image(tmp_path / "data" / "case.nii.gz")


def test_label_intent_decides_even_for_image_like_values(tmp_path):
    p = save(tmp_path / "data" / "case.nii.gz", mri_like(40), intent="label")
    src = open_path(p)[0]
    assert src.kind == "labels"
    assert "1002" in src.metadata.get("kind_reason", "") and src.metadata["kind_evidence"] == "header"


def test_other_intent_or_rescaling_is_an_image(tmp_path):
    """Header evidence for an image beats values that look like labels."""
    lab = label_map(3)
    src = open_path(save(tmp_path / "data" / "est.nii.gz", lab.astype(np.int16), intent="estimate"))[0]
    assert src.kind == "image"
    assert "intent code 1001" in src.metadata["kind_reason"]
    src = open_path(save(tmp_path / "data" / "scaled.nii.gz", lab.astype(np.int16), slope=2.0))[0]
    assert src.kind == "image"
    assert "scl_slope" in src.metadata["kind_reason"]


def test_names_tip_the_balance(tmp_path):
    mask = (label_map(2) > 0).astype(np.uint8)
    assert open_path(save(tmp_path / "masks" / "a.nii.gz", mask))[0].kind == "labels"
    # two values say nothing about an image: in a folder named images, it is one
    src = open_path(save(tmp_path / "images" / "a.nii.gz", mask))[0]
    assert src.kind == "image"
    assert "images" in src.metadata["kind_reason"]
    # ... unless the file's own name says mask (the file name beats the folder name)
    assert open_path(save(tmp_path / "images" / "a_mask.nii.gz", mask))[0].kind == "labels"
    # a labels word in the name does not turn an image into labels
    assert open_path(save(tmp_path / "data" / "t1_brain_mask_applied.nii.gz", mri_like(40)))[0].kind == "image"
    assert words("labelsTr") == ["labels", "tr"] and words("case_001_seg") == ["case", "001", "seg"]
    assert name_hint(tmp_path / "nnunet" / "labelsTr" / "la_003.nii.gz").kind == "labels"
    assert name_hint(tmp_path / "nnunet" / "imagesTr" / "la_003_0000.nii.gz").kind == "image"
    assert name_hint(tmp_path / "data" / "case.nii.gz").kind is None


def test_value_structure_threshold_moves_with_the_name_hint():
    """Neither clearly image nor clearly labels (about 2/3 of the neighbours equal): the names decide."""
    rng = np.random.default_rng(0)
    a = 7 * np.repeat(rng.integers(1, 30, size=(5, 64, 32)), 3, axis=2)  # runs of 3 equal voxels along x
    a[:, :8] = 0
    kw = dict(pair_axes=(2,), integer=True)
    assert guess_kind(a, **kw).kind == "image"
    assert guess_kind(a, path="/d/case_seg.nii.gz", **kw).kind == "labels"


def test_kind_override_both_ways(tmp_path):
    img_p = save(tmp_path / "data" / "img.nii.gz", label_map(3))      # looks like labels
    lab_p = save(tmp_path / "data" / "lab.nii.gz", mri_like(40))      # looks like an image
    src = open_path(img_p, kind="image")[0]
    assert src.kind == "image" and src.metadata["kind_evidence"] == "user" and src.contrast_limits is not None
    assert open_image(img_p, kind="image").kind == "image"
    src = open_path(lab_p, kind="labels")[0]
    assert src.kind == "labels" and src.contrast_limits is None and src.dtype == np.uint8
    assert open_nifti(lab_p, kind="labels").kind == "labels"
    # float data opened as labels become integers (napari's labels are integers)
    f = save(tmp_path / "data" / "f.nii.gz", label_map(3).astype(np.float32))
    assert open_path(f)[0].kind == "image"
    src = open_path(f, kind="labels")[0]
    assert src.kind == "labels" and src.dtype.kind == "i"
    np.testing.assert_array_equal(np.asarray(src.levels[0])[:, ::-1, ::-1], label_map(3))
    with pytest.raises(ValueError, match="kind must be"):
        open_path(img_p, kind="mask")
    with pytest.raises(ValueError):
        open_image(img_p, kind="labels")


def test_kind_override_on_other_formats(tmp_path):
    import tifffile

    p = tmp_path / "m.tif"
    tifffile.imwrite(p, label_map(3)[0])
    assert open_path(p)[0].kind == "image"
    assert open_path(p, kind="labels")[0].kind == "labels"
    tifffile.imwrite(tmp_path / "f.tif", np.ones((32, 32), np.float32))
    with pytest.raises(UnreadableInputError, match="cannot be opened as labels"):
        open_path(tmp_path / "f.tif", kind="labels")


@pytest.mark.shared_data
def test_la2018_mri_images_and_masks(shared_data):
    """Real 8-bit LGE-MRI (many with <= 64 distinct values) and their masks, in folders images/ and masks/."""
    root = shared_data / "la2018_mri_train"
    if not (root / "images").is_dir():
        pytest.skip("la2018_mri_train is not in ../shared/data")
    names = ["0RZDK210BSMWAA6467LU.nii.gz", "RSZY41MT2FGDKHWWL5L2.nii.gz"]  # 58 and 20 distinct sampled values
    names = [n for n in names if (root / "images" / n).exists()] or sorted(p.name for p in (root / "images").iterdir())[:3]
    for n in names:
        img = open_path(root / "images" / n)[0]
        lab = open_path(root / "masks" / n)[0]
        assert img.kind == "image", img.metadata.get("kind_reason")
        assert lab.kind == "labels", lab.metadata.get("kind_reason")
        assert "noise" in img.metadata["kind_reason"]  # the values alone say image, not only the folder name
