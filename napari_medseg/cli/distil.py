"""``napari-medseg distil TEACHER (--image IMG --labels LABELS | --data DIR ...) --out DIR``: distil for deployment.

A trained model (TEACHER: a checkpoint, a bioimage.io package of a napari-medseg architecture, or a library name)
teaches a light student (``light_unet`` unless ``--model`` says otherwise) on every pixel of the same images,
beside the painted labels (``training.distill``): the student predicts several times faster on a CPU and keeps
most of the teacher's accuracy (docs/deployment.md has the figures). Every ``napari-medseg train`` option works;
the defaults differ: ``--model light_unet`` and ``--unlabelled-ratio 1`` (as many windows from anywhere as
painted patches: where the teacher's knowledge is new to the student).
"""

from __future__ import annotations

import argparse

from napari_medseg.cli import train

STUDENT = "light_unet"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("teacher", metavar="TEACHER", help="the trained model: a checkpoint, a bioimage.io package of a "
                   "napari-medseg architecture, or a library name (napari-medseg models)")
    train.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from napari_medseg.sharing.library import find

    args.distill_from = str(find(args.teacher))
    if args.model is None:
        args.model = STUDENT
    if args.unlabelled_ratio is None:
        args.unlabelled_ratio = 1.0
    return train.run(args)
