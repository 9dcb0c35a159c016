"""A deterministic CT-like abdominal volume in Hounsfield units with ground truth, saved as NIfTI.

The phantom (``SHAPE`` = 64 x 256 x 256 voxels ZYX, ``SPACING`` = 2.5 mm slices x 1.5 mm in-plane, i.e.
160 x 384 x 384 mm, anisotropic like a clinical abdominal CT) covers the lung bases down to the kidneys:
air (-1000 HU) around an elliptic body with skin, subcutaneous and visceral fat (-100..-80 HU), abdominal
wall and back muscles (50 HU), lungs (-850 HU, with vessels), liver (60 HU, with contrast-filled vessels
and a hypodense lesion), spleen and stomach (not labelled: look-alikes for the model to learn to ignore),
kidneys (medulla 30 HU, contrast-enhanced cortex 150 HU, sinus fat), aorta and vena cava, and the spine
(cortical bone 900 HU, cancellous 250 HU, discs 80 HU, spinal canal). The image is slightly smoothed
(partial volume) and carries 12 HU Gaussian noise; int16.

Files (in ``cache.cache_dir()``, the version key in the name), both stored in RAS+ order with a correct
affine, as scanners' converters write them, so opening them exercises ``io.nifti.open_nifti``'s
reorientation:

- ``sample-ct-v{VERSION}.nii.gz``: the image, int16 HU;
- ``sample-ct-v{VERSION}-labels.nii.gz``: uint8 ground truth in the label-store convention (0 not annotated,
  1 background, 2 liver, 3 kidney, 4 spine, 5 lung); names and colours: ``sample_data/ct_classes.json``.

Everything derives from ``SEED``; gzip headers carry no time stamp: two generations write the same bytes.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.source import ImageSource
from napari_medseg.samples.cache import ensure_files

logger = logging.getLogger(__name__)

VERSION = 1
SEED = 20260102
SHAPE = (64, 256, 256)            # ZYX voxels
SPACING = (2.5, 1.5, 1.5)         # ZYX mm
BACKGROUND, LIVER, KIDNEY, SPINE, LUNG = 1, 2, 3, 4, 5
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"


def ct_classes() -> ClassSchema:
    """The sample CT's classes (``sample_data/ct_classes.json``)."""
    return ClassSchema.from_dict(json.loads((SAMPLE_DATA / "ct_classes.json").read_text()))


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """LPS world coordinates (mm) of the voxel centres, as broadcastable z, y, x arrays (ZYX order)."""
    z = ((np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]).astype(np.float32)[:, None, None]
    y = ((np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]).astype(np.float32)[None, :, None]
    x = ((np.arange(shape[2]) - (shape[2] - 1) / 2) * spacing[2]).astype(np.float32)[None, None, :]
    return z, y, x


