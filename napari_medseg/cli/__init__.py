"""``napari-medseg`` command line: the same engine and configs as the widgets, headless.

Subcommands live in their own modules (imported only when used, so ``--help`` is instant):

- ``convert IN OUT.zarr``        a chunked NGFF multiscale pyramid from any readable slide or volume
- ``train``                      fine-tune a model from a label store, image/mask folders or NIfTI pairs
- ``predict CKPT INPUT... --out`` tiled prediction into NGFF zarr, optionally on a Dask cluster
- ``distil TEACHER ...``          distil for deployment: a light student learns from a trained model and the labels
- ``rank IMAGE --model M``       where to paint next: regions ranked by the model's uncertainty (JSON + table)
- ``explain IMAGE --model M --region ...`` where the model looks: Grad-CAM / attention-gate / transformer attention
  maps as TIFFs
- ``export CKPT --out PKG.zip``   a bioimage.io model package (or ONNX / TorchScript), tested
- ``models [list|show|add|remove|folder]`` the model library: trained and imported models by name
- ``sample {slide,ct} --out DIR`` write the sample data (image and ground truth) to disk
- ``measure IMAGE OBJECTS --out`` one table row per object (+ summary per class/region, QuPath GeoJSON)
- ``objects {import,export}``    objects from/to QuPath GeoJSON, NIfTI and instance label images
- ``gui [PATH] [--sample ...]``  start napari with the plugin's widgets (and a sample)

Errors a user caused print one clear line and exit with status 2; nothing here imports Qt at import time.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from napari_medseg import __version__

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("napari_medseg.cli.convert", "convert a slide or volume to a chunked NGFF zarr pyramid"),
    "train": ("napari_medseg.cli.train", "fine-tune a UNet / Swin-UNet (optionally Mean Teacher)"),
    "distil": ("napari_medseg.cli.distil", "distil for deployment: a trained model teaches a light, fast student"),
    "predict": ("napari_medseg.cli.predict", "tiled prediction of slides or volumes into NGFF zarr"),
    "rank": ("napari_medseg.cli.rank", "where to paint next: rank an image's regions by the model's uncertainty"),
    "explain": ("napari_medseg.cli.explain", "where the model looks in a region: Grad-CAM, attention-gate or "
                "transformer attention maps"),
    "export": ("napari_medseg.cli.export", "export a model as a bioimage.io package, ONNX or TorchScript"),
    "models": ("napari_medseg.cli.models", "the model library: list, show, add and remove models by name"),
    "sample": ("napari_medseg.cli.sample", "write the sample slide or CT volume (with ground truth) to disk"),
    "measure": ("napari_medseg.cli.measure", "measure objects: a table per object, counts and densities per class"),
    "objects": ("napari_medseg.cli.objects", "objects in and out: QuPath GeoJSON, NIfTI, instance label images"),
    "gui": ("napari_medseg._napari.launch", "start napari with the napari-medseg widgets"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-medseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-medseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    argv = sys.argv[1:]
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Only the chosen subcommand's module is imported (it may import torch); others stay light.
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from napari_medseg.core.errors import MedsegError

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except MedsegError as e:
        print(f"napari-medseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-medseg {args.command}: interrupted", file=sys.stderr)
        return 130

