"""Domain adaptation (training/domain.py) on MoNuSeg: source-only training vs output-space / DANN alignment at
equal steps, scored on the target domain and on held-out source images.

Two settings:

- ``site`` (default): MoNuSeg split by TCGA tissue-source site (characters 6-7 of the file name): target sites
  G9, HE, B0 (11 images, unlabelled during training, scored with their masks), source = the other sites (the last
  4 of them held out to score the source domain).
- ``--stain-shift``: the fast controlled variant: target = the held-out source images with a fixed rotation of
  their H&E stain vectors (skimage ``rgb2hed`` -> rotate H/E by ``--stain-angle`` degrees -> ``hed2rgb``), so the
  only difference is the stain; it also reports how much of the Dice lost to the shift the adaptation recovers.
  The default 84 degrees was chosen because it costs a source-only U-Net about 24 Dice points (150 steps, patch
  128: 72.3 unshifted -> 48.5); rotations up to 70 degrees cost nothing (the normalisation absorbs them).

Every run holds the target images in its data (as unlabelled ``domain="target"`` items), so the normalisation
statistics are the same for source-only and adapted runs; only ``domain_adapt`` differs. Dice: foreground Dice
per image (sliding window, the weights the checkpoint predicts with), mean over images, percent.

    python benchmarks/bench_domain.py --quick                  # a few minutes on a CPU
    python benchmarks/bench_domain.py                          # 600 steps, 3 seeds, site split
    python benchmarks/bench_domain.py --stain-shift --methods none,output,dann
    python benchmarks/bench_domain.py --methods none,stain,dann+stain    # H&E stain augmentation (no alignment)

Ends with ``RESULT {"dann_target_gain": ..., "dann_source_drop": ...}`` (Dice points, mean of seeds; gain = DANN
target Dice - source-only target Dice; drop = DANN source Dice - source-only source Dice); nulls when the data
are absent. A full (not ``--quick``) run also writes them to ``benchmarks/_cache/last_domain_result.json``, which
``bench_zoo.py`` reports with their setting and date. Wall-clock figures on a shared machine are noisy; the comparison is at equal steps.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg_train"
TARGET_SITES = ("G9", "HE", "B0")
LAST = Path(__file__).resolve().parent / "_cache" / "last_domain_result.json"  # the last full run's RESULT


def site(name: str) -> str:
    """The TCGA tissue-source site: characters 6-7 of the file name (``TCGA-G9-6362-...`` -> ``G9``)."""
    return name[5:7]


def stain_rotate(rgb: np.ndarray, degrees: float = 84.0, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A fixed stain shift: the haematoxylin and eosin optical densities rotated into each other by ``degrees``
    and scaled, DAB kept; uint8 RGB in and out."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb[..., :3])
    a = math.radians(degrees)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * np.asarray(scale)[:, None]
    he = hed[..., :2] @ m.T
    out = hed2rgb(np.concatenate([he, hed[..., 2:]], axis=-1))
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _rgb(p) -> np.ndarray:
    a = np.asarray(p.image.levels[0])
    return a if p.image.axes == "YXC" else np.moveaxis(a, p.image.axes.index("C"), -1)


def splits(stain_shift: bool, quick: bool, angle: float = 84.0):
    """(source training pairs, source held-out pairs, target pairs)."""
    from napari_medseg.core.source import ImageSource
    from napari_medseg.training.datasets import Pair, load_folder

    pairs = load_folder(DATA)
    source = [p for p in pairs if site(p.name) not in TARGET_SITES]
    target = [p for p in pairs if site(p.name) in TARGET_SITES]
    train, held = source[:-4], source[-4:]
    if stain_shift:
        target = [Pair(f"shift_{p.name}", ImageSource([stain_rotate(_rgb(p), angle)], "YXC", (1.0, 1.0),
                                                      name=f"shift_{p.name}"), p.mask) for p in held]
    if quick:
        train, held, target = train[:4], held[:2], target[:2]
    return train, held, target


def score(model, pairs, norm, patch: int) -> float:
    from napari_medseg.training.metrics import dense_scores, sliding_window_predict

    vals = []
    for p in pairs:
        chw = np.moveaxis(_rgb(p), -1, 0)
        prob = sliding_window_predict(model, chw, norm, (patch, patch), "cpu", overlap=0.25)
        d = dense_scores(prob.argmax(0).numpy(), p.mask, 2, None)["dice"][0]
        vals.append(0.0 if math.isnan(d) else d)
    return 100 * float(np.mean(vals))


def run_one(method: str, seed: int, train_p, held_p, target_p, a: argparse.Namespace) -> dict:
    from napari_medseg.models.config import ModelConfig
    from napari_medseg.training import TrainConfig, TrainingItem, run_training
    from napari_medseg.training.datasets import make_training_data

    data = make_training_data(train_p, sparse="dense")
    data.items += [TrainingItem(p.image, None, name=f"target:{p.name}", domain="target") for p in target_p]
    model = ModelConfig(name=a.model, spatial_dims=2, in_channels=3, out_channels=2,
                        channels=(16, 32, 64, 128), num_res_units=1)
    cfg = TrainConfig(model=model, patch_size=(a.patch,), batch_size=a.batch, steps=a.steps, seed=seed,
                      val_fraction=0.0, val_every=10**9, library=False, threads=a.threads, num_workers=1,
                      domain_adapt=method.replace("+stain", "").replace("stain", "none") or "none",
                      stain_jitter=a.stain_jitter if "stain" in method else 0.0, da_weight=a.da_weight, da_rampup=a.da_rampup,
                      checkpoint_dir=tempfile.mkdtemp(prefix=f"da_{method}_{seed}_"))
    t0 = time.perf_counter()
    res = run_training(cfg, data)
    train_s = time.perf_counter() - t0
    net = res.teacher if res.teacher is not None else res.model  # what the checkpoint predicts with
    row = {"target": score(net, target_p, res.norm, a.patch), "source": score(net, held_p, res.norm, a.patch),
           "train_s": train_s}
    print(f"  {method} seed {seed}: target Dice {row['target']:.2f}, source held-out Dice {row['source']:.2f}, "
          f"{train_s:.0f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 source images, 40 steps, 1 seed, patch 128")
    ap.add_argument("--stain-shift", action="store_true", help="target = held-out source images, stain-rotated")
    ap.add_argument("--stain-angle", type=float, default=84.0, help="H/E rotation of --stain-shift (degrees)")
    ap.add_argument("--methods", default="none,output,dann")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--model", default="unet")
    ap.add_argument("--da-weight", type=float, default=0.1)
    ap.add_argument("--stain-jitter", type=float, default=0.05, help="of the methods 'stain' (source-only with H&E "
                    "stain augmentation) and 'dann+stain' / 'output+stain'")
    ap.add_argument("--da-rampup", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.patch, a.batch, a.seeds = min(a.steps, 40), 128, 2, a.seeds.split(",")[0]
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        print('RESULT {"dann_target_gain": null, "dann_source_drop": null}')
        return 0
    import torch

    torch.set_num_threads(a.threads)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if "none" not in methods:
        methods.insert(0, "none")
    seeds = [int(s) for s in a.seeds.split(",")]
    train_p, held_p, target_p = splits(a.stain_shift, a.quick, a.stain_angle)
    print(f"{'stain shift' if a.stain_shift else 'site split'}: {len(train_p)} source training images, "
          f"{len(held_p)} source held-out, {len(target_p)} target; {a.steps} steps, patch {a.patch}, batch "
          f"{a.batch} (+{a.batch} target), da_weight {a.da_weight}, seeds {seeds}", flush=True)
    rows: dict[str, list[dict]] = {m: [run_one(m, s, train_p, held_p, target_p, a) for s in seeds]
                                   for m in methods}
    mean = {m: {k: statistics.mean(r[k] for r in rs) for k in ("target", "source", "train_s")}
            for m, rs in rows.items()}
    print("\n| method | target Dice | source held-out Dice | train s (noisy) |\n|---|---|---|---|")
    for m, v in mean.items():
        print(f"| {m} | {v['target']:.2f} | {v['source']:.2f} | {v['train_s']:.0f} |")
    base = mean["none"]
    out: dict[str, float | None] = {"dann_target_gain": None, "dann_source_drop": None}
    for m in methods[1:]:
        gain, drop = mean[m]["target"] - base["target"], mean[m]["source"] - base["source"]
        print(f"{m}: target gain {gain:+.2f} points, source change {drop:+.2f} points")
        if a.stain_shift:
            lost = base["source"] - base["target"]  # the same images without and with the shift
            print(f"{m}: the shift costs source-only {lost:.2f} points; recovered "
                  f"{(100 * gain / lost) if lost > 0 else float('nan'):.0f} %")
        if m == "dann":
            out = {"dann_target_gain": round(gain, 2), "dann_source_drop": round(drop, 2)}
    if "output" in mean:
        out["output_target_gain"] = round(mean["output"]["target"] - base["target"], 2)
        out["output_source_drop"] = round(mean["output"]["source"] - base["source"], 2)
    for m in (m for m in methods if "stain" in m):
        key = m.replace("+", "_")
        out[f"{key}_target_gain"] = round(mean[m]["target"] - base["target"], 2)
        out[f"{key}_source_drop"] = round(mean[m]["source"] - base["source"], 2)
    if not a.quick:  # bench_zoo.py reports the last full run's keys (its own RESULT carries them)
        LAST.parent.mkdir(parents=True, exist_ok=True)
        LAST.write_text(json.dumps(out | {"setting": "stain shift" if a.stain_shift else "site split",
                                          "steps": a.steps, "seeds": seeds, "methods": methods,
                                          "date": time.strftime("%Y-%m-%d %H:%M")}))
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
