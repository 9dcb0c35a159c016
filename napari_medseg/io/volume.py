"""CT/MRI volumes: the orientation, spacing and display conventions shared by ``io/nifti.py`` and ``io/dicom.py``.

Every volume comes out in the package convention (see ``core/source.py``): LPS+ voxel order, axes ``ZYX``
(Z inferior -> superior, Y anterior -> posterior, X patient right -> patient left), or ``CZYX`` for a 4D
NIfTI holding several sequences. ``reorient`` gets there with flips and transposes only (the nearest
axis-aligned orientation, never a resampling), lazily on dask arrays. ``pixel_size`` is the voxel spacing in
mm per ``ZYX`` axis (``spacing_of``); ``metadata["affine_ras"]`` maps (z, y, x) voxel indices of level 0 to
RAS+ mm, so a prediction can be saved as NIfTI in the right place.

Only a small subsample is read at open time, to guess the modality and the default contrast
(``image_contrast``):

- integer data with values below -500 (after ``scl_slope``/``scl_inter`` or ``RescaleSlope``/
  ``RescaleIntercept``) is CT in Hounsfield units, shown with the soft-tissue window W400/L40, i.e.
  ``contrast_limits`` (-160, 240) (``CT_WINDOWS`` lists others);
- anything else gets the 1 - 99.5 percentile range of the subsample ("MR" when non-negative).

Volumes above ``LARGE_VOXELS`` get lazy lower levels (``lower_levels``: 2x mean-downsampling of the finest
axes) so napari stays fluid in 2D and 3D. See docs/volumes.md.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

#: Axis codes (nibabel: the direction each array axis increases towards) of the package convention, ZYX.
TARGET_AXCODES = ("S", "P", "L")
#: Common CT windows as (level, width) in HU; ``window_limits`` turns one into contrast limits.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0), "liver": (60.0, 160.0), "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0), "brain": (40.0, 80.0),
}
CT_MIN_HU = -500.0          # integer data going below this is taken as CT (air is -1000 HU)
LARGE_VOXELS = 512 ** 3     # above this many voxels, lazy lower levels are added


def window_limits(name: str = "soft tissue") -> tuple[float, float]:
    """Contrast limits ``(level - width/2, level + width/2)`` of a named CT window."""
    level, width = CT_WINDOWS[name]
    return (level - width / 2, level + width / 2)



def reorient(arr: Any, affine_ras: np.ndarray) -> tuple[Any, np.ndarray]:
    """Flip/transpose the first three axes of ``arr`` (lazy for dask) to ``TARGET_AXCODES`` (ZYX, LPS+).

    ``affine_ras`` maps the voxel indices of those axes to RAS+ mm. Returns the reoriented array (extra
    trailing axes untouched) and the affine of its first three axes.
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine_ras)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(TARGET_AXCODES))
    for ax, flip in enumerate(transform[:, 1]):
        if flip == -1:
            arr = da.flip(arr, axis=ax) if isinstance(arr, da.Array) else np.flip(arr, axis=ax)
    order = list(np.argsort(transform[:, 0])) + list(range(3, arr.ndim))
    arr = arr.transpose(order)
    new_affine = affine_ras @ nib.orientations.inv_ornt_aff(transform, tuple(arr.shape[i] for i in np.argsort(order)[:3]))
    return arr, new_affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def int_dtype_for(lo: float, hi: float) -> np.dtype:
    for dt in (np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.float32)


def image_contrast(sample: np.ndarray, is_int: bool) -> tuple[str, tuple[float, float] | None]:
    """(modality, contrast_limits) of an image, guessed from a subsample of the (scaled) voxels."""
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()
    if finite.size == 0:
        return "unknown", None
    lo = float(finite.min())
    if is_int and lo < CT_MIN_HU:
        return "CT", window_limits("soft tissue")
    p1, p99 = (float(v) for v in np.percentile(finite, [1.0, 99.5]))
    if p99 <= p1:
        p1, p99 = float(finite.min()), float(finite.max())
    if p99 <= p1:
        p99 = p1 + 1.0
    return "MR" if lo >= 0 else "unknown", (p1, p99)


def lower_levels(level0: Any, spacing: tuple[float, ...], spatial_offset: int) -> list[Any]:
    """Lazy 2x mean-downsampled levels of a large volume, halving its finest axes (in-plane for CT)."""
    levels = [level0]
    if int(np.prod(level0.shape)) <= LARGE_VOXELS:
        return levels
    sp, arr = list(spacing), level0
    while int(np.prod(arr.shape)) > LARGE_VOXELS // 8 and len(levels) < 6:
        finest = min(sp)
        axes = {spatial_offset + i: 2 for i, s in enumerate(sp)
                if s <= 1.5 * finest and arr.shape[spatial_offset + i] >= 64}
        if not axes:
            break
        arr = da.coarsen(np.mean, arr, axes, trim_excess=True)
        arr = (arr.round() if level0.dtype.kind in "iu" else arr).astype(level0.dtype)
        for ax in axes:
            sp[ax - spatial_offset] *= 2
        levels.append(arr)
    return levels

