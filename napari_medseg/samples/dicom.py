"""Write a ``ZYX`` (LPS+) volume as a DICOM series of single-frame slices, deterministically.

Used to export the sample CT as DICOM (``napari-medseg sample ct --dicom``) and by the tests to build
synthetic series. Positions go into ImagePositionPatient / ImageOrientationPatient, pixel sizes into
PixelSpacing, Hounsfield units are stored as unsigned raw values with ``RescaleIntercept`` (like most
scanners). UIDs derive from ``uid_seed``: the same call writes the same bytes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def write_dicom_series(
    volume: np.ndarray,
    folder: str | os.PathLike,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin_lps: Sequence[float] = (0.0, 0.0, 0.0),
    *,
    modality: str = "CT",
    intercept: float = -1024.0,
    series_description: str = "sample",
    series_number: int = 1,
    uid_seed: str = "napari-medseg",
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    file_names: Sequence[str] | None = None,
    study_uid: str | None = None,
) -> list[Path]:
    """Write ``volume`` (ZYX: slice k, row r, column c) as one DICOM file per slice into ``folder``.

    Voxel (k, r, c) sits at LPS ``origin + k*dz*n + r*dy*col_dir + c*dx*row_dir`` where ``orientation`` is
    ImageOrientationPatient (row direction, then column direction) and ``n`` their cross product; with
    the default axial orientation the volume is already in the package's ZYX LPS+ convention. Values are
    stored as ``uint16`` raw = value - intercept (so pass HU for CT). Returns the written paths.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be ZYX (3 dimensions), got shape {vol.shape}")
    raw = np.rint(vol.astype(np.float64) - intercept)
    if raw.min() < 0 or raw.max() > 65535:
        raise ValueError(f"values {vol.min()}..{vol.max()} do not fit uint16 with intercept {intercept}")
    raw = raw.astype(np.uint16)
    bits = max(12, int(raw.max()).bit_length())  # scanners store 12 bits: HU -1024..3071 fits int16
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = (float(s) for s in spacing)
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    sop_class = {"CT": pydicom.uid.CTImageStorage, "MR": pydicom.uid.MRImageStorage}.get(modality,
                                                                                         pydicom.uid.SecondaryCaptureImageStorage)
    study = study_uid or generate_uid(entropy_srcs=[uid_seed, "study"])
    series = generate_uid(entropy_srcs=[uid_seed, "series", str(series_number)])
    frame = generate_uid(entropy_srcs=[uid_seed, "frame"])
    names = list(file_names) if file_names is not None else [f"slice_{k:04d}.dcm" for k in range(vol.shape[0])]
    paths = []
    for k in range(vol.shape[0]):
        sop = generate_uid(entropy_srcs=[uid_seed, "sop", str(series_number), str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(names[k], {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = modality
        ds.PatientName, ds.PatientID = "Sample^Phantom", "napari-medseg"
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        pos = np.asarray(origin_lps, float) + k * dz * normal
        ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in orientation]
        ds.PixelSpacing = [f"{dy:.6g}", f"{dx:.6g}"]
        ds.SliceThickness = f"{dz:.6g}"
        ds.SliceLocation = f"{float(np.dot(pos, normal)):.6g}"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:.6g}", "1"
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = raw[k].tobytes()
        path = out / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d DICOM slices to %s", len(paths), out)
    return paths