def make_phantom(seed: int = SEED, shape: tuple[int, int, int] = SHAPE,
                 spacing: tuple[float, float, float] = SPACING) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 HU, labels uint8 store values), both ZYX in the package convention (LPS+)."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid(shape, spacing)
    full = np.broadcast_shapes(z.shape, y.shape, x.shape)

    def noise(sigma: tuple[float, float, float]) -> np.ndarray:
        """Smooth Gaussian noise with unit standard deviation."""
        f = ndimage.gaussian_filter(rng.standard_normal(full).astype(np.float32), sigma)
        return f / (f.std() + 1e-6)

    warp = [noise((3, 10, 10)) for _ in range(2)]

    def ell(c: tuple[float, float, float], s: tuple[float, float, float], wobble: float = 0.04, k: int = 0) -> np.ndarray:
        """Implicit ellipsoid value (< 1 inside) centred at c = (x, y, z) mm with semi-axes s (x, y, z)."""
        r = np.sqrt(((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2)
        return r + wobble * warp[k]

    hu = np.full(full, -1000.0, np.float32)
    lab = np.full(full, BACKGROUND, np.uint8)
    zn = z / 80.0
    body = np.sqrt((x / (168 - 6 * zn ** 2)) ** 2 + ((y - 5) / (118 - 4 * zn)) ** 2) + 0.015 * warp[0]
    hu[body < 1] = 40.0                                                    # skin
    hu[body < 0.985] = -100.0                                              # subcutaneous fat
    wall = np.sqrt((x / 150) ** 2 + ((y - 5) / 100) ** 2) + 0.03 * warp[1]
    hu[wall < 1] = 50.0                                                    # abdominal wall muscle
    cavity = wall < 0.93
    hu[cavity] = -85.0                                                     # visceral fat
    bowel = cavity & (noise((2, 6, 6)) > 0.3)
    hu[bowel] = 35.0
    gas = bowel & (noise((1.5, 4, 4)) > 1.3)
    hu[gas] = -950.0
    for sx in (-1, 1):                                                     # back muscles
        hu[(ell((sx * 42, 88, 0), (26, 20, 400), 0.05) < 1)] = 50.0
    # lungs (bases; the right one sits higher over the liver dome), with vessels
    lung = np.zeros(full, bool)
    for sx, zc in ((-1, 112.0), (1, 100.0)):
        lung |= (ell((sx * 88, 15, zc), (68, 85, 100), 0.05) < 1) & (wall < 0.97)
    vessels = (np.abs(noise((1.5, 3, 3))) < 0.12) & (np.abs(noise((1.5, 3, 3))) < 0.12)  # thin tubes
    hu[lung] = np.where(vessels[lung], -100.0, -850.0)
    lab[lung] = LUNG
    # heart at the top, anterior left
    hu[(ell((25, -35, 100), (70, 55, 42), 0.03) < 1) & ~lung] = 45.0
    # liver: right upper quadrant, wedge-shaped towards the left, vessels and a lesion
    liver = (ell((-62, -5, 22), (88, 85, 62), 0.06, 1) < 1) & (x < 35 - 0.6 * (y + 5)) & cavity & ~lung
    hu[liver] = 60.0
    hepatic = liver & (np.abs(noise((2, 6, 6))) < 0.15) & (np.abs(noise((2, 6, 6))) < 0.15)
    hu[hepatic] = 150.0
    hu[liver & (ell((-80, 10, 30), (14, 14, 10), 0.0) < 1)] = 25.0      # hypodense lesion
    lab[liver] = LIVER
    # spleen and stomach (left, not labelled)
    spleen = (ell((95, 38, 45), (30, 50, 38), 0.05, 1) < 1) & cavity & ~lung & ~liver
    hu[spleen] = 50.0
    stomach = (ell((52, -45, 28), (48, 38, 40), 0.05) < 1) & cavity & ~lung & ~liver
    hu[stomach] = np.where(np.broadcast_to(y, full)[stomach] < -62, -1000.0, 10.0)  # air over fluid
    # kidneys: cortex (contrast), medulla, sinus fat at the hilum; the right one is lower
    for sx, zc in ((-1, -38.0), (1, -28.0)):
        c = (sx * 72, 58, zc)
        outer = ell(c, (27, 30, 52), 0.04) < 1
        inner = ell(c, (20, 23, 43), 0.04) < 1
        sinus = ell((sx * 58, 52, zc), (11, 12, 26), 0.0) < 1
        kidney = outer & ~sinus & cavity
        hu[outer & cavity] = 150.0
        hu[inner & cavity] = 30.0
        hu[sinus & cavity] = -70.0
        lab[outer & cavity & (lab == LIVER)] = BACKGROUND   # the kidney pushes the liver aside
        lab[kidney] = KIDNEY
    # aorta and inferior vena cava
    hu[np.broadcast_to(((x - 16) / 12) ** 2 + ((y - 32) / 12) ** 2 < 1, full)] = 180.0
    hu[np.broadcast_to(((x + 24) / 13) ** 2 + ((y - 30) / 10) ** 2 < 1, full) & ~liver] = 120.0
    # spine: vertebral bodies (cortex, cancellous bone, discs), canal, posterior elements
    level = ((z + 200) % 31.0)
    disc = np.broadcast_to(level < 6.0, full)
    vb = np.broadcast_to((x / 21) ** 2 + ((y - 62) / 17) ** 2, full)
    spine = (vb < 1) & ~disc
    hu[vb < 1] = np.where(disc[vb < 1], 80.0, np.where(vb[vb < 1] > 0.8, 900.0, 250.0))
    canal = np.broadcast_to((x / 9) ** 2 + ((y - 90) / 8) ** 2 < 1, full)
    arch = np.broadcast_to(((x / 15) ** 2 + ((y - 90) / 14) ** 2 < 1) | ((np.abs(x) < 4) & (y > 90) & (y < 116)), full)
    arch = arch & ~canal & np.broadcast_to(level > 8.0, full)
    hu[arch] = 600.0
    hu[canal] = 15.0
    spine |= arch
    lab[spine] = SPINE
    # partial volume, texture, scanner noise
    hu = ndimage.gaussian_filter(hu, (0.4, 0.7, 0.7))
    hu += 6.0 * noise((0.5, 1.5, 1.5)) * (hu > -500)
    hu += rng.normal(0.0, 12.0, full).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), lab


def _ras_storage(vol_zyx: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Array in RAS+ storage order (i -> right, j -> anterior, k -> superior) and its affine, for a ZYX
    LPS+ volume whose centre voxel sits at the world origin (as ``_grid``)."""
    data = np.ascontiguousarray(np.transpose(vol_zyx, (2, 1, 0))[::-1, ::-1, :])
    nz, ny, nx = vol_zyx.shape
    aff = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    # voxel (0,0,0) of the RAS array is ZYX voxel (0, ny-1, nx-1): LPS (x, y) = +half extents -> RAS negated
    aff[:3, 3] = [-(nx - 1) / 2 * spacing[2], -(ny - 1) / 2 * spacing[1], -(nz - 1) / 2 * spacing[0]]
    return data, aff


def _write_nifti_gz(path: Path, vol_zyx: np.ndarray, spacing: tuple[float, float, float], labels: bool) -> None:
    import nibabel as nib

    data, aff = _ras_storage(vol_zyx, spacing)
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = f"napari-medseg sample CT v{VERSION}{' labels' if labels else ''}".encode()
    if labels:
        img.header.set_intent("label")
    else:
        img.header["cal_min"], img.header["cal_max"] = -160, 240   # soft-tissue window for other viewers
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def generate_ct(image_path: Path, labels_path: Path, seed: int = SEED) -> dict[str, Any]:
    """Write the CT phantom and its ground truth as ``.nii.gz``. Returns timing and class fractions."""
    t0 = time.perf_counter()
    hu, lab = make_phantom(seed)
    _write_nifti_gz(image_path, hu, SPACING, labels=False)
    _write_nifti_gz(labels_path, lab, SPACING, labels=True)
    counts = np.bincount(lab.ravel(), minlength=6)
    info = {"seconds": time.perf_counter() - t0,
            "fractions": {n: float(c) / lab.size for n, c in zip(("background", "liver", "kidney", "spine", "lung"), counts[1:])}}
    logger.info("sample CT generated in %.1f s: %s", info["seconds"], info)
    return info


def sample_ct_paths() -> tuple[Path, Path]:
    """(image, ground truth) ``.nii.gz`` in the cache, generated on first use (a few seconds)."""
    img, lab = ensure_files([f"sample-ct-v{VERSION}.nii.gz", f"sample-ct-v{VERSION}-labels.nii.gz"],
                            lambda tmp: generate_ct(tmp[0], tmp[1]))
    return img, lab


def sample_ct_path() -> Path:
    """The sample CT (NIfTI), generated into the cache if missing."""
    return sample_ct_paths()[0]


def load_sample_ct() -> tuple[ImageSource, ImageSource]:
    """(CT, ground truth) as lazy ``ZYX`` ``ImageSource`` in LPS+ order (mm), read through ``open_nifti``."""
    from napari_medseg.io.nifti import open_nifti

    img_path, lab_path = sample_ct_paths()
    img = open_nifti(img_path)
    img.name = "sample CT"
    lab = open_nifti(lab_path)
    lab = dataclasses.replace(lab, kind="labels", name="ground truth", contrast_limits=None,
                              metadata={**lab.metadata, "classes": ct_classes().to_dict(), "value_convention": "store"})
    return img, lab
