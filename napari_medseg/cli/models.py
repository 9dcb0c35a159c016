"""``napari-medseg models``: the model library (``napari_medseg.sharing.library``) from the command line.

    napari-medseg models [list] [--fits IMAGE] [--json]   the library's models, newest first (a table)
    napari-medseg models show NAME                         one model's card as JSON
    napari-medseg models add PATH [--name NAME]            add a checkpoint, bioimage.io package, .onnx / .ts
    napari-medseg models remove NAME                       delete a model from the (writable) library
    napari-medseg models folder                            the library folder, then any read-only extra ones

``--fits IMAGE`` keeps the models that take the image (its channels and dimensions; a 2D model fits a volume,
slice by slice), read from its metadata the way ``predict`` opens it. Library names work wherever a model file
does: ``predict NAME ...``, ``train --init NAME``.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from napari_medseg.core.errors import MedsegError

ACTIONS = ("list", "show", "add", "remove", "folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    ls = sub.add_parser("list", help="the library's models, newest first (the default action)")
    ls.add_argument("--fits", metavar="IMAGE", help="only the models that fit this image (channels, dimensions)")
    ls.add_argument("--json", action="store_true", help="print the entries as JSON")
    show = sub.add_parser("show", help="one model's card as JSON")
    show.add_argument("name")
    add = sub.add_parser("add", help="add a checkpoint, a bioimage.io package (.zip or folder) or an .onnx / .ts "
                                     "file (with its sidecar .json)")
    add.add_argument("path")
    add.add_argument("--name", help="its name in the library (letters, digits, - _ .; default: from the file)")
    add.add_argument("--description", default="", help="a line saying what the model is for")
    add.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    rm = sub.add_parser("remove", help="delete a model from the library")
    rm.add_argument("name")
    sub.add_parser("folder", help="print the library folder (models are added there), then the read-only ones")


def _image_fit(path: str) -> tuple[int, int]:
    """(channels, spatial dimensions) of the image at ``path``, read lazily (no pixels)."""
    from napari_medseg.io.reader import open_image

    src = open_image(path)
    return src.n_channels, src.spatial_dims


def _table(entries: list[Any]) -> str:
    def dice(e: Any) -> str:
        d = e.dice
        return "-" if d is None or math.isnan(d) else f"{d:.3f}"

    rows = [("NAME", "ARCHITECTURE", "DIMS", "CHANNELS", "CLASSES", "DICE", "DATE")]
    rows += [(e.name, e.architecture or e.kind, f"{e.spatial_dims}D" if e.spatial_dims else "?",
              str(e.in_channels or "?"), ", ".join(e.classes) or "-", dice(e), e.created[:10] or "-")
             for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    from napari_medseg.sharing import library

    action = args.action or "list"
    if action == "folder":
        folders = library.library_folders()
        print(folders[0])
        for f in folders[1:]:
            print(f"{f}\t(read-only)")
        return 0
    if action == "list":
        fits = getattr(args, "fits", None)
        channels = dims = None
        if fits:
            channels, dims = _image_fit(fits)
        entries = library.list_models(channels=channels, spatial_dims=dims)
        if getattr(args, "json", False):
            print(json.dumps([e.to_dict() for e in entries], indent=1))
        elif entries:
            print(_table(entries))
        else:
            where = " and ".join(str(f) for f in library.library_folders())
            what = f"that fits {fits} ({channels} channel(s), {dims}D)" if fits else "yet"
            print(f"no model {what} in the library ({where}); train one or add one with napari-medseg models add")
        return 0
    if action == "show":
        entry = _entry(library, args.name)
        print(json.dumps(entry.to_dict(), indent=1))
        return 0
    if action == "add":
        entry = library.add_file(args.path, args.name, overwrite=args.overwrite, description=args.description)
        print(f"added {entry.name}: {entry.summary()}\n  {entry.folder}")
        return 0
    if action == "remove":
        library.remove(args.name)
        print(f"removed {args.name}")
        return 0
    raise MedsegError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")  # pragma: no cover


def _entry(library: Any, name: str) -> Any:
    """The library entry called ``name``; otherwise ``find``'s error (the closest names, or why its card
    cannot be read)."""
    for e in library.list_models():
        if e.name == name:
            return e
    library.find(name)
    raise MedsegError(f"{name} is a file, not a model of the library; napari-medseg models list shows the names")
