"""``napari-medseg export CKPT --out PATH``: a checkpoint as a bioimage.io package, ONNX or TorchScript.

The bioimage.io package (``--format bioimageio``, the default) holds the weights three ways (state dict,
TorchScript, ONNX), the normalisation as preprocessing steps, a test input and output, a cover and a README,
and is tested with ``bioimageio.core`` before the command reports success (``--no-test`` skips that). With
``--test-image IMAGE`` the test input and cover are a crop of that image (at the training pixel size) instead
of random pixels. Exit status 1 when the package test fails (the package is kept, the failing checks printed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_medseg.core.errors import MedsegError

FORMATS = ("bioimageio", "onnx", "torchscript")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a napari-medseg checkpoint (.pt) or a model library name")
    p.add_argument("--out", required=True, type=Path, help="the file to write (.zip for bioimageio)")
    p.add_argument("--format", choices=FORMATS, default="bioimageio", help="bioimageio (default), onnx, torchscript")
    p.add_argument("--name", help="the model's name (bioimageio; default: the checkpoint's)")
    p.add_argument("--description", help="one or two sentences on what the model does (bioimageio)")
    p.add_argument("--author", action="append", default=[], help="an author (repeat for more; bioimageio)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX licence id (bioimageio; default CC-BY-4.0)")
    p.add_argument("--test-image", type=Path, help="an image like the training data: its middle becomes the "
                   "package's test input and cover (default: random pixels)")
    p.add_argument("--size", type=int, help="side of the test input / export example in pixels (default 128 in 2D, "
                   "64 in 3D; the Swin models' ONNX/TorchScript graphs are fixed to it)")
    p.add_argument("--no-test", action="store_true", help="do not run bioimageio.core's test on the package")


def _checkpoint(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    try:
        from napari_medseg.sharing.library import find
    except ImportError:  # pragma: no cover - the library module is part of the package
        raise MedsegError(f"checkpoint {p} does not exist") from None
    return Path(find(name))


def run(args: argparse.Namespace) -> int:
    ckpt = _checkpoint(args.checkpoint)
    if args.format != "bioimageio":
        from napari_medseg.models.export import export_checkpoint

        res = export_checkpoint(ckpt, args.out, format=args.format, size=args.size)
        print(f"wrote {res.path} (max |difference| to PyTorch {res.max_abs_diff:.2g})")
        return 0
    from napari_medseg.sharing.bioimageio_export import export_bioimageio, image_crop

    test_image = None
    if args.test_image is not None:
        from napari_medseg.io.reader import open_image

        test_image = image_crop(open_image(args.test_image), ckpt, side=max(args.size or 256, 64))
    res = export_bioimageio(ckpt, args.out, name=args.name, description=args.description, authors=args.author,
                            license=args.license, test_image=test_image, size=args.size,
                            run_test=not args.no_test, on_progress=lambda s: print(s, flush=True))
    if res.test_passed is False:
        print(res.test_log)
        print(f"the package {res.path} FAILED bioimageio.core's test (kept for inspection)")
        return 1
    return 0
