"""Semi-supervised gain: supervised against Mean Teacher, same step budget, seed, model and batch, on real data.

Settings (data from ``../shared/data``; images held out for scoring are never seen in training):

- ``isbi_2d``: ISBI 2012 EM, the membrane class. Images 00-19 train, 20-29 test. About 5 % of the pixels of
  each training image are labelled as scribbles sampled from the masks (``sparsify.scribbles``, seeded);
  everything else is unlabelled.
- ``monuseg_2d``: MoNuSeg H&E nuclei, same protocol (first 20 images train, last 10 test).
- ``la_3d`` (the headline): left atrium MRI, 8 labelled cases, the other training cases unlabelled,
  scored on 16 held-out cases (the last 16 by name).
- ``la_3d_coarse``: the same cases at 1.25 mm (2x coarser per axis: image block means, mask subsampled),
  48^3 patches, 1200 steps: a CPU schedule on which the models get much further (Dice scored at 1.25 mm).

Both runs of a setting use ``training.train`` with the plugin's defaults for what is not listed (AdamW,
ce_dice on painted pixels, on-device augmentation, EMA 0.99, sigmoid ramp-up over 40 % of the steps), the
same total batch (Mean Teacher: half labelled, half unlabelled patches), and are scored by sliding-window
prediction of the *student* (Dice of the foreground class per held-out image, averaged; the teacher's Dice
is reported beside it). On a CPU the schedule is reduced to finish in under 40 minutes on 2 quiet cores;
``--paper`` runs the UA-MT paper's protocol (6000 iterations, patch 112x112x80, batch 2 + 2, SGD 0.01,
consistency weight 0.1, uncertainty mask with 8 passes) and needs a GPU. ``--quick`` is a smoke test
(< 1 min). Last line: ``RESULT {"dice_sup", "dice_mt", "dice_gain", "setting"}`` (Dice in percent, gain in
points) for the headline setting; the others are printed above it.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_medseg.models.config import ModelConfig
from napari_medseg.training import TrainConfig, run_training
from napari_medseg.training.datasets import Pair, load_folder, make_training_data
from napari_medseg.training.devices import select_device
from napari_medseg.training.metrics import dense_scores, sliding_window_predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def downsample(pairs: list[Pair], f: int = 2) -> list[Pair]:
    """Each pair at 1/f resolution per axis: the image by f^3 block means, the mask by taking every f-th
    voxel; the pixel size scaled (a coarser training and scoring grid that a CPU run can converge on)."""
    import dataclasses

    out = []
    for p in pairs:
        a = np.asarray(p.image.levels[0]).astype(np.float32)
        sh = [s - s % f for s in a.shape]
        a = a[: sh[0], : sh[1], : sh[2]]
        a = a.reshape(sh[0] // f, f, sh[1] // f, f, sh[2] // f, f).mean(axis=(1, 3, 5))
        img = dataclasses.replace(p.image, levels=[np.round(a).astype(np.uint8)],
                                  pixel_size=tuple(v * f for v in p.image.pixel_size))
        out.append(Pair(p.name, img, np.ascontiguousarray(p.mask[: sh[0]:f, : sh[1]:f, : sh[2]:f])))
    return out


def score(model, norm, pairs: list[Pair], patch: tuple[int, ...], device: str) -> tuple[float, float]:
    """Mean foreground Dice (percent) and HD95 over ``pairs``."""
    setup = select_device(device)
    dices, hds = [], []
    for p in pairs:
        a = np.asarray(p.image.levels[0])
        img = np.moveaxis(a, -1, 0) if "C" in p.image.axes and p.image.axes.index("C") != 0 else (
            a if "C" in p.image.axes else a[None])
        prob = sliding_window_predict(model, img, norm, patch, setup.device, overlap=0.25,
                                      autocast=setup.autocast)
        pred = prob.argmax(0).numpy()
        d, h = dense_scores(pred, p.mask, prob.shape[0], p.image.pixel_size)
        dices.append(0.0 if math.isnan(d[0]) else d[0])
        if not math.isnan(h[0]):
            hds.append(h[0])
    return 100 * float(np.mean(dices)), float(np.mean(hds)) if hds else math.nan


def run_setting(name: str, train_pairs: list[Pair], test_pairs: list[Pair], cfg: TrainConfig, data_kw: dict,
                device: str, mt_batch: str = "same-total", runs: str = "both") -> dict:
    data = make_training_data(train_pairs, **data_kw)
    painted = [float((it.labels > 0).mean()) for it in data.items if it.labels is not None]
    out: dict = {"setting": name, "n_train": len(train_pairs), "n_test": len(test_pairs),
                 "n_labelled": len(painted), "painted_frac": round(float(np.mean(painted)), 4), "steps": cfg.steps}
    for mt in (False, True) if runs == "both" else ((runs == "mt"),):
        key = "mt" if mt else "sup"
        t = time.perf_counter()
        run_cfg = cfg.replace(mean_teacher=mt, checkpoint_dir=tempfile.mkdtemp(prefix=f"semisup_{key}_"))
        if mt and mt_batch == "same-labelled":  # the supervised batch's labelled patches, plus as many unlabelled
            run_cfg = run_cfg.replace(batch_size=2 * cfg.batch_size, unlabelled_ratio=1.0)
        out[f"batch_{key}"] = list(run_cfg.split_batch()) if mt else [run_cfg.batch_size, 0]
        res = run_training(run_cfg, data)
        out[f"train_s_{key}"] = round(time.perf_counter() - t, 1)
        patch = cfg.patch_for(cfg.model.spatial_dims)
        out[f"dice_{key}"], out[f"hd95_{key}"] = score(res.model, res.norm, test_pairs, patch, device)
        if mt:
            out["dice_mt_teacher"], _ = score(res.teacher, res.norm, test_pairs, patch, device)
        print(f"  {name} {key}: Dice {out[f'dice_{key}']:.2f} %  HD95 {out[f'hd95_{key}']:.2f}  "
              f"({out[f'train_s_{key}']:.0f} s training)", flush=True)
    if runs != "both":
        return out
    out["dice_gain"] = round(out["dice_mt"] - out["dice_sup"], 2)
    for k in list(out):
        if isinstance(out[k], float):
            out[k] = round(out[k], 3)
    print(f"{name}: " + json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test, < 1 min")
    ap.add_argument("--paper", action="store_true", help="the UA-MT paper's protocol for the 3D setting (GPU)")
    ap.add_argument("--settings", default="isbi_2d,la_3d", help="comma-separated: isbi_2d, monuseg_2d, la_3d, la_3d_coarse")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 2, --quick 1)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps-2d", type=int, default=None)
    ap.add_argument("--steps-3d", type=int, default=None)
    ap.add_argument("--mt-batch", choices=["same-labelled", "same-total"], default="same-total",
                    help="Mean Teacher's batch: the same total as the supervised one, half labelled and half "
                         "unlabelled (default: same compute per step, within the 40 min CPU budget), or the "
                         "supervised batch's labelled patches plus as many unlabelled (about 2x the time)")
    ap.add_argument("--runs", choices=["both", "sup", "mt"], default="both", help="tuning: one of the two runs")
    ap.add_argument("--consistency-weight", type=float, default=None)
    ap.add_argument("--ema-decay", type=float, default=None)
    ap.add_argument("--uncertainty-mask", action="store_true", help="UA-MT's confidence mask on the consistency")
    ap.add_argument("--consistency-on", choices=["all", "unlabelled"], default=None,
                    help="the consistency on all patches of the batch (the default) or the unlabelled ones only")
    ap.add_argument("--ema-warmup", action="store_true", help="EMA decay min(decay, 1 - 1/(step + 1))")
    args = ap.parse_args()
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    if not root.is_dir():
        raise SystemExit(f"no data at {root} (../shared/data)")
    if args.paper and not torch.cuda.is_available():
        raise SystemExit("--paper needs a CUDA GPU (6000 3D iterations); run the reduced CPU schedule instead")
    q = args.quick
    t0 = time.perf_counter()
    results = []
    common = dict(device=args.device, threads=args.threads, seed=args.seed, val_fraction=0.0, val_every=10**6,
                  num_workers=1)
    if args.consistency_weight is not None:
        common["consistency_weight"] = args.consistency_weight
    if args.ema_decay is not None:
        common["ema_decay"] = args.ema_decay
    if args.uncertainty_mask:
        common["uncertainty_mask"] = True
    if args.consistency_on:
        common["consistency_on"] = args.consistency_on
    if args.ema_warmup:
        common["ema_warmup"] = True
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        if setting in ("isbi_2d", "monuseg_2d"):
            folder, fg = ("isbi2012_em", [0]) if setting == "isbi_2d" else ("monuseg_train", None)
            pairs = load_folder(root / folder, foreground=fg)  # ISBI: raw 0 = membrane is the class
            train_p, test_p = (pairs[:3], pairs[-1:]) if q else (pairs[:20], pairs[20:])
            steps = args.steps_2d or (6 if q else 600)
            cfg = TrainConfig(patch_size=(128 if q else 256,), batch_size=4 if q else 8, steps=steps,
                              rampup_steps=int(0.4 * steps), **common)
            results.append(run_setting(setting, train_p, test_p, cfg,
                                       dict(sparse="scribbles", fraction=0.05, seed=args.seed), args.device,
                                       args.mt_batch, args.runs))
        elif setting in ("la_3d", "la_3d_coarse"):
            pairs = load_folder(root / "la2018_mri_train", limit=6 if q else None)
            if setting == "la_3d_coarse":
                pairs = downsample(pairs, 2)
            train_p, test_p = (pairs[:4], pairs[4:5]) if q else (pairs[:-16], pairs[-16:])
            n_lab = 1 if q else 8
            if args.paper:
                steps = args.steps_3d or 6000
                cfg = TrainConfig(model=ModelConfig(spatial_dims=3, channels=(16, 32, 64, 128, 256), num_res_units=2),
                                  patch_size=(80, 112, 112), batch_size=2, steps=steps, optimizer="sgd", lr=0.01,
                                  lr_schedule="poly", warmup_steps=0, rampup_steps=int(steps * 0.4),
                                  uncertainty_samples=8,
                                  **{"consistency_weight": 0.1, "uncertainty_mask": True, **common})
            elif setting == "la_3d_coarse":  # 1.25 mm: a 48^3 patch holds most of the atrium
                steps = args.steps_3d or (3 if q else 1200)
                cfg = TrainConfig(model=ModelConfig(spatial_dims=3, channels=(16, 32, 64, 128), num_res_units=1),
                                  patch_size=(32 if q else 48,), batch_size=2 if q else 4, steps=steps,
                                  rampup_steps=int(0.4 * steps), **common)
            else:
                steps = args.steps_3d or (3 if q else 700)
                cfg = TrainConfig(model=ModelConfig(spatial_dims=3, channels=(16, 32, 64, 128), num_res_units=1),
                                  patch_size=(32 if q else 64,), batch_size=2 if q else 4, steps=steps,
                                  rampup_steps=int(0.4 * steps), **common)
            results.append(run_setting(setting, train_p, test_p, cfg, dict(cases=n_lab, seed=args.seed),
                                       args.device, args.mt_batch, args.runs))
        else:
            raise SystemExit(f"unknown setting {setting!r}")
    head = next((r for r in results if r["setting"] == "la_3d"), results[-1])
    print(f"total {time.perf_counter() - t0:.0f} s on {'cuda' if torch.cuda.is_available() else 'cpu'} "
          f"({args.threads} threads){' [quick]' if q else ''}{' [paper protocol]' if args.paper else ''}")
    print("RESULT " + json.dumps({"dice_sup": head.get("dice_sup"), "dice_mt": head.get("dice_mt"),
                                  "dice_gain": head.get("dice_gain"), "setting": head["setting"] + (" quick" if q else ""),
                                  "dice_mt_teacher": head.get("dice_mt_teacher")}))


if __name__ == "__main__":
    main()
