"""``napari-medseg sample {slide,ct} --out DIR``: write a sample image, its ground truth and class file.

The files come from the cache (generated there on first use, deterministically) and are copied to DIR:

- slide: ``sample-slide.ome.tif``, ``sample-slide-labels.ome.tif``, ``slide_classes.json`` (``--size 2048``:
  a smaller slide of the same kind, under the same names)
- ct:    ``sample-ct.nii.gz``, ``sample-ct-labels.nii.gz``, ``ct_classes.json``
  (with ``--dicom`` also ``sample-ct-dicom/``, the image as a DICOM series)
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from napari_medseg.core.errors import MedsegError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=["slide", "ct"], help="the H&E-like slide or the CT-like volume")
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (created if missing)")
    parser.add_argument("--dicom", action="store_true", help="ct only: also write the image as a DICOM series")
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="slide only: a smaller slide of the same kind, 1024, 2048 or 4096 px a side (default "
                             "8192, the sample napari opens); 2048 px makes a CLI walkthrough take seconds")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist in --out")


def write_sample(which: str, out: Path, *, dicom: bool = False, force: bool = False,
                 size: int | None = None) -> list[Path]:
    """Copy sample ``which`` ("slide" or "ct") with ground truth and classes into ``out``; returns paths.
    ``size``: the slide's side in px (``samples.slide.SIZES``; default the full 8192 px sample)."""
    if dicom and which != "ct":
        raise MedsegError("--dicom only applies to the ct sample.")
    if size is not None and which != "slide":
        raise MedsegError("--size only applies to the slide sample.")
    if size is not None:
        from napari_medseg.samples.slide import SIZES

        if size not in SIZES:
            raise MedsegError(f"--size {size}: the sample slide comes in sides {', '.join(map(str, SIZES))} px.")
    names = {"slide": ["sample-slide.ome.tif", "sample-slide-labels.ome.tif", "slide_classes.json"],
             "ct": ["sample-ct.nii.gz", "sample-ct-labels.nii.gz", "ct_classes.json"]}.get(which)
    if names is None:
        raise MedsegError(f"unknown sample {which!r}; choose 'slide' or 'ct'.")
    targets = [out / n for n in names] + ([out / "sample-ct-dicom"] if dicom else [])
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise MedsegError(f"{existing[0]} already exists; pass --force to overwrite or choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MedsegError(f"{out}: cannot create the output folder ({e.strerror}); choose another --out.") from e
    if which == "slide":
        from napari_medseg.samples.slide import SAMPLE_DATA, sample_slide_paths

        src = [*sample_slide_paths(**({} if size is None else {"size": size})), SAMPLE_DATA / names[2]]
    else:
        from napari_medseg.samples.ct import SAMPLE_DATA, sample_ct_paths

        src = [*sample_ct_paths(), SAMPLE_DATA / names[2]]
    try:
        for s, t in zip(src, targets):
            shutil.copyfile(s, t)
        if dicom:
            import numpy as np

            from napari_medseg.io.nifti import open_nifti
            from napari_medseg.samples.ct import SPACING
            from napari_medseg.samples.dicom import write_dicom_series

            vol = np.asarray(open_nifti(src[0]).levels[0])
            if targets[-1].exists():
                shutil.rmtree(targets[-1])
            # centre voxel at the world origin, as in the NIfTI: LPS position of voxel (0, 0, 0)
            origin = [-(vol.shape[2] - 1) / 2 * SPACING[2], -(vol.shape[1] - 1) / 2 * SPACING[1],
                      -(vol.shape[0] - 1) / 2 * SPACING[0]]
            write_dicom_series(vol, targets[-1], SPACING, origin, series_description="napari-medseg sample CT",
                               uid_seed="napari-medseg-sample-ct")
    except OSError as e:
        raise MedsegError(f"{out}: could not write the sample ({e.strerror}); check free space and permissions.") from e
    return targets


def run(args: argparse.Namespace) -> int:
    paths = write_sample(args.which, args.out, dicom=args.dicom, force=args.force, size=args.size)
    for p in paths:
        print(p)
    print(f"open it with: napari-medseg gui {paths[0]}")
    return 0
