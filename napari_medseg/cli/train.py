"""``napari-medseg train``: fine-tune from an image and a label store, from folders of image/mask pairs
(``images/``, ``masks/``), or from NIfTI pairs; writes the checkpoints and a JSON log of the run.

Examples::

    napari-medseg train --data ../shared/data/monuseg_train --label-fraction 0.05 --steps 500 --out run1
    napari-medseg train --images vols/ --masks segs/ --spatial-dims 3 --patch-size 64 --labelled-cases 8
    napari-medseg train --image slide.ome.zarr --labels slide.labels.zarr --time-budget 600 --out run2
    napari-medseg train --image demo/sample-slide.ome.tif --labels demo/sample-slide-labels.ome.tif \
        --classes demo/slide_classes.json --steps 20 --out demo/run

``--objects nucleus`` marks classes as objects to count (nuclei, cells, lesions): the checkpoint gets the class
"object boundary", derived from the painting (the rim of each painted or masked object), so the model learns to
tell touching objects apart (``napari_medseg.objects.boundaries``).

The checkpoint records the class names and colours (``--classes``; else a label store's or an NGFF label group's
own; else "class 1", "class 2" ...) and the image's pixel size (from its metadata, e.g. an OME-TIFF's
PhysicalSizeX/Y).

The trained model (best, else last) lands in the model library (``napari-medseg models``) as ``--model-name``
(default: the class names and the date) unless ``--no-library``; ``--init`` also takes a library name.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from napari_medseg.cli.train_options import add_option_groups, option_fields
from napari_medseg.core.classes import DEFAULT_COLORS, ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.events import drive
from napari_medseg.core.files import write_json_atomic

log = logging.getLogger(__name__)
#: keys of an NGFF ``image-label`` property that may hold a class name (the label store writes "class")
NAME_KEYS = ("class", "name", "label-name", "label_name", "label")


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.replace("x", ",").split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers like 256 or 64,128,128, got {s!r}") from e


def _fraction_or_count(s: str) -> int | float:
    v = float(s)
    return int(v) if v >= 1 and v.is_integer() else v


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("data (one of)")
    src.add_argument("--data", metavar="DIR", help="folder with images/ and masks/ (same file names)")
    src.add_argument("--images", metavar="DIR", help="folder of images (PNG, TIFF, NIfTI ...), with --masks")
    src.add_argument("--masks", metavar="DIR", help="folder of dense masks (0 = background) named as the images")
    src.add_argument("--image", metavar="PATH", help="one image (slide, zarr, NIfTI), with --labels; co-registered "
                     "files joined by commas (t1.nii.gz,t2.nii.gz) are stacked as its channels (docs/multimodal.md)")
    src.add_argument("--labels", metavar="PATH", help="its label store (or a label image: 0 unannotated, 1 "
                     "background, 2.. classes)")
    src.add_argument("--classes", metavar="NAMES|FILE",
                     help="the classes after background, stored in the checkpoint: names, comma-separated, each "
                          "with an optional colour (stroma=#009e73,gland=#e69f00), or a class file (JSON with "
                          "'names', background first, and 'colors'; a .json path, like the slide_classes.json `napari-medseg "
                          "sample` writes). Default: a label store's or NGFF label group's own classes, else "
                          "'class 1', 'class 2' ...")
    src.add_argument("--objects", nargs="+", metavar="NAME",
                     help="classes whose regions are objects to count and measure (nuclei, cells, lesions): adds "
                          "the class 'object boundary', learnt from the rims of the painted objects, so touching "
                          "objects can be told apart (e.g. --objects nucleus; default: a label store's own)")
    src.add_argument("--foreground", type=_ints, help="raw mask value of each class, in order (default: every "
                     "non-zero value)")
    src.add_argument("--limit", type=int, help="use only the first N pairs")
    sp = p.add_argument_group("simulated sparse annotation (folders only)")
    sp.add_argument("--label-fraction", type=float, default=None,
                    help="keep about this fraction of the pixels of each labelled case (the rest is unlabelled)")
    sp.add_argument("--sparse", choices=("scribbles", "pixels"), default="scribbles",
                    help="how the kept pixels are drawn (default scribbles)")
    sp.add_argument("--labelled-cases", type=_fraction_or_count, default=None, metavar="N|F",
                    help="keep labels on N cases (or a fraction F); the other cases are unlabelled images")
    m = p.add_argument_group("model and training")
    m.add_argument("--config", metavar="JSON", help="a TrainConfig JSON file; the options below override it")
    m.add_argument("--model", help="architecture, from its small preset: unet, attention_unet, unetpp, light_unet, "
                   "fusion_unet, transunet, unetr, nnformer, swin_unet, swin_unetr (docs/models.md)")
    m.add_argument("--spatial-dims", type=int, choices=(2, 3), help="2 or 3 (default: the data's)")
    m.add_argument("--channels", type=_ints, help="feature widths per level, e.g. 16,32,64,128")
    m.add_argument("--act", choices=("prelu", "relu"), help="U-Net activation: prelu (default) or relu, the "
                   "quantisation-friendly one for INT8 / ONNX Runtime prediction (docs/deployment.md)")
    m.add_argument("--patch-size", type=_ints, help="patch size, e.g. 256 or 64,128,128")
    m.add_argument("--batch-size", type=int)
    m.add_argument("--steps", type=int)
    m.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop after this long")
    m.add_argument("--lr", type=float)
    m.add_argument("--semi", choices=("auto", "none", "pseudo_label", "mean_teacher"), default=None,
                   help="also learn from the unpainted pixels: confidence-thresholded pseudo-labels or Mean Teacher "
                        "consistency. Each costs a teacher forward pass per step (1.2-1.3x the step time). At equal "
                        "time on MoNuSeg (3 seeds) pseudo-labels gave +4.3 Dice with paint in a few windows of a few "
                        "images and -0.3 to -0.65 with scribbles on every image (benchmarks/RESULTS.md). Default "
                        "auto (without --config): pseudo-labels while the paint spans at most 40 training patches; "
                        "beyond, labels with the gated CRF loss (2D strokes; --crf-weight) or labels only; the "
                        "run's first line says which and why")
    m.add_argument("--mean-teacher", action=argparse.BooleanOptionalAction, default=None,
                   help="same as --semi mean_teacher (--no-mean-teacher: --semi none)")
    m.add_argument("--predict-with", choices=("student", "ema"), default=None,
                   help="weights the checkpoints predict with: their running average (ema, the default: "
                        "+0.3 / +0.8 Dice over the last weights in 100 s runs, level in 300 s runs; no extra forward "
                        "pass) or the "
                        "last ones (student)")
    m.add_argument("--uncertainty-mask", action=argparse.BooleanOptionalAction, default=None,
                   help="mask the consistency by the teacher's uncertainty (UA-MT)")
    m.add_argument("--consistency-weight", type=float, help="Mean Teacher's weight (default 0.1)")
    m.add_argument("--pl-threshold", type=float, help="pseudo-labels: the confidence they need (default 0.9)")
    m.add_argument("--crf-weight", type=float,
                   help="gated CRF loss: like-looking neighbours take the same class (default: 1 when --semi "
                        "auto finds 2D strokes spread over the images, where at 300 s it gained +0.9 Dice on 1 %% "
                        "MoNuSeg scribbles and +2.0 on 5 %% ISBI ones; off otherwise; 0 keeps it off under auto too; "
                        "docs/training.md)")
    m.add_argument("--loss", choices=("ce_dice", "focal_dice", "ce"))
    m.add_argument("--level", type=int, help="pyramid level to train at")
    m.add_argument("--pixel-size", type=float, help="train at the level with this pixel size (overrides --level)")
    m.add_argument("--val-fraction", type=float)
    m.add_argument("--val-every", type=int)
    m.add_argument("--seed", type=int, default=None)
    m.add_argument("--init", metavar="CKPT|NAME", help="start from this checkpoint, state dict or bioimage.io package "
                   "of a napari-medseg architecture, or from a model of the library by name (napari-medseg models)")
    m.add_argument("--restart", action="store_true",
                   help="start afresh even if --out already holds last.pt (by default a rerun resumes from it)")
    add_option_groups(p)
    d = p.add_argument_group("device")
    d.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    d.add_argument("--threads", type=int, help="CPU threads for torch")
    d.add_argument("--workers", type=int, help="data loader threads")
    d.add_argument("--no-amp", action="store_true", help="train in float32 throughout (default: mixed precision "
                   "on a GPU, bfloat16 autocast on a CPU that computes it natively: 1.2-1.4x the steps)")
    lib = p.add_argument_group("model library (napari-medseg models)")
    lib.add_argument("--model-name", metavar="NAME", help="the trained model's name in the model library "
                     "(letters, digits, - _ .; default: the class names and the date; a taken name gets -2, -3 ...)")
    lib.add_argument("--no-library", action="store_true", help="do not add the trained model to the model library")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the checkpoints and train_log.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace, spatial_dims: int) -> Any:
    from napari_medseg.training.config import TrainConfig

    base = TrainConfig()
    if args.config:
        try:
            base = TrainConfig.from_json(Path(args.config).read_text())
        except OSError as e:
            raise MedsegError(f"could not read the config {args.config} ({e.strerror})") from e
    model = base.model
    mkw: dict[str, Any] = {}
    if args.model and args.model != model.name:  # another architecture starts from its own "small" preset
        from napari_medseg.models import preset

        model = preset(args.model)
    mkw["spatial_dims"] = args.spatial_dims or (base.model.spatial_dims if args.config else spatial_dims)
    if args.channels:
        mkw["channels"] = args.channels
    if args.act:
        mkw["act"] = args.act
    model = model.replace(**mkw)
    kw: dict[str, Any] = {"model": model, "checkpoint_dir": str(Path(args.out))}
    for opt, field_ in (("patch_size", "patch_size"), ("batch_size", "batch_size"), ("steps", "steps"),
                        ("time_budget", "time_budget_s"), ("lr", "lr"), ("semi", "semi"),
                        ("predict_with", "eval_model"), ("pl_threshold", "pl_threshold"), ("crf_weight", "crf_weight"),
                        ("uncertainty_mask", "uncertainty_mask"), ("consistency_weight", "consistency_weight"),
                        ("loss", "loss"), ("level", "level"), ("pixel_size", "pixel_size"),
                        ("val_fraction", "val_fraction"), ("val_every", "val_every"), ("seed", "seed"),
                        ("device", "device"), ("threads", "threads"), ("workers", "num_workers"),
                        ("model_name", "model_name"), *option_fields()):
        v = getattr(args, opt)
        if v is not None:
            kw[field_] = v
    if args.mean_teacher is not None and args.semi is None:
        kw["semi"] = "mean_teacher" if args.mean_teacher else "none"
    elif args.semi is None and not args.config:
        kw["semi"] = "auto"  # pseudo-labels where the paint is localised (TrainConfig.resolve_semi)
    if args.no_library:
        kw["library"] = False
    if args.no_amp:
        kw["amp"] = False
    if args.time_budget is not None and args.steps is None:
        kw["steps"] = 10**9  # the time budget decides (the schedule follows the elapsed share of it)
    return base.replace(**kw)


def _classes(value: str | None, k: int) -> ClassSchema | None:
    """``--classes``: a class file (JSON, background first) or comma-separated names with optional colours
    (``name=#rrggbb``), checked to cover the ``k`` classes the labels hold; None without the option."""
    if not value:
        return None
    if value.lower().endswith(".json"):
        schema = _class_file(Path(value))
    else:
        parts = [n.strip() for n in value.split(",") if n.strip()]
        names, colors = [], []
        for part in parts:
            name, _, color = part.partition("=")
            names.append(name.strip())
            colors.append(color.strip() or None)
        if names and names[0].lower() == "background":
            bg_color = colors[0]
            names, colors = names[1:], colors[1:]
        else:
            bg_color = None
        colors = [bg_color, *colors]
        names = ["background", *names]
        schema = ClassSchema(tuple(names), tuple(c or DEFAULT_COLORS[i % len(DEFAULT_COLORS)]
                                                 for i, c in enumerate(colors)) if any(colors) else ())
    if schema.n_classes - 1 < k:
        raise MedsegError(f"--classes names {schema.n_classes - 1} classes but the labels hold {k}")
    return schema


def _with_objects(schema: ClassSchema, objects: list[str] | None, where: str = "") -> ClassSchema:
    """``--objects``: ``schema`` with those object classes (and the boundary class); checked names."""
    if not objects:
        return schema
    names = [o.strip() for part in objects for o in part.split(",") if o.strip()]
    for o in names:
        if o not in schema.names:
            raise MedsegError(f"--objects {o!r} is not one of the classes {list(schema.names[1:])}{where}; "
                              "name a class (--classes names them)")
        if o == schema.names[0]:
            raise MedsegError(f"--objects {o!r} is the background: name the classes to count, e.g. nuclei")
    return schema.with_objects(list(dict.fromkeys(names)))


def _keep_objects(new: ClassSchema, old: ClassSchema) -> ClassSchema:
    """``new`` (from ``--classes``) with the object classes of ``old`` (a label store's) when it names them."""
    if new.objects or not old.objects or not all(o in new.names for o in old.objects):
        return new
    return new.with_objects(list(old.objects))


def _class_file(path: Path) -> ClassSchema:
    """A class file: ``{"names": [background, ...], "colors": ["#rrggbb", ...]}`` (other keys ignored)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise MedsegError(f"could not read the class file {path} ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedsegError(f"the class file {path} is not JSON ({e})") from e
    try:
        return ClassSchema.from_dict({k: doc[k] for k in ("names", "colors", "objects") if k in doc}
                                     if isinstance(doc, dict) else doc)
    except MedsegError as e:
        raise MedsegError(f"the class file {path}: {e}") from e


def _ngff_label_classes(path: Path, k: int) -> ClassSchema | None:
    """Class names and colours of an NGFF label group (``image-label`` ``properties`` and ``colors``) whose values
    follow the label-store convention (0 not annotated, 1 background, 2.. classes), for the ``k`` classes its
    values hold; None when it names no class and gives no colour."""
    import zarr

    from napari_medseg.io.ngff_meta import ome_attrs

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as e:  # not a zarr group: a label image without class metadata
        log.debug("%s: no NGFF label attributes (%s)", path, e)
        return None
    il = ome_attrs(attrs).get("image-label")
    if not isinstance(il, dict):
        return None
    names: dict[int, str] = {}
    for prop in il.get("properties") or []:
        if not isinstance(prop, dict):
            continue
        name = next((prop[key] for key in NAME_KEYS if isinstance(prop.get(key), str) and prop[key].strip()), None)
        try:
            if name is not None:
                names[int(prop["label-value"])] = name.strip()
        except (KeyError, TypeError, ValueError):
            continue
    colors: dict[int, str] = {}
    for c in il.get("colors") or []:
        try:
            rgba = [int(v) for v in c["rgba"]]
            colors[int(c["label-value"])] = "#" + "".join(f"{min(max(v, 0), 255):02x}" for v in rgba[:3])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    n = max([k + 1, *(v for v in (*names, *colors) if v >= 1)])  # store values 1..n: background and n - 1 classes
    n = min(n, 254)
    if not any(1 <= v <= n for v in (*names, *colors)):
        return None
    default = ClassSchema.default(max(n, 2))
    out_names = [names.get(v, default.names[v - 1]) for v in range(1, n + 1)]
    out_colors = [colors.get(v, default.colors[v - 1]) for v in range(1, n + 1)]
    if len(set(out_names)) != len(out_names):
        log.warning("%s: the label group's class names %s repeat; using generic names", path, out_names)
        out_names = list(default.names)
    return ClassSchema(tuple(out_names), tuple(out_colors))


def _data(args: argparse.Namespace) -> Any:
    from napari_medseg.training import datasets
    from napari_medseg.training.data import TrainingData, TrainingItem

    chosen = [bool(args.data), bool(args.images or args.masks), bool(args.image or args.labels)]
    if sum(chosen) != 1:
        raise MedsegError("give exactly one data source: --data DIR, --images DIR --masks DIR, or "
                          "--image PATH --labels PATH")
    if args.image or args.labels:
        if not (args.image and args.labels):
            raise MedsegError("--image and --labels go together")
        if args.label_fraction or args.labelled_cases:
            raise MedsegError("--label-fraction and --labelled-cases simulate sparse labels from folders of "
                              "dense masks; a label store is already sparse")
        img = _read_image(args.image)
        labels, classes = _open_labels(args.labels, img)
        if args.classes:
            store = classes
            given = _classes(args.classes, 0) or classes
            classes = _keep_objects(given, store)
            if classes.n_classes < store.n_classes:
                raise MedsegError(f"--classes names {given.n_classes - 1} classes but the labels hold "
                                  f"{store.n_classes - 1} ({', '.join(store.names[1:])})")
        elif classes == ClassSchema.default(classes.n_classes):
            _say_generic(args.labels, classes)
        classes = _with_objects(classes, args.objects)
        return TrainingData([TrainingItem(img, labels, name=Path(args.image).name)], classes)
    if args.data:
        pairs = datasets.load_folder(args.data, foreground=args.foreground, limit=args.limit)
    else:
        if not (args.images and args.masks):
            raise MedsegError("--images and --masks go together")
        pairs = datasets.load_pairs(args.images, args.masks, foreground=args.foreground, limit=args.limit)
    k = max(int(p.mask.max(initial=0)) for p in pairs)
    classes = _classes(args.classes, k)
    if classes is None:
        _say_generic(args.data or args.masks, ClassSchema.default(max(k, 1) + 1))
    if args.objects:
        classes = _with_objects(classes or ClassSchema.default(max(k, 1) + 1), args.objects,
                                "" if args.classes else " (name them with --classes)")
    sparse = "dense" if args.label_fraction is None else args.sparse
    return datasets.make_training_data(pairs, classes=classes, sparse=sparse,
                                       fraction=args.label_fraction or 1.0, cases=args.labelled_cases,
                                       seed=args.seed or 0)


def _read_image(path: str) -> Any:
    """``--image``: one file, or co-registered files joined by commas stacked as channels (``io/stack.py``)."""
    from napari_medseg.training import datasets

    if "," not in path or Path(path).exists():
        return datasets.read_image(path)
    import numpy as np

    from napari_medseg.io.stack import split_paths, stack_sources

    parts = [datasets.read_image(p) for p in split_paths(path)]
    src = stack_sources(parts)
    if all(isinstance(lv, np.ndarray) for p in parts for lv in p.levels):  # small files: keep them in memory
        src.levels = [np.asarray(lv) for lv in src.levels]
    return src


def _say_generic(where: str, classes: ClassSchema) -> None:
    print(f"note: {where} names no classes; the checkpoint calls them {', '.join(classes.names[1:])} "
          "(--classes NAMES or a class file names and colours them)", file=sys.stderr)


def _open_labels(path: str, image: Any) -> tuple[Any, ClassSchema]:
    """A label store (a folder made by the Annotate widget), else a label image read like a mask."""
    from napari_medseg.core.errors import GeometryMismatchError
    from napari_medseg.training import datasets

    p = Path(path)
    if p.is_dir():
        try:
            from napari_medseg.labels.store import LabelStore

            store = LabelStore.open(p, image=image, mode="r")
            return store, store.classes
        except GeometryMismatchError:
            raise
        except (MedsegError, OSError, KeyError, ValueError) as e:
            log.info("%s is not a label store (%s); reading it as a label image", p, e)
    arr = datasets.read_mask(p, image)
    k = max(1, int(arr.max(initial=0)) - 1)
    return arr, (_ngff_label_classes(p, k) if p.is_dir() else None) or ClassSchema.default(k + 1)


def run(args: argparse.Namespace) -> int:
    from napari_medseg.training import TrainConfig  # noqa: F401  (fail early on a broken install)
    from napari_medseg.training.events import (
        CheckpointEvent,
        StartEvent,
        StepEvent,
        ValidationEvent,
        WarningEvent,
    )
    from napari_medseg.training.loop import train

    out = Path(args.out)
    if args.init is not None:  # a file, or the name of a model in the library
        from napari_medseg.sharing.library import find

        args.init = str(find(args.init))
    data = _data(args)
    if getattr(args, "target_images", None):  # domain adaptation's unlabelled target domain (training/domain.py)
        from napari_medseg.training.domain import target_items

        data.items += target_items(args.target_images)
    cfg = _config(args, data.spatial_dims)
    out.mkdir(parents=True, exist_ok=True)
    if args.init is None and not args.restart and (out / "last.pt").is_file():
        # a rerun of the same command (after a crash or a kill) continues instead of overwriting last.pt
        args.init = str(out / "last.pt")
        print(f"resuming from {out / 'last.pt'} (--restart to start afresh)", file=sys.stderr)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps if cfg.steps < 10**9 else None, unit="step", dynamic_ncols=True,
                   file=sys.stderr)
    log_doc: dict[str, Any] = {"config": cfg.to_dict(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "data": {"items": [it.key for it in data.items], "classes": list(data.classes.names),
                                        "labelled": sum(it.labels is not None for it in data.items)},
                               "warnings": [], "validations": [], "steps": []}
    def show(ev: Any) -> None:
        if isinstance(ev, StepEvent):
            log_doc["steps"].append({k: v for k, v in ev.__dict__.items()})
            if bar is not None:
                bar.update(1)
                if ev.step % 10 == 0:
                    bar.set_postfix(loss=f"{ev.loss:.3f}", cons=f"{ev.loss_cons:.3f}")
        elif isinstance(ev, ValidationEvent):
            log_doc["validations"].append(_clean(ev.__dict__))
            msg = f"step {ev.step}: validation {ev.summary()}; Dice per class " + ", ".join(
                f"{k} {v:.3f}" for k, v in ev.dice_per_class.items() if not math.isnan(v))
            (bar.write(msg) if bar is not None else print(msg, file=sys.stderr))
        elif isinstance(ev, WarningEvent):
            log_doc["warnings"].append(ev.message)
            (bar.write(f"warning: {ev.message}") if bar is not None else print(f"warning: {ev.message}",
                                                                              file=sys.stderr))
        elif isinstance(ev, StartEvent):
            log_doc["start"] = _clean({k: v for k, v in ev.__dict__.items() if k != "norm"})
            log_doc["norm"] = ev.norm.to_dict() if ev.norm is not None else None
            msg = (f"training a {ev.model_summary} on {ev.device}: {ev.n_labelled} labelled and "
                   f"{ev.n_unlabelled} unlabelled images, {ev.n_val_patches} validation patches"
                   + (f"; unpainted pixels: {ev.semi_reason}" if ev.semi_reason else "")
                   + (f"; the pixels between close objects weigh {1 + ev.contact_weight:g}x (--contact-weight)"
                      if ev.contact_weight else ""))
            (bar.write(msg) if bar is not None else print(msg, file=sys.stderr))
        elif isinstance(ev, CheckpointEvent):
            log_doc.setdefault("checkpoints", []).append(ev.__dict__)

    gen = train(cfg, data, init=args.init)
    result = None
    try:
        result = drive(gen, show)
    except KeyboardInterrupt:
        gen.close()
        raise
    finally:
        if bar is not None:
            bar.close()
        log_doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if result is not None:
            log_doc["result"] = {"reason": result.reason, "steps": result.steps,
                                 "last_checkpoint": result.last_checkpoint, "best_checkpoint": result.best_checkpoint,
                                 "best_dice": result.best_dice, "elapsed_s": result.elapsed_s,
                                 "library_name": result.library_name, "library_path": result.library_path}
        try:  # on a full disk this must not replace the clear error that stopped training
            write_json_atomic(out / "train_log.json", _clean(log_doc), indent=1)
        except OSError as e:
            logging.getLogger(__name__).warning("could not write %s (%s)", out / "train_log.json", e.strerror or e)
    assert result is not None
    best = "n/a" if result.best_dice is None else f"{result.best_dice:.4f}"
    print(f"done ({result.reason}) after {result.steps} steps in {result.elapsed_s:.0f} s; best validation Dice "
          f"{best}; checkpoint {result.best_checkpoint or result.last_checkpoint}; log {out / 'train_log.json'}"
          + (f"; in the model library as {result.library_name}" if result.library_name else ""))
    return 0


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN -> None, tuples -> lists."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
