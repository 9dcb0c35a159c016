"""The annotate -> train -> correct loop with a simulated user, in a real napari viewer, on real data.

Data: ``../shared/data/monuseg_train`` (MoNuSeg H&E nuclei, 30 RGB images of 1000 x 1000, masks 0/1). The
images are split by sorted name: the first ``--paint`` are annotated, the last ``--test`` are never painted
and only scored. Run it under Xvfb: ``xvfb-run -a python benchmarks/bench_loop.py``.

Each painted image is an Image layer with a Labels layer beside it (store values: 1 background, 2 nucleus).
The simulated user paints through the Labels layer's own brush (``layer.paint`` along each stroke, as a
mouse drag does):

- round 1: scribbles: one stroke along the skeleton of each of a few nuclei, and longer strokes along the
  background (each stroke eroded by the brush radius so it stays inside its class);
- later rounds: corrections: the user looks at the current model's prediction of the painted images and
  strokes the largest mistakes: missed nuclei (painted nucleus) and false detections (painted background),
  plus a few new scribbles.

Each round then trains through the Train widget (its spin boxes set, Start / Resume pressed, the run left to
finish its step budget; the widget's defaults otherwise: UNet, Mean Teacher, live preview every 3 s, one
CPU thread). The first painted image is the one in view (its labels come from its Labels layer, as the
widget reads them); the other painted images go into the job's ``extra_items`` as ``LabelSnapshot``\\ s of
their Labels layers. After each round the last checkpoint predicts every held-out image at full resolution
(``inference.predict_region``) and the Dice of the nucleus class is averaged over them.

Target: Dice rises round over round and ends >= 0.70. ``--quick``: 2 smaller images, 2 short rounds
(a smoke test, < 1 min). Last line: ``RESULT {"dice_per_round", "dice_last_round", "dice_improved",
"painted_pixels", ...}``; a PNG of the learning curve is written (``--plot``; the full run's default is
``docs/images/loop_curve.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _active_loop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg_train"
BG, NUC = 1, 2  # store values
log = logging.getLogger("bench_loop")


def load_split(n_paint: int, n_test: int, crop: int | None) -> tuple[list, list]:
    """(painted, test) lists of (name, RGB YXC uint8, mask YX bool), split by sorted name."""
    from napari_medseg.training.datasets import load_folder

    pairs = load_folder(DATA)
    if n_paint + n_test > len(pairs):
        raise SystemExit(f"only {len(pairs)} images in {DATA}")

    def take(p: Any) -> tuple[str, np.ndarray, np.ndarray]:
        img, m = np.asarray(p.image.levels[0]), p.mask == 1
        if crop:
            img, m = img[:crop, :crop], m[:crop, :crop]
        return p.name, np.ascontiguousarray(img), m

    return [take(p) for p in pairs[:n_paint]], [take(p) for p in pairs[len(pairs) - n_test:]]


def first_strokes(mask: np.ndarray, rng: np.random.Generator, n_nuc: int, n_bg: int) -> list[tuple[int, Any, int]]:
    """First scribbles on an image: (label, strokes, brush) from the ground truth: one stroke along the
    skeleton of each of ``n_nuc`` nuclei, ``n_bg`` long background strokes, and ``n_bg`` background strokes
    in the gaps between nuclei (2-5 px from them, where an annotator separates touching objects)."""
    from _gui_probe import scribble_strokes
    from scipy import ndimage
    from skimage.morphology import disk

    nuc = scribble_strokes(mask, n_nuc, brush=3, length=40, rng=rng, components=True, min_area=25)
    bg = scribble_strokes(~mask, n_bg, brush=5, length=70, rng=rng)
    ring = ndimage.binary_dilation(mask, disk(5)) & ~ndimage.binary_dilation(mask, disk(1))
    gaps = scribble_strokes(ring, n_bg, brush=1, length=50, rng=rng)
    return [(NUC, nuc, 3), (BG, bg, 5), (BG, gaps, 1)]


def correction_strokes(mask: np.ndarray, pred: np.ndarray, painted: np.ndarray, rng: np.random.Generator,
                       n_fix: int, n_new: int) -> list[tuple[int, Any, int]]:
    """Corrections: thin strokes along the largest unpainted mistakes of ``pred`` (missed nuclei -> nucleus,
    false or bleeding nuclei -> background), plus ``n_new`` new nuclei scribbles."""
    from _gui_probe import scribble_strokes
    from scipy import ndimage

    free = painted == 0
    out: list[tuple[int, Any, int]] = []
    for value, region in ((NUC, mask & ~pred & free), (BG, ~mask & pred & free)):
        lab, n = ndimage.label(region)
        if n:
            areas = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
            big = np.argsort(areas)[::-1][: n_fix * 2] + 1  # the largest mistakes, then a random half of them
            keep = np.isin(lab, rng.permutation(big)[:n_fix])
            out.append((value, scribble_strokes(keep, n_fix, brush=1, length=40, rng=rng, components=True,
                                                min_area=8), 1))
    out.append((NUC, scribble_strokes(mask & free, n_new, brush=3, length=40, rng=rng, components=True,
                                      min_area=25), 3))
    return out


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    s = int(pred.sum()) + int(truth.sum())
    return 1.0 if s == 0 else 2.0 * int((pred & truth).sum()) / s


def pr_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """(Dice, precision, recall) of a binary prediction."""
    tp = int((pred & truth).sum())
    return dice(pred, truth), tp / max(1, int(pred.sum())), tp / max(1, int(truth.sum()))


def predict_nuclei(ckpt: Path, rgb: np.ndarray) -> np.ndarray:
    """Nucleus mask (YX bool) of a whole image at full resolution with the checkpoint (the plugin's
    inference path for a view; one pass, the image is small)."""
    from napari_medseg.core.source import ImageSource
    from napari_medseg.inference import predict_region
    from napari_medseg.models import load_checkpoint

    ck = load_checkpoint(ckpt)
    src = ImageSource([rgb], "YXC", (1.0, 1.0), name="x", rgb=True, modality="brightfield")
    r = predict_region(str(ckpt), src, 0, (slice(0, rgb.shape[0]), slice(0, rgb.shape[1])), ck.norm)
    return r.labels == 1


def write_plot(path: Path, result: dict[str, Any]) -> None:
    """The learning curve: held-out Dice (and Dice on the painted images, precision) per round."""
    from _gui_probe import save_line_plot

    rounds = result["rounds"]
    xs = [h["round"] for h in rounds]
    series = {"held-out Dice (nuclei)": (xs, [h["dice"] for h in rounds], "#0072b2"),
              "Dice on the painted images (dense truth)": (xs, [h["dice_painted_images"] for h in rounds], "#e69f00"),
              "held-out precision": (xs, [h["precision"] for h in rounds], "#cc79a7")}
    vals = [v for _, ys, _ in series.values() for v in ys] + [0.7]
    ylim = (max(0.0, np.floor(min(vals) * 10 - 0.5) / 10), min(1.0, np.ceil(max(vals) * 10 + 0.5) / 10))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_line_plot(path, series, title=f"MoNuSeg nuclei: {result['n_paint']} images annotated in {len(rounds)} "
                   f"rounds, {result['n_test']} held out", size=(760, 440),
                   xlabel=f"round (cumulative painted pixels); {result['steps_per_round']} training steps per round", ylabel="Dice / precision", ylim=ylim, hline=0.70,
                   xticks=xs, xtick_labels=[f"{h['round']} ({h['painted_pixels'] / 1000:.1f}k px)" for h in rounds])


def active_learning(args: argparse.Namespace) -> int:
    """``--active-learning``: the loop headless, regions chosen by the ranking and at random (``_active_loop``)."""
    if not DATA.is_dir():
        print("RESULT " + json.dumps({"skipped": f"{DATA} is absent"}))
        return 0
    logging.basicConfig(level=logging.WARNING)
    t = time.perf_counter()
    result = _active_loop.run(_active_loop.from_args(args), DATA)
    result.update(quick=args.quick, total_s=round(time.perf_counter() - t, 1),
                  loadavg_1min=round(os.getloadavg()[0], 2))
    if args.plot:
        _active_loop.write_plot(args.plot, result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="training steps per round")
    ap.add_argument("--paint", type=int, default=None, help="images the user annotates")
    ap.add_argument("--test", type=int, default=None, help="held-out images scored after each round")
    ap.add_argument("--patch", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-mean-teacher", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--replot", type=Path, default=None, help="draw the plot (--plot) from a saved --json and exit")
    _active_loop.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.active_learning:
        return active_learning(args)
    if args.replot:
        from qtpy.QtWidgets import QApplication

        _app = QApplication.instance() or QApplication([])
        write_plot(args.plot or ROOT / "docs/images/loop_curve.png", json.loads(args.replot.read_text()))
        return 0
    q = args.quick
    rounds = args.rounds or (2 if q else 3)
    steps = args.steps or (12 if q else 150)
    n_paint = args.paint or (2 if q else 6)
    n_test = args.test or (3 if q else 10)
    patch = args.patch or (128 if q else 256)
    batch = args.batch or (2 if q else 4)
    crop = 384 if q else None
    plot = args.plot or (None if q else ROOT / "docs/images/loop_curve.png")
    logging.basicConfig(level=logging.WARNING)
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        print("RESULT " + json.dumps({"skipped": f"{DATA} is absent"}))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_loop_"))
    os.environ["NAPARI_MEDSEG_CONFIG"] = str(tmp / "config")
    os.environ["NAPARI_CONFIG"] = str(tmp / "napari_settings.yaml")
    t_all = time.perf_counter()

    import napari
    from _gui_probe import paint_strokes, wait_until

    from napari_medseg._napari.layerdata import from_layer
    from napari_medseg._napari.widgets.train import TrainWidget
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.labels.snapshot import LabelSnapshot

    painted_set, test_set = load_split(n_paint, n_test, crop)
    classes = ClassSchema(("background", "nucleus"), ("#9e9e9e", "#0072b2"))
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    images, labels = [], []
    for i, (name, rgb, _) in enumerate(painted_set):
        images.append(viewer.add_image(rgb, name=f"image {name}", rgb=True, visible=i == 0))
        lab = viewer.add_labels(np.zeros(rgb.shape[:2], np.uint8), name=f"scribbles {name}", visible=i == 0,
                                metadata={"napari_medseg": {"classes": classes.to_dict()}})
        labels.append(lab)
    tw = TrainWidget(viewer)
    viewer.window.add_dock_widget(tw, name="Train", area="right")
    tw.image_combo.setCurrentText(images[0].name)
    tw.labels_combo.setCurrentText(labels[0].name)
    tw.dims_combo.setCurrentText("2D")
    tw.arch_combo.setCurrentText("unet")
    tw.device_combo.setCurrentText("cpu")
    tw.patch_spin.setValue(patch)
    tw.batch_spin.setValue(batch)
    tw.steps_spin.setValue(steps)
    tw.budget_spin.setValue(0)
    tw.semi_combo.setCurrentIndex(tw.semi_combo.findData("none" if args.no_mean_teacher else "mean_teacher"))
    tw.threads_spin.setValue(args.threads)
    tw.preview_check.setChecked(True)
    tw.out_edit.setText(str(tmp / "run"))
    extra_sources = {i: from_layer(ly) for i, ly in enumerate(images) if i}
    extras: list[int] = []  # the painted images besides the one in view, this round

    orig_gather = tw._gather

    def gather(resume: bool) -> dict[str, Any]:
        """The widget's own job, plus the other painted images (their Labels layers, snapshotted now)."""
        job = orig_gather(resume)
        job["extra_items"] = [(extra_sources[i], LabelSnapshot.of_array(np.asarray(labels[i].data), classes))
                              for i in extras]
        return job

    tw._gather = gather
    # the user looks at a detail of the image in view (about 500 px across): the live preview predicts that
    from napari_medseg._napari.layers import camera_of

    h, w = painted_set[0][1].shape[:2]
    cam = camera_of(viewer)
    cam.center = (h / 2, w / 2)
    cam.zoom = 850 / min(500, h, w)
    rng = np.random.default_rng(args.seed)
    history: list[dict[str, Any]] = []
    painted_preds: list[np.ndarray] = []
    # which round first annotates each image (a few images per round; the one in view first)
    first_round = [min(rounds, 1 + i * rounds // n_paint) for i in range(n_paint)]
    for r in range(1, rounds + 1):
        t_paint = time.perf_counter()
        dabs = 0
        for i, (_, _, mask) in enumerate(painted_set):
            if first_round[i] > r:
                continue
            if first_round[i] == r:
                plan = first_strokes(mask, rng, n_nuc=6 if q else 25, n_bg=3 if q else 8)
                images[i].visible = labels[i].visible = i == 0
            else:  # the user corrects what the last round's model got wrong on this image
                plan = correction_strokes(mask, painted_preds[i], np.asarray(labels[i].data), rng,
                                          n_fix=4 if q else 20, n_new=2 if q else 6)
            for value, strokes, brush in plan:
                dabs += paint_strokes(labels[i], strokes, value, brush)
        in_use = [i for i in range(n_paint) if first_round[i] <= r]
        lab_all = [np.asarray(labels[i].data) for i in in_use]
        painted_px = int(sum((a > 0).sum() for a in lab_all))
        wrong = int(sum(((a == NUC) & ~painted_set[i][2]).sum() + ((a == BG) & painted_set[i][2]).sum()
                        for a, i in zip(lab_all, in_use)))
        paint_s = time.perf_counter() - t_paint
        extras[:] = [i for i in in_use if i != 0]

        steps_seen: list[int] = []
        orig_event = tw._on_event

        def on_event(ev: Any, _orig: Any = orig_event, _seen: list[int] = steps_seen) -> None:
            if type(ev).__name__ == "StepEvent":
                _seen.append(ev.step)
            _orig(ev)

        tw._on_event = on_event
        t_train = time.perf_counter()
        tw.start(resume=r > 1)
        if tw._worker is None:
            raise RuntimeError(f"training did not start: {tw.status.text()}")
        wait_until(lambda: tw._worker is None, 3600.0, poll_ms=200)
        train_s = time.perf_counter() - t_train
        tw._on_event = orig_event
        last = tw.session.last_checkpoint
        if last is None or not Path(last).is_file():
            raise RuntimeError(f"round {r}: no checkpoint ({tw.status.text()})")
        ckpt = tmp / f"round{r}.pt"
        shutil.copyfile(last, ckpt)
        t_score = time.perf_counter()
        scores = [pr_dice(predict_nuclei(ckpt, rgb), m) for _, rgb, m in test_set]
        painted_preds = [predict_nuclei(ckpt, rgb) for _, rgb, _ in painted_set]
        d_train = [dice(painted_preds[i], painted_set[i][2]) for i in in_use]
        row = {"round": r, "images_painted": len(in_use), "dice": round(float(np.mean([d for d, _, _ in scores])), 4),
               "dice_min": round(float(np.min([d for d, _, _ in scores])), 4),
               "precision": round(float(np.mean([p for _, p, _ in scores])), 4),
               "recall": round(float(np.mean([c for _, _, c in scores])), 4),
               "painted_pixels": painted_px, "painted_frac": round(painted_px / sum(a.size for a in lab_all), 5),
               "painted_off_class": wrong, "dabs": dabs, "steps": steps_seen[-1] if steps_seen else 0,
               "train_s": round(train_s, 1), "paint_s": round(paint_s, 1),
               "score_s": round(time.perf_counter() - t_score, 1),
               "dice_painted_images": round(float(np.mean(d_train)), 4),
               "first_preview_s": None if tw._first_preview_s is None else round(tw._first_preview_s, 2)}
        history.append(row)
        print(f"round {r}: {len(in_use)} images, painted {painted_px} px ({100 * row['painted_frac']:.2f} %), "
              f"trained {row['steps']} steps in {row['train_s']} s -> held-out Dice {row['dice']:.4f} "
              f"(precision {row['precision']:.3f}, recall {row['recall']:.3f})", flush=True)

    dices = [h["dice"] for h in history]
    improved = all(b > a for a, b in zip(dices, dices[1:]))
    result = {"dice_per_round": dices, "dice_last_round": dices[-1], "dice_improved": improved,
              "painted_pixels": history[-1]["painted_pixels"], "target_met": improved and dices[-1] >= 0.70,
              "rounds": history, "n_paint": n_paint, "n_test": n_test, "steps_per_round": steps, "patch": patch,
              "batch": batch, "mean_teacher": not args.no_mean_teacher, "threads": args.threads,
              "crop": crop, "quick": q, "plot": None if plot is None else str(plot),
              "loadavg_1min": round(os.getloadavg()[0], 2), "total_s": round(time.perf_counter() - t_all, 1)}
    if plot is not None:
        write_plot(plot, result)
    tw.shutdown()
    viewer.close()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
