"""``napari-medseg measure IMAGE OBJECTS --out table.csv``: one row per object (class, position, size, shape,
mean intensity per channel), optionally a summary (counts and densities per class, per drawn region) and
the objects as QuPath GeoJSON.

OBJECTS is an instance label image (``NAME.prediction.zarr`` from ``predict --instances``, a TIFF, PNG or
NIfTI; see ``napari_medseg.objects.files``) on the grid of one level of IMAGE. ``--components`` reads a
semantic label map instead (each connected region of each value one object). ``--regions`` takes a GeoJSON
of drawn regions (QuPath annotations): the summary then counts per region. See docs/objects.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.errors import GeometryMismatchError, MedsegError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="the image the objects were found in (slide, zarr, NIfTI, DICOM folder)")
    p.add_argument("objects", type=Path, help="instance labels: NAME.prediction.zarr, TIFF, PNG or NIfTI")
    p.add_argument("--out", required=True, type=Path, help="the object table: .csv, .tsv or .parquet")
    p.add_argument("--summary", type=Path, default=None, help="counts and densities per class (and region)")
    p.add_argument("--regions", type=Path, default=None, help="GeoJSON of drawn regions for the summary")
    p.add_argument("--geojson", type=Path, default=None, help="also write the objects as QuPath GeoJSON (2D)")
    p.add_argument("--pixel-size", type=float, nargs="+", default=None, metavar="SIZE",
                   help="the image's level-0 pixel size in --unit (one value, or one per axis), when the file "
                        "has none or a wrong one")
    p.add_argument("--unit", default=None, help="um or mm (default: mm for volumes, um for slides)")
    p.add_argument("--classes", type=Path, default=None, help="class file (JSON: names, colors) naming the classes")
    p.add_argument("--components", action="store_true",
                   help="OBJECTS is a semantic label map: each connected region of each value is one object")


def check_suffix(path: Path | None, suffixes: tuple[str, ...], what: str) -> None:
    if path is None:
        return
    if not path.name.lower().endswith(suffixes):
        raise MedsegError(f"{path}: name the {what} {' or '.join(suffixes)}.")
    if not path.parent.is_dir():
        raise MedsegError(f"{path.parent}: the folder for the {what} does not exist; create it first.")


def load_schema(path: Path | None) -> Any:
    if path is None:
        return None
    from napari_medseg.core.classes import ClassSchema

    try:
        return ClassSchema.from_json(path.read_text())
    except OSError as e:
        raise MedsegError(f"{path}: cannot read the class file ({e.strerror}).") from e
    except ValueError as e:
        raise MedsegError(f"{path}: not a class file (JSON with 'names' and 'colors'): {e}") from e


def names_and_colors(file_names: list[str], schema: Any) -> tuple[list[str], list[str]]:
    from napari_medseg.core.classes import DEFAULT_COLORS

    if schema is not None:
        names, colors = list(schema.names), list(schema.colors)
    else:
        names, colors = list(file_names), []
    colors += [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(colors), len(names))]
    return names, colors


def level_of(image: Any, shape: tuple[int, ...], what: str) -> int:
    """The level of ``image`` whose spatial shape is ``shape``."""
    for i in range(len(image.levels)):
        if image.level_shape(i) == tuple(shape):
            return i
    shapes = ", ".join(str(image.level_shape(i)) for i in range(len(image.levels)))
    raise GeometryMismatchError(f"{what} has shape {tuple(shape)}, which is no level of the image ({shapes}); "
                                "give the image the objects were found in.")


def regions_array(path: Path, shape: tuple[int, ...], offset: tuple[float, float], scale: float
                  ) -> tuple[np.ndarray, dict[int, str]]:
    """Drawn regions of a GeoJSON rasterised on the objects' grid, and their names."""
    from napari_medseg.objects.geojson import feature_class, feature_polygons, load_features, rasterize

    if len(shape) != 2:
        raise MedsegError("--regions (GeoJSON) applies to 2D objects only.")
    reg = np.zeros(shape, np.int32)
    names: dict[int, str] = {}
    for k, f in enumerate(load_features(path)):
        polys = feature_polygons(f, f"{path}, feature {k + 1}")
        if polys is None:
            continue
        v = len(names) + 1
        reg[rasterize(polys, shape, offset, scale)] = v
        props = f.get("properties") or {}
        names[v] = str(props.get("name") or feature_class(f) or f"region {v}")
        if list(names.values()).count(names[v]) > 1:
            names[v] = f"{names[v]} {v}"
    if not names:
        raise MedsegError(f"{path}: holds no polygon regions; draw the regions as polygons (QuPath annotations).")
    return reg, names


def run(args: argparse.Namespace) -> int:
    from napari_medseg.io.reader import open_image
    from napari_medseg.objects.files import read_objects
    from napari_medseg.objects.geojson import write_geojson
    from napari_medseg.objects.measure import class_name_of, measure_objects, summarize, write_table

    check_suffix(args.out, (".csv", ".tsv", ".parquet"), "table")
    check_suffix(args.summary, (".csv", ".tsv", ".parquet"), "summary")
    check_suffix(args.geojson, (".geojson", ".json"), "GeoJSON")
    if args.regions is not None and args.summary is None:
        raise MedsegError("--regions needs --summary (the per-region counts go there).")
    schema = load_schema(args.classes)
    image = open_image(args.image, kind="image")
    of = read_objects(args.objects, components=args.components)
    labels = of.objects.labels
    level = level_of(image, labels.shape, f"{args.objects}")
    names, colors = names_and_colors(of.class_names, schema)
    unit = args.unit or ("mm" if image.unit == "millimeter" else "um")
    px = None
    if args.pixel_size is not None:
        v = np.broadcast_to(np.asarray(args.pixel_size, float), (labels.ndim,)) if len(args.pixel_size) == 1 \
            else np.asarray(args.pixel_size, float)
        if v.size != labels.ndim or np.any(v <= 0):
            raise MedsegError(f"--pixel-size needs one positive value or {labels.ndim} (one per axis).")
        px = v * np.asarray(image.level_downsample(level))
    table = measure_objects(labels, of.objects.classes, image=image, pixel_size=px, unit=unit, class_names=names,
                            level=level)
    write_table(table, args.out)
    print(f"wrote {args.out} ({len(table)} objects)")
    down = image.level_downsample(level)
    if args.geojson is not None:
        write_geojson(args.geojson, of.objects, table=table, class_names=names, colors=colors, scale=down[-1])
        print(f"wrote {args.geojson}")
    if args.summary is not None:
        regions, region_names = None, None
        if args.regions is not None:
            regions, region_names = regions_array(args.regions, labels.shape, (0.0, 0.0), down[-1])
        present = sorted({int(c) for c in of.objects.classes[1:]})
        listed = [class_name_of(v, names) for v in (schema.object_values if schema is not None and schema.objects else present)]
        summary = summarize(table, regions=regions, region_names=region_names, class_names=listed)
        write_table(summary, args.summary)
        print(f"wrote {args.summary}")
    return 0
