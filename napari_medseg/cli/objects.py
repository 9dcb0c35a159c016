"""``napari-medseg objects {import,export}``: objects in and out of other tools.

- ``objects import GEOJSON --like IMAGE --out labels.zarr|.tif``: QuPath detections (or annotations) rasterised
  into an instance label image on IMAGE's full-resolution grid, with the class of each object;
- ``objects export OBJECTS --geojson out.geojson``: objects as QuPath GeoJSON (2D);
- ``objects export OBJECTS --nifti out.nii.gz --like SOURCE``: a volume's objects as NIfTI in the geometry
  of SOURCE (the NIfTI file or DICOM series folder the objects were found in), for 3D Slicer / ITK-SNAP;
- ``objects export OBJECTS --dicom-seg out.dcm --like DICOM_FOLDER``: the objects' classes as a DICOM
  Segmentation referencing the series (one segment per class), for PACS, 3D Slicer and OHIF.

OBJECTS may also be a prediction zarr whose objects were not found: ``--nifti`` / ``--dicom-seg`` then write
its semantic labels (one value per class), ``--geojson`` each connected region of each class as one object.

See docs/objects.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_medseg.core.errors import MedsegError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="QuPath GeoJSON -> instance labels (.zarr or .tif)")
    imp.add_argument("geojson", type=Path, help="GeoJSON of polygon objects (QuPath: Export objects as GeoJSON)")
    imp.add_argument("--like", required=True, type=Path, help="the image the objects belong to (sets the grid)")
    imp.add_argument("--out", required=True, type=Path, help="labels.zarr (NGFF labels 'objects') or labels.tif")
    imp.add_argument("--classes", type=Path, default=None,
                     help="class file (JSON) fixing the class values; default: the classes found in the file")
    imp.add_argument("--add-classes", action="store_true", help="with --classes: add classes the file has extra")
    imp.add_argument("--default-class", default=None, help="the class of unclassified features")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    exp = sub.add_parser("export", help="instance labels -> QuPath GeoJSON or NIfTI")
    exp.add_argument("objects", type=Path, help="instance labels: NAME.prediction.zarr, TIFF, PNG or NIfTI")
    g = exp.add_mutually_exclusive_group(required=True)
    g.add_argument("--geojson", type=Path, help="write QuPath GeoJSON (2D objects)")
    g.add_argument("--nifti", type=Path, help="write NIfTI (3D objects; needs --like)")
    g.add_argument("--dicom-seg", type=Path, help="write DICOM-SEG, one segment per class (needs --like, a DICOM "
                                                   "series folder)")
    exp.add_argument("--like", type=Path, default=None,
                     help="the source image: its geometry for --nifti; for --geojson, the slide whose level the "
                          "objects lie on (coordinates scaled to its full resolution)")
    exp.add_argument("--classes", type=Path, default=None, help="class file (JSON: names, colors)")
    exp.add_argument("--components", action="store_true",
                     help="OBJECTS is a semantic label map: each connected region of each value is one object")


def _import(args: argparse.Namespace) -> int:
    from napari_medseg.cli.measure import load_schema, names_and_colors
    from napari_medseg.io.reader import open_image
    from napari_medseg.objects.files import write_objects
    from napari_medseg.objects.geojson import read_geojson_classes

    out = args.out
    if not out.name.lower().endswith((".zarr", ".tif", ".tiff")):
        raise MedsegError(f"{out}: name the output .zarr or .tif.")
    if out.exists() and not args.overwrite:
        raise MedsegError(f"{out} already exists; pass --overwrite or choose another --out.")
    schema = load_schema(args.classes)
    image = open_image(args.like, kind="image")
    if image.spatial_dims != 2:
        raise MedsegError(f"{args.like}: GeoJSON objects are 2D; the image is {image.spatial_dims}D.")
    start = list(schema.names) if schema is not None else ["background"]
    add = args.add_classes or schema is None
    objects, names = read_geojson_classes(args.geojson, image.shape, start, add_classes=add,
                                          default_class=args.default_class)
    if out.exists():
        from napari_medseg.io.ngff_write import remove_zarr

        remove_zarr(out) if out.is_dir() else out.unlink()
    class_names, colors = names_and_colors([names[k] for k in sorted(names)], schema)
    unit = "micrometer" if image.unit == "micrometer" else None
    write_objects(out, objects, class_names=class_names, colors=colors,
                  pixel_size=image.pixel_size if unit else None, unit=unit)
    print(f"wrote {out} ({objects.n} objects)")
    return 0


def _semantic_prediction(path: Path) -> list[str] | None:
    """The class names of a napari-medseg prediction zarr that holds no objects yet (only its semantic labels),
    else None."""
    import json

    from napari_medseg.objects.tiled import PREDICTION_MANIFEST

    mf = path / PREDICTION_MANIFEST
    if not path.is_dir() or not mf.is_file() or (path / "labels" / "objects").is_dir():
        return None
    try:
        classes = json.loads(mf.read_text()).get("classes") or {}
        return [str(n) for n in classes.get("names", [])] or None
    except (OSError, ValueError, AttributeError):
        return None


def _export(args: argparse.Namespace) -> int:
    from napari_medseg.cli.measure import check_suffix, level_of, load_schema, names_and_colors
    from napari_medseg.objects.files import read_objects

    semantic = _semantic_prediction(args.objects)
    if semantic is not None and not args.components and (args.nifti or args.dicom_seg):
        return _export_semantic(args, semantic)
    if semantic is not None and not args.components:
        # a semantic prediction as GeoJSON: its class values are not object ids; each region is one object
        print(f"{args.objects} holds no objects yet (napari-medseg predict --instances-only finds them): each "
              "connected region of each class is exported as one object")
        args.components = True
    of = read_objects(args.objects, components=args.components)
    names, colors = names_and_colors(semantic or of.class_names, load_schema(args.classes))
    if args.geojson is not None:
        from napari_medseg.objects.geojson import write_geojson

        check_suffix(args.geojson, (".geojson", ".json"), "GeoJSON")
        scale = 1.0
        if args.like is not None:
            from napari_medseg.io.reader import open_image

            image = open_image(args.like, kind="image")
            scale = image.level_downsample(level_of(image, of.objects.labels.shape, str(args.objects)))[-1]
        write_geojson(args.geojson, of.objects, class_names=names, colors=colors, scale=scale)
        print(f"wrote {args.geojson} ({of.objects.n} objects)")
        return 0
    if args.like is None:
        raise MedsegError(f"--{'nifti' if args.nifti else 'dicom-seg'} needs --like SOURCE: the NIfTI file or DICOM "
                          "folder the objects belong to.")
    if args.dicom_seg is not None:
        from napari_medseg.objects.dicom_seg import write_dicom_seg

        check_suffix(args.dicom_seg, (".dcm",), "DICOM-SEG")
        write_dicom_seg(of.objects, args.dicom_seg, like=args.like, class_names=names, colors=colors)
        print(f"wrote {args.dicom_seg} ({len(names) - 1} segments, {of.objects.n} objects)")
        return 0
    from napari_medseg.objects.files import write_objects

    check_suffix(args.nifti, (".nii", ".nii.gz"), "NIfTI")
    write_objects(args.nifti, of.objects, class_names=names, like=args.like)
    print(f"wrote {args.nifti} ({of.objects.n} objects)")
    return 0


def _export_semantic(args: argparse.Namespace, class_names: list[str]) -> int:
    """A prediction's semantic labels (one value per class, no objects) as a NIfTI label map or a DICOM-SEG."""
    import zarr

    from napari_medseg.cli.measure import check_suffix, load_schema, names_and_colors

    if args.like is None:
        raise MedsegError(f"--{'nifti' if args.nifti else 'dicom-seg'} needs --like SOURCE: the NIfTI file or DICOM "
                          "folder that was predicted.")
    labels = zarr.open_group(str(args.objects), mode="r")["labels/prediction/0"][...]
    names, colors = names_and_colors(class_names, load_schema(args.classes))
    what = f"the semantic prediction, classes {', '.join(names[1:])}"
    if args.dicom_seg is not None:
        from napari_medseg.objects.dicom_seg import write_dicom_seg

        check_suffix(args.dicom_seg, (".dcm",), "DICOM-SEG")
        write_dicom_seg(labels, args.dicom_seg, like=args.like, class_names=names, colors=colors)
        print(f"wrote {args.dicom_seg} ({what})")
        return 0
    from napari_medseg.objects.volumes_out import write_nifti_labels

    check_suffix(args.nifti, (".nii", ".nii.gz"), "NIfTI")
    write_nifti_labels(labels, args.nifti, like=args.like)
    print(f"wrote {args.nifti} ({what}; each voxel holds its class value)")
    return 0


def run(args: argparse.Namespace) -> int:
    return _import(args) if args.action == "import" else _export(args)
