"""Results of a DICOM series out as a DICOM Segmentation (DICOM-SEG), for PACS, 3D Slicer and OHIF.

``write_dicom_seg(labels, path, like=folder, class_names=...)`` writes a semantic label volume (or the
classes of an ``Objects``) in the package orientation (``ZYX``, LPS+) as one DICOM-SEG instance that
references the source series: every class is a segment (segment number = class value, its name and colour),
and each frame is the labels of one source slice, in that slice's own row and column order. The map from
the package orientation back to the files is the inverse of the one the DICOM reader applied
(``io/dicom.py``, which keeps the affine of the files as stacked and of the reoriented volume), checked on
the shapes and the affines, so a frame can never land on the wrong slice silently.

The DICOM-SEG object itself is built by `highdicom <https://highdicom.readthedocs.io>`_, the maintained
reference implementation of the DICOM Segmentation IOD (Imaging Data Commons), not by hand: it fills the
shared functional groups, the per-frame references to the source instances and the segment sequence, and
validates what it writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.objects.volumes_out import label_array, volume_source

#: type-2 attributes the SEG copies from its source images (Patient, General Study modules)
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _to_frames(lab: np.ndarray, src: ImageSource, datasets: Sequence[Any]) -> np.ndarray:
    """``lab`` (package ZYX LPS+) -> (slice, row, column) of the files in ``datasets``' order: the inverse of
    the reader's reorientation, from the two affines it kept (``affine_ras``, ``affine_ras_files``)."""
    import nibabel as nib

    aff = np.asarray(src.metadata["affine_ras"], float)
    stacked = np.asarray(src.metadata["affine_ras_files"], float)
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(aff),
                                                nib.orientations.io_orientation(stacked))
    frames = nib.orientations.apply_orientation(lab, transform)
    back = aff @ nib.orientations.inv_ornt_aff(transform, lab.shape)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if frames.shape != (len(datasets), rows, cols) or not np.allclose(back, stacked, atol=1e-3):
        raise MedsegError(f"{src.path}: could not map the labels back onto the series' slices (shape "
                          f"{frames.shape}, slices {len(datasets)} x {rows} x {cols}); write NIfTI instead.")
    return np.ascontiguousarray(frames)


def write_dicom_seg(labels: Any, path: str | os.PathLike, *, like: str | os.PathLike | ImageSource,
                    class_names: Sequence[str], colors: Sequence[str] | None = None, classes: Any = None,
                    series_description: str = "napari-medseg segmentation") -> Path:
    """Write ``labels`` (prediction values ``ZYX`` of the series' shape; or instance ids with ``classes``,
    ``Objects.classes``; or an ``Objects``) as DICOM-SEG at ``path``, referencing the DICOM series ``like``.
    ``class_names[k]`` names class value ``k`` (``ClassSchema.names``; ``[0]`` is background, not written)."""
    try:
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise MedsegError("writing DICOM-SEG needs highdicom: pip install highdicom") from e
    from napari_medseg import __version__
    from napari_medseg.core.classes import hex_to_rgba

    p = Path(path)
    if not p.parent.is_dir():
        raise MedsegError(f"{p.parent}: the folder does not exist; create it or choose another path.")
    src = volume_source(like)
    if src.metadata.get("format") != "dicom" or not src.path:
        raise MedsegError(f"{src.name}: DICOM-SEG refers to the slices of a DICOM series; this volume was not read "
                          "from one (write NIfTI instead: --nifti).")
    if hasattr(labels, "labels") and hasattr(labels, "classes"):
        labels, classes = labels.labels, labels.classes
    lab = label_array(labels)
    if classes is not None:
        lut = np.asarray(classes, np.int64)
        if int(lab.max(initial=0)) >= len(lut):
            raise MedsegError(f"the labels hold ids up to {int(lab.max())} but classes has {len(lut)} entries.")
        lab = lut[lab]
    if lab.shape != src.shape:
        raise GeometryMismatchError(f"the labels have shape {lab.shape} but {src.name} is {src.shape} (ZYX); "
                                    "labels must cover the whole series at full resolution.")
    top = int(lab.max(initial=0))
    if top >= len(class_names):
        raise MedsegError(f"the labels hold class {top} but only {len(class_names)} class names were given.")
    if top == 0:
        raise MedsegError("the labels are empty (no class anywhere): there is nothing to write.")
    folder = Path(src.path)
    datasets = [pydicom.dcmread(folder / f) for f in src.metadata["files"]]
    for ds in datasets:  # patient / study attributes that DICOM requires but may leave empty (type 2), which
        for kw in TYPE2_COPIED:  # exports and anonymisers often drop: empty in memory, the files are untouched
            if kw not in ds:
                setattr(ds, kw, "")
    frames = _to_frames(lab, src, datasets).astype(np.uint16 if top > 255 else np.uint8)
    algo = hd.AlgorithmIdentificationSequence(name="napari-medseg", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)
    segments = []
    for k in range(1, len(class_names)):
        color = None
        if colors is not None and k < len(colors):
            r, g, b, _ = hex_to_rgba(colors[k])
            color = hd.color.CIELabColor.from_rgb(int(r * 255), int(g * 255), int(b * 255))
        segments.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=str(class_names[k])[:64], segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, display_color=color))
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=9000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-medseg",
            manufacturer_model_name="napari-medseg", software_versions=__version__, device_serial_number="none",
            content_description=series_description[:64], omit_empty_frames=True)
        seg.SeriesDescription = series_description[:64]
        seg.save_as(p)
    except (ValueError, TypeError, AttributeError) as e:
        raise MedsegError(f"{src.name}: highdicom could not build the DICOM-SEG ({e}).") from e
    except OSError as e:
        raise MedsegError(f"{p}: could not write the DICOM-SEG ({e.strerror or e}).") from e
    return p
