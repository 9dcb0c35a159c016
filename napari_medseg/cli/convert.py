"""``napari-medseg convert IN OUT.zarr [--chunk N] [--levels N] [--overwrite]``: a slide or volume to a
chunked NGFF multiscale pyramid, with a progress bar. Refuses to replace an existing output unless
``--overwrite`` is given."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="slide (SVS, NDPI, OME-TIFF, TIFF), zarr, NIfTI or DICOM folder")
    parser.add_argument("output", type=Path, help="output NGFF zarr folder, e.g. slide.zarr")
    parser.add_argument("--chunk", type=int, default=512, metavar="N", help="chunk edge in pixels (default 512)")
    parser.add_argument("--levels", type=int, default=None, metavar="N",
                        help="pyramid levels (default: halve until a level fits one chunk)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output zarr")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="blocks processed at once (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_medseg.io.convert import convert

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:  # created on the first block, after the input and output were checked
            bar = tqdm(total=total, unit="block", desc=f"convert {args.input.name}")
        bar.total = total
        bar.update(done - bar.n)

    try:
        out = convert(args.input, args.output, chunk=args.chunk, n_levels=args.levels, overwrite=args.overwrite,
                      progress=progress, workers=args.workers)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {out}")
    return 0
