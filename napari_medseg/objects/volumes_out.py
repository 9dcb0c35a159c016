"""Results of a volume out as NIfTI, in the source's own geometry, for 3D Slicer, ITK-SNAP and any NIfTI tool.

Volumes are held in the package convention (``ZYX``, LPS+ voxel order, see ``core/source.py``); readers flip
and transpose a file's voxels to get there and keep the map back to RAS+ millimetres in
``metadata["affine_ras"]``. ``write_nifti_labels(labels, path, like=source)`` undoes this: a semantic or
instance label array of the source's shape is written with the source's voxel order and affine, so the
file lies exactly over the source in any viewer (nibabel gives back the same affine and shape):

- the source is a NIfTI file: the labels are flipped/transposed back to its stored orientation and written
  with its affine (sform and qform with their codes) and spatial units;
- the source is a DICOM series folder: the labels are written as ``(x, y, z)`` = (columns, rows, slices)
  with the affine the DICOM reader derived from ImagePositionPatient / ImageOrientationPatient.

The header's intent is ``NIFTI_INTENT_LABEL`` (napari-medseg, Slicer and ITK-SNAP read it as a label map);
the dtype is the smallest unsigned integer that holds the values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.source import ImageSource


def volume_source(like: str | os.PathLike | ImageSource) -> ImageSource:
    """The volume ``like`` names (an ``ImageSource``, or the path of a NIfTI file or DICOM series folder)."""
    if isinstance(like, ImageSource):
        return like
    from napari_medseg.io.reader import open_path

    sources = open_path(like)
    vols = [s for s in sources if s.spatial_dims == 3]
    if not vols:
        raise MedsegError(f"{like}: is not a volume (NIfTI file or DICOM series folder); labels are written as "
                          "NIfTI in the geometry of a volume.")
    return next((s for s in vols if s.kind == "image"), vols[0])


def label_array(labels: Any) -> np.ndarray:
    """``labels`` (an array or ``Objects``) as the smallest unsigned integer array; clear errors otherwise."""
    lab = np.asarray(labels.labels if hasattr(labels, "labels") and hasattr(labels, "classes") else labels)
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if lab.dtype.kind not in "iu":
        raise MedsegError(f"labels must be integers, got {lab.dtype}; round or threshold them first.")
    if lab.size and lab.min() < 0:
        raise MedsegError("labels must be >= 0 to be written as a NIfTI label map.")
    top = int(lab.max()) if lab.size else 0
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(d).max)
    return lab.astype(dtype, copy=False)


def write_nifti_labels(labels: Any, path: str | os.PathLike, *, like: str | os.PathLike | ImageSource) -> Path:
    """Write ``labels`` (``ZYX``, the source's level-0 shape, package orientation; or ``Objects``) as a NIfTI
    label map at ``path`` (``.nii`` or ``.nii.gz``) in the geometry of ``like`` (a NIfTI file, a DICOM series
    folder, or the ``ImageSource`` opened from one). Returns the path."""
    import nibabel as nib

    p = Path(path)
    if not p.name.lower().endswith((".nii", ".nii.gz")):
        raise MedsegError(f"{p}: name the output .nii.gz (or .nii).")
    if not p.parent.is_dir():
        raise MedsegError(f"{p.parent}: the folder does not exist; create it or choose another path.")
    src = volume_source(like)
    lab = label_array(labels)
    if lab.shape != src.shape:
        raise GeometryMismatchError(f"the labels have shape {lab.shape} but {src.name} is {src.shape} (ZYX); "
                                    "labels must cover the whole volume at full resolution.")
    aff = src.metadata.get("affine_ras")
    if aff is None:
        raise MedsegError(f"{src.name}: its position in the patient is unknown (not read from NIfTI or DICOM); "
                          "cannot write labels in its geometry.")
    aff = np.asarray(aff, float)
    orig = None
    if src.metadata.get("format") == "nifti" and src.path:
        orig = nib.load(src.path)
    if orig is not None:
        ornt = nib.orientations.io_orientation(aff)
        target = nib.orientations.io_orientation(orig.affine)
        transform = nib.orientations.ornt_transform(ornt, target)
        data = nib.orientations.apply_orientation(lab, transform)
        out_aff = aff @ nib.orientations.inv_ornt_aff(transform, lab.shape)
        if data.shape != tuple(orig.shape[:3]) or not np.allclose(out_aff, orig.affine, atol=1e-4):
            raise MedsegError(f"{src.path}: could not map the labels back to the file's orientation; write them with "
                              "like= the DICOM folder or report this file.")
        img = nib.Nifti1Image(np.ascontiguousarray(data), orig.affine)
        hdr = orig.header
        img.set_sform(orig.get_sform(), code=int(hdr["sform_code"]) or 1)
        img.set_qform(orig.get_qform(), code=int(hdr["qform_code"]) or 1)
        img.header.set_xyzt_units(*hdr.get_xyzt_units())
    else:  # (z, y, x) -> (x, y, z): columns, rows, slices, as DICOM converters write
        data = np.ascontiguousarray(lab.transpose(2, 1, 0))
        out_aff = aff.copy()
        out_aff[:, :3] = aff[:, [2, 1, 0]]
        img = nib.Nifti1Image(data, out_aff)
        img.set_sform(out_aff, code=1)
        img.set_qform(out_aff, code=1)
        img.header.set_xyzt_units("mm")
    img.header.set_intent("label")
    img.header.set_data_dtype(data.dtype)
    try:
        nib.save(img, str(p))
    except OSError as e:
        raise MedsegError(f"{p}: could not write the NIfTI ({e.strerror or e}).") from e
    return p
