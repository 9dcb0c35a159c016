"""Objects, not only pixels: instance segmentation of MoNuSeg nuclei trained from the same painting.

Trains with full labels and ``--objects nucleus`` (``training.run_training`` with the class schema
``with_objects(["nucleus"])``: every mask's nuclei get the ``object boundary`` rim, 2 px) for a time budget
(``--budget`` seconds, default 600 = the issue's 10-minute CPU budget, 2 torch threads), predicts each held-out
image whole with the library's predictor (``inference.run_predict`` from the checkpoint, read back with
``open_prediction``), turns the prediction into objects with ``objects.find_objects`` and scores them against
the ground-truth instances:

- ``aji`` (Kumar et al. 2017), ``pq`` (panoptic quality, IoU > 0.5), ``f1_50`` (detection F1 at IoU 0.5),
  ``count_error`` (|n_pred - n_gt| / n_gt), mean over the held-out images (``objects.metrics``);
- ``aji_watershed_baseline``: the classic alternative on the same model: distance-transform watershed
  (``objects.watershed_objects``) of the predicted foreground (nucleus + boundary);
- ``dice``: semantic Dice of that foreground against the mask.

Ground truth: the MoNuSeg masks in ``../shared/data/monuseg_train`` are binary (0/1) and touching nuclei are
merged in them, so the ground-truth instances are the masks' connected components; the scores compare like
with like (the training masks are merged the same way) but read lower than published AJIs on MoNuSeg's
instance annotations. The split is ``bench_semisup``'s (its ``setting_data``: 20 training images, 10 held out).

``instance_overhead`` and ``big_slide_rss_mb`` come from ``benchmarks/instances_slide.py`` (the whole-slide
objects pass against the semantic prediction of the same synthetic slide) with ``--slide-size`` > 0 (the issue's
slide: 50000); else null.

``--quick``: 60 s of training on 128 px patches, 3 held-out images (a smoke test: the model is far from
trained). ``--oracle``: no model; the held-out masks' own 3-class form goes through the same post-processing and
scoring (the recipe's ceiling). ``--contact-weight X`` trains with the separation weights between close objects
(``TrainConfig.contact_weight``, ``training/contact.py``; its default with object classes is 10, ``0`` turns it
off). ``--zoom Z`` predicts at that zoom (``inference.predict``'s ``zoom``); ``--zoom auto`` lets the predictor choose (``inference.zoom_estimate``:
a sample of the image against the objects' size the checkpoint records); ``--zoom per-image`` chooses each
image's zoom from the objects found in the whole image at zoom 1 (``objects.sizes.zoom_for``, the painted objects' median diameter that training records as
the reference). ``--checkpoint PATH`` scores a checkpoint kept from an earlier run (``--keep``) without training.
Last line: ``RESULT {"aji", "pq", "f1_50", "count_error",
"aji_watershed_baseline", "instance_overhead", "big_slide_rss_mb", "dice", ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_semisup import DATA, setting_data  # noqa: E402  (the same data loading and split)

from napari_medseg.core.classes import ClassSchema  # noqa: E402
from napari_medseg.inference.predictor import run_predict  # noqa: E402
from napari_medseg.inference.results import open_prediction  # noqa: E402
from napari_medseg.objects.instances import find_objects, watershed_objects  # noqa: E402
from napari_medseg.objects.metrics import aji, instance_scores  # noqa: E402
from napari_medseg.objects.sizes import median_diameter, zoom_for  # noqa: E402
from napari_medseg.training import run_training  # noqa: E402
from napari_medseg.training.config import TrainConfig  # noqa: E402
from napari_medseg.training.data import ItemView  # noqa: E402
from napari_medseg.training.datasets import make_training_data  # noqa: E402
from napari_medseg.training.object_sizes import painted_object_diameter  # noqa: E402

SCHEMA = ClassSchema(("background", "nucleus")).with_objects(["nucleus"])
MIN_SIZE = 10  # pixels: smaller objects and interior seeds are speckle (MoNuSeg nuclei are ~50-500 px at 40x)


def predict_image(ckpt: str, pair, out_dir: Path, device: str, zoom: float | str = 1.0,
                  used: dict | None = None) -> np.ndarray:
    """Prediction values of one whole held-out image by the library's predictor (from the checkpoint); ``used``
    gets the zoom the run used (``zoom="auto"``: the predictor's own choice)."""
    out = out_dir / f"{pair.name}.zarr"
    res = run_predict(pair.image, ckpt, out, window=(256, 256), overlap=0.25, tissue_mask=False, device=device,
                      amp=False, overwrite=True, zoom=zoom)
    if used is not None:
        used["zoom"] = res.stats.get("zoom", zoom)
    labels = open_prediction(out)[0]
    return np.asarray(labels.levels[0]).astype(np.uint8)


def image_zoom(zoom: str, ckpt: str, pair, work: Path, device: str, reference: float) -> float | str:
    """``--zoom``: the number given, ``auto`` (the predictor chooses: ``inference.zoom_estimate``), or with
    ``per-image`` the zoom that brings the median diameter of the objects found in the whole image at zoom 1 to
    ``reference`` (``objects.sizes.zoom_for``: within 0.5-2)."""
    if zoom == "auto":
        return zoom
    if zoom != "per-image":
        return float(zoom)
    found = find_objects(predict_image(ckpt, pair, work, device), SCHEMA, min_size=MIN_SIZE, min_seed=MIN_SIZE)
    return zoom_for(reference, median_diameter(found.labels, MIN_SIZE))


def score_image(pred: np.ndarray, mask: np.ndarray) -> dict:
    gt, _ = ndi.label(mask > 0)  # merged touching nuclei: the ground-truth instances are the components
    obj = find_objects(pred, SCHEMA, min_size=MIN_SIZE, min_seed=MIN_SIZE)
    fg = pred > 0  # nucleus + boundary
    ws = watershed_objects(fg, min_size=MIN_SIZE)
    s = instance_scores(gt, obj.labels)
    inter, total = float((fg & (mask > 0)).sum()), float(fg.sum() + (mask > 0).sum())
    return {"aji": s["aji"], "pq": s["pq"], "f1_50": s["f1_50"], "count_error": s["count_error"],
            "aji_watershed_baseline": aji(gt, ws.labels), "dice": 2 * inter / total if total else math.nan,
            "n_gt": int(s["n_gt"]), "n_pred": int(s["n_pred"]), "n_watershed": ws.n}


def slide_numbers(size: int, work: Path, threads: int) -> dict:
    """``instance_overhead`` and ``big_slide_rss_mb`` from ``instances_slide.run`` (the whole-slide objects pass
    against the semantic prediction of the same synthetic slide); every figure it gives is printed."""
    if size <= 0:
        print("slide numbers: --slide-size 0; reported as null")
        return {"instance_overhead": None, "big_slide_rss_mb": None}
    import instances_slide

    work.mkdir(parents=True, exist_ok=True)
    res = instances_slide.run(size, threads=threads, workdir=str(work))
    print("slide " + json.dumps(res), flush=True)
    return {"instance_overhead": res.get("instance_overhead"), "big_slide_rss_mb": res.get("big_slide_rss_mb")}


def oracle(root: Path) -> None:
    """The ceiling of the boundary-class recipe: ``find_objects`` on each held-out mask turned into the 3-class
    target training derives (``mark_dense_boundaries``, rims of 2 px), scored like a prediction. What a model
    that predicted its training target perfectly would reach, so the gap to it is the model's, not the
    post-processing's."""
    from napari_medseg.objects.boundaries import mark_dense_boundaries

    _, test_p, _, _ = setting_data("monuseg_5pct", root, quick=False)
    rows = []
    for p in test_p:
        mask = (np.asarray(p.mask) > 0).astype(np.uint8)
        row = {"image": p.name, **score_image(mark_dense_boundaries(mask, SCHEMA, width=2), mask)}
        rows.append(row)
        print("  " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    out = {k: mean(rows, k) for k in ("aji", "pq", "f1_50", "count_error", "aji_watershed_baseline", "dice")}
    print("RESULT " + json.dumps({**out, "oracle": True, "n_test": len(rows)}))


def mean(rows: list[dict], key: str) -> float | None:
    v = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
    return round(float(np.mean(v)), 4) if v else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds (default 600: 10 CPU minutes)")
    ap.add_argument("--quick", action="store_true", help="60 s of training, 3 held-out images")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slide-size", type=int, default=0,
                    help="side of the synthetic slide for instances_slide.run (0: skip the slide numbers)")
    ap.add_argument("--model", default="", help="a registry model's small preset (default: TrainConfig's UNet)")
    ap.add_argument("--class-weights", default="", help="comma-separated cross-entropy weights, background first "
                    "(background, nucleus, object boundary)")
    ap.add_argument("--stain-jitter", type=float, default=0.0, help="TrainConfig.stain_jitter (H&E augmentation)")
    ap.add_argument("--contact-weight", type=float, default=None,
                    help="TrainConfig.contact_weight (separation weights between close objects, training/contact.py; "
                         "default: TrainConfig's, 10 with object classes; 0: off)")
    ap.add_argument("--contact-radius", type=int, default=TrainConfig.contact_radius)
    ap.add_argument("--keep", default="", help="copy the trained checkpoint to this path")
    ap.add_argument("--checkpoint", default="", help="no training: score this checkpoint (one trained by this "
                    "benchmark, e.g. kept with --keep)")
    ap.add_argument("--zoom", default="1", help="prediction zoom (inference.predict's zoom): a number for every "
                    "held-out image, 'auto' (the predictor's choice from a sample of the image and the size the "
                    "checkpoint records), or 'per-image': each image at the zoom that brings the median diameter of the "
                    "objects found at zoom 1 to that of the training masks' objects (objects.sizes.zoom_for)")
    ap.add_argument("--oracle", action="store_true", help="no training: score the recipe on the held-out masks' own "
                    "3-class form (interior / 2-px boundary / background), its ceiling with a perfect model")
    args = ap.parse_args()
    root = Path(args.data)
    if not (root / "monuseg_train").is_dir():
        print(f"skipped: no MoNuSeg at {root / 'monuseg_train'} (../shared/data/monuseg_train: images/ and masks/)")
        print("RESULT " + json.dumps({k: None for k in ("aji", "pq", "f1_50", "count_error", "aji_watershed_baseline",
                                                       "instance_overhead", "big_slide_rss_mb")}))
        return
    if args.oracle:
        oracle(root)
        return
    torch.set_num_threads(args.threads)
    budget = 60.0 if args.quick else args.budget
    train_p, test_p, base, _ = setting_data("monuseg_5pct", root, quick=False)
    if args.quick:
        test_p = test_p[:3]
        base = base.replace(patch_size=(128,))  # 4x the steps of 256 in the short budget
    print(f"MoNuSeg: {len(train_p)} training images (full labels), {len(test_p)} held out; ground-truth instances "
          "= connected components of the binary masks (touching nuclei are merged in them)")
    data = make_training_data(train_p, classes=SCHEMA, sparse="dense")
    work = Path(tempfile.mkdtemp(prefix="bench_instances_"))
    if args.model:
        from napari_medseg.models import preset

        base = base.replace(model=preset(args.model))
    if args.class_weights:
        base = base.replace(class_weights=tuple(float(v) for v in args.class_weights.split(",")))
    if args.stain_jitter:
        base = base.replace(stain_jitter=args.stain_jitter)
    base = base.replace(contact_radius=args.contact_radius)
    if args.contact_weight is not None:
        base = base.replace(contact_weight=args.contact_weight)
    cfg = base.replace(library=False, steps=10**9, time_budget_s=budget, device=args.device, threads=args.threads, val_fraction=0.0,
                       val_every=10**9, num_workers=1, seed=args.seed, checkpoint_dir=str(work / "ck"))
    t0 = time.perf_counter()
    steps = None
    if args.checkpoint:
        ckpt = args.checkpoint
        print(f"scoring {ckpt} (no training)")
    else:
        res = run_training(cfg, data)
        steps = res.steps
        ckpt = res.best_checkpoint or res.last_checkpoint
        if args.keep:
            import shutil

            shutil.copy(ckpt, args.keep)
        print(f"trained {res.steps} steps in {time.perf_counter() - t0:.0f} s ({args.threads} threads, budget "
              f"{budget:.0f} s): {ckpt}")
    # the reference of --zoom per-image: the size training records in the checkpoint (the same function)
    reference = painted_object_diameter([ItemView(i, it, 0) for i, it in enumerate(data.items)], data.classes)
    rows = []
    t1 = time.perf_counter()
    for p in test_p:
        used: dict = {}
        pred = predict_image(ckpt, p, work, args.device, image_zoom(args.zoom, ckpt, p, work, args.device, reference),
                             used)
        row = {"image": p.name, "zoom": round(float(used["zoom"]), 3), **score_image(pred, p.mask)}
        rows.append(row)
        print("  " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    eval_s = time.perf_counter() - t1
    slide = slide_numbers(args.slide_size, work / "slide", args.threads)
    out = {k: mean(rows, k) for k in ("aji", "pq", "f1_50", "count_error", "aji_watershed_baseline")}
    out.update(slide)
    out.update({"dice": mean(rows, "dice"), "steps": steps, "zoom": args.zoom,
                "zooms": [r["zoom"] for r in rows], "train_diameter_px": round(reference, 2), "contact_weight": cfg.contact_for(True), "budget_s": budget, "n_test": len(rows),
                "eval_s": round(eval_s, 1), "quick": args.quick})
    print(f"total {time.perf_counter() - t0:.0f} s on {args.device}")
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
