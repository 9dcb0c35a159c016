"""Does learning from the unpainted pixels pay? Supervised vs semi-supervised at equal wall-clock, paired seeds.

Each run trains with ``training.train`` for the same time budget (``--budget`` seconds; the learning rate and
every ramp follow the elapsed share of it), the same model, batch of labelled patches and seed; the
semi-supervised run pays for its teacher pass and extra unlabelled windows in steps. Runs of one seed are
paired (same simulated annotation, same data order). Scoring: sliding-window prediction of held-out images
never seen in training, mean foreground Dice per image (percent), for the student and for the weight
average (EMA) of the same run. A full-label run (every pixel of every training image labelled) gives the
upper bound of each setting.

Settings (``../shared/data``):

- ``monuseg_5pct`` / ``monuseg_1pct``: MoNuSeg H&E nuclei, 20 training images with scribbles on about 5 % /
  1 % of the pixels (``sparsify.scribbles``: 3 px strokes kept 3 px inside each region), 10 held out.
- ``monuseg_local``: how the plugin is used: scribbles (5 %) only inside 2 random 256 x 256 windows of 5
  images; the other 15 training images unlabelled.
- ``isbi_5pct``: ISBI 2012 EM membranes, 20 / 10 images, 5 % scribbles.
- ``la_3d_coarse``: left atrium MRI at 1.25 mm, 8 labelled cases, the other training cases unlabelled,
  scored on 16 held-out cases. ``--paper`` runs UA-MT's protocol at 0.625 mm (GPU).

Methods (``--methods``): ``sup`` (painted pixels only), ``auto`` (``semi="auto"``, the CLI's and the Train
widget's default: ``pl`` while the paint spans few patches with most of their pixels unpainted, ``crf:1`` for
2D strokes spread wider, else ``sup``; each row says what it chose; on a CPU with native bfloat16 every method
trains under bfloat16 autocast, ``amp=True``), ``sup_f32`` / ``auto_f32`` / ``pl_f32`` (``sup`` / ``auto`` / ``pl``
with ``amp=False``: float32),
``pl`` (``semi="pseudo_label"``: the unlabelled data are the unpainted pixels of the painted patches), ``pl_u25`` (the same plus a quarter batch of
windows from anywhere, ``unlabelled_ratio=0.25``), ``mt`` (``semi="mean_teacher"`` with the reference recipe),
``full`` (dense labels, upper bound),
``crf`` / ``pl_crf`` (``sup`` / ``pl`` plus the gated CRF loss, weight 0.1; ``crf:0.5`` sets another weight, so
one run can sweep it: ``--methods sup,crf:0.3,crf:1``).

The defaults (``monuseg_1pct,monuseg_local``, ``sup,auto,full``, seeds 0-2, 100 s per run, 2 threads) take about
40 minutes on 2 cores; the issue's budgets are ``--budget 300`` and ``--budget 600``. ``--quick`` is a smoke
test (< 2 min). Last line: ``RESULT {"method", "gain_1pct", "gain_localised", "min_gain", "step_ratio",
"sup_1pct", "semi_1pct", ...}``: Dice in points, gains the mean over seeds of (the default method - sup), the
default method being ``auto`` when it ran, else ``pl`` (``method`` says which), ``min_gain`` the smallest mean
gain over the settings run, ``step_ratio`` the median step time of that method over sup.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_medseg.models.checkpoint import load_checkpoint
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.devices import select_device
from napari_medseg.training import TrainConfig, run_training
from napari_medseg.training.datasets import Pair, load_folder, make_training_data
from napari_medseg.training.metrics import dense_scores, sliding_window_predict
from napari_medseg.training.sparsify import scribbles

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# method -> TrainConfig changes (every run also keeps a weight EMA, scored beside the student)
METHODS = {"sup": {"semi": "none"}, "pl": {"semi": "pseudo_label"},  # the unpainted pixels of painted patches
           "sup_f32": {"semi": "none", "amp": False},  # float32 on a CPU with native bf16 (amp: bf16 autocast)
           "pl_f32": {"semi": "pseudo_label", "amp": False},  # the same in float32 on a CPU with native bf16
           "auto": {"semi": "auto"},  # the CLI's and the widget's default: pl or sup by the paint's extent
           "auto_f32": {"semi": "auto", "amp": False},  # the same in float32 on a CPU with native bf16
           "pl_u25": {"semi": "pseudo_label", "unlabelled_ratio": 0.25},  # + a quarter batch of windows anywhere
           "mt": {"semi": "mean_teacher"}, "full": {"semi": "none"},
           "crf": {"semi": "none", "crf_weight": 0.1},  # + the gated CRF loss (training/gated_crf.py)
           "pl_crf": {"semi": "pseudo_label", "crf_weight": 0.1}}


def downsample(pairs: list[Pair], f: int = 2) -> list[Pair]:
    """Each pair at 1/f resolution per axis: the image by f^3 block means, the mask by taking every f-th
    voxel; the pixel size scaled (a coarser grid that a CPU run can converge on)."""
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


def localised(data, n_images: int, n_windows: int, size: int, fraction: float, seed: int):
    """Keep paint only inside ``n_windows`` random ``size`` windows of ``n_images`` images (scribbles drawn
    within each window); the other images become unlabelled."""
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(len(data.items), n_images, replace=False).tolist())
    items = []
    for i, it in enumerate(data.items):
        if i not in keep:
            items.append(dataclasses.replace(it, labels=None))
            continue
        m = it.dense_mask
        out = np.zeros(m.shape, np.uint8)
        for w in range(n_windows):
            y = int(rng.integers(0, m.shape[0] - size + 1))
            x = int(rng.integers(0, m.shape[1] - size + 1))
            out[y:y + size, x:x + size] = scribbles(m[y:y + size, x:x + size], fraction, seed + 31 * i + w)
        items.append(dataclasses.replace(it, labels=out))
    return dataclasses.replace(data, items=items)


def score(model, norm, pairs: list[Pair], patch: tuple[int, ...], device: str) -> float:
    """Mean foreground Dice (percent) over ``pairs``."""
    setup = select_device(device)
    dices = []
    for p in pairs:
        a = np.asarray(p.image.levels[0])
        img = np.moveaxis(a, -1, 0) if "C" in p.image.axes and p.image.axes.index("C") != 0 else (
            a if "C" in p.image.axes else a[None])
        prob = sliding_window_predict(model, img, norm, patch, setup.device, overlap=0.25, autocast=setup.autocast)
        d, _ = dense_scores(prob.argmax(0).numpy(), p.mask, prob.shape[0], p.image.pixel_size)
        dices.append(0.0 if math.isnan(d[0]) else d[0])
    return 100 * float(np.mean(dices))


def paper_config() -> TrainConfig:
    """UA-MT's protocol (Yu et al. 2019, yulequan/UA-MT): 3D, 6000 iterations, patch 112x112x80, batch 2 labelled
    + 2 unlabelled, SGD 0.01 with poly decay, consistency 0.1 ramped over the run, uncertainty mask over 8 noisy
    passes. Needs a GPU."""
    return TrainConfig(model=ModelConfig(spatial_dims=3, channels=(16, 32, 64, 128, 256), num_res_units=2),
                       patch_size=(80, 112, 112), batch_size=2, unlabelled_ratio=1.0, steps=6000, optimizer="sgd",
                       lr=0.01, lr_schedule="poly", warmup_steps=0, consistency_weight=0.1, rampup=1.0,
                       uncertainty_mask=True, uncertainty_samples=8, teacher_noise=0.1)


def setting_data(name: str, root: Path, quick: bool, paper: bool = False):
    """(train pairs, test pairs, TrainConfig for the setting, function seed -> TrainingData sparse, dense)."""
    if name.startswith(("monuseg", "isbi")):
        folder, fg = ("isbi2012_em", [0]) if name.startswith("isbi") else ("monuseg_train", None)
        pairs = load_folder(root / folder, foreground=fg)  # ISBI: raw 0 = membrane is the class
        train_p, test_p = (pairs[:3], pairs[-1:]) if quick else (pairs[:20], pairs[20:])
        cfg = TrainConfig(patch_size=(128 if quick else 256,), batch_size=4 if quick else 8)
        frac = 0.01 if name.endswith("1pct") else 0.05

        def sparse(s: int):
            if name == "monuseg_local":
                dense = make_training_data(train_p, sparse="dense")
                return localised(dense, 2 if quick else 5, 2, 128 if quick else 256, frac, s)
            return make_training_data(train_p, sparse="scribbles", fraction=frac, seed=s)

        return train_p, test_p, cfg, sparse
    if name in ("la_3d", "la_3d_coarse"):
        pairs = load_folder(root / "la2018_mri_train", limit=6 if quick else None)
        if name == "la_3d_coarse":
            pairs = downsample(pairs, 2)
        train_p, test_p = (pairs[:4], pairs[4:5]) if quick else (pairs[:-16], pairs[-16:])
        model = ModelConfig(spatial_dims=3, channels=(16, 32, 64, 128), num_res_units=1)
        patch = 32 if quick else (48 if name == "la_3d_coarse" else 64)
        cfg = TrainConfig(model=model, patch_size=(patch,), batch_size=2 if quick else 4)
        if paper:
            cfg = paper_config()
        return train_p, test_p, cfg, lambda s: make_training_data(train_p, cases=1 if quick else 8, seed=s)
    raise SystemExit(f"unknown setting {name!r}")


def method_config(method: str) -> dict:
    """The TrainConfig changes of ``method``: a name of ``METHODS``, or ``crf:W`` / ``pl_crf:W`` (CRF weight W)."""
    name, _, weight = method.partition(":")
    if name not in METHODS or (weight and "crf_weight" not in METHODS[name]):
        raise SystemExit(f"unknown method {method!r}: one of {', '.join(METHODS)} (crf:W and pl_crf:W take a weight)")
    try:
        return {**METHODS[name], **({"crf_weight": float(weight)} if weight else {})}
    except ValueError:
        raise SystemExit(f"{method!r}: the weight after ':' must be a number") from None


def run_one(setting: str, method: str, seed: int, train_p, test_p, base: TrainConfig, sparse, device: str) -> dict:
    data = make_training_data(train_p, sparse="dense") if method == "full" else sparse(seed)
    cfg = base.replace(**method_config(method), seed=seed, library=False, eval_model="ema",
                       checkpoint_dir=tempfile.mkdtemp(prefix=f"semisup_{setting}_{method.replace(':', '_')}_"))
    t = time.perf_counter()
    res = run_training(cfg, data)
    train_s = time.perf_counter() - t
    patch = cfg.patch_for(cfg.model.spatial_dims)
    times = [h["step_time_s"] for h in res.history if h.get("event") == "step"]
    ratios = [h["pl_mask_ratio"] for h in res.history if h.get("pl_mask_ratio") is not None]
    out = {"setting": setting, "method": method, "seed": seed, "steps": res.steps, "train_s": round(train_s, 1),
           "step_s": round(statistics.median(times), 4) if times else None,
           "dice": round(score(res.model, res.norm, test_p, patch, device), 2),
           "dice_ema": round(score(res.teacher, res.norm, test_p, patch, device), 2) if res.teacher else None,
           "pl_mask_ratio_end": round(ratios[-1], 3) if ratios else None,
           "semi": load_checkpoint(res.last_checkpoint).meta["train_config"]["semi"]}  # what "auto" chose
    print("  " + json.dumps(out), flush=True)
    return out


def summarise(rows: list[dict], setting: str, methods: list[str]) -> dict:
    def of(method: str, key: str = "dice") -> list[float]:
        return [r[key] for r in sorted(rows, key=lambda r: r["seed"]) if r["setting"] == setting
                and r["method"] == method and r[key] is not None]

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.2f} +- {statistics.stdev(v):.2f}" if len(v) > 1 else (
            f"{v[0]:.2f}" if v else "-")

    out: dict = {"setting": setting}
    for m in methods:
        if of(m):
            out[m] = ms(of(m))
            out[f"{m}_ema"] = ms(of(m, "dice_ema"))
            out[f"{m}_steps"] = ms([float(s) for s in of(m, "steps")])
    sup = of("sup")
    for m in [m for m in methods if m not in ("sup", "full")]:
        if of(m) and len(of(m)) == len(sup):
            gains = [a - b for a, b in zip(of(m), sup)]
            out[f"gain_{m}"] = round(statistics.mean(gains), 2)
            out[f"gain_{m}_sd"] = round(statistics.stdev(gains), 2) if len(gains) > 1 else None
            out[f"gain_{m}_per_seed"] = [round(g, 2) for g in gains]
    if of("sup", "dice_ema") and len(of("sup", "dice_ema")) == len(sup):
        out["gain_ema_over_student_sup"] = round(statistics.mean(
            [a - b for a, b in zip(of("sup", "dice_ema"), sup)]), 2)
    for m in [m for m in methods if m not in ("sup", "full")]:
        if of(m, "step_s") and of("sup", "step_s"):
            out[f"step_ratio_{m}"] = round(statistics.median(of(m, "step_s")) / statistics.median(of("sup", "step_s")),
                                           3)
    print(f"{setting}: " + json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test, < 2 min")
    ap.add_argument("--settings", default="monuseg_1pct,monuseg_local",
                    help="comma-separated: monuseg_5pct, monuseg_1pct, monuseg_local, isbi_5pct, la_3d_coarse, la_3d")
    ap.add_argument("--methods", default="sup,auto,full", help=f"comma-separated: {', '.join(METHODS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=float, default=100.0, help="training seconds per run (equal wall-clock)")
    ap.add_argument("--paper", action="store_true",
                    help="la_3d with UA-MT's protocol (6000 steps, not a time budget; GPU): --settings la_3d "
                         "--methods sup,mt --paper")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 2, --quick 1)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="a TrainConfig override for every run, e.g. pl_threshold=0.95 (repeatable)")
    args = ap.parse_args()
    threads = args.threads or (1 if args.quick else 2)
    torch.set_num_threads(threads)
    root = Path(args.data)
    if not root.is_dir():
        raise SystemExit(f"no data at {root} (../shared/data)")
    if args.paper and not torch.cuda.is_available():
        raise SystemExit("--paper needs a CUDA GPU (6000 3D iterations); run la_3d_coarse on a CPU instead")
    budget = 8.0 if args.quick else args.budget
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        method_config(m)  # a typo ends the run before any training
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    t0 = time.perf_counter()
    rows, summaries = [], []
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        train_p, test_p, base, sparse = setting_data(setting, root, args.quick, args.paper)
        timing = {} if args.paper else {"steps": 10**9, "time_budget_s": budget}
        base = base.replace(**timing, device=args.device, threads=threads, val_fraction=0.0, val_every=10**9,
                            num_workers=1, **overrides)
        for seed in seeds:
            for m in methods:
                rows.append(run_one(setting, m, seed, train_p, test_p, base, sparse, args.device))
        summaries.append(summarise(rows, setting, methods))
    by = {s["setting"]: s for s in summaries}
    semi = "auto" if "auto" in methods else "pl"  # the default method (the CLI's and widget's), else the candidate
    gains = [s[f"gain_{semi}"] for s in summaries if f"gain_{semi}" in s]
    ratios = [s[f"step_ratio_{semi}"] for s in summaries if f"step_ratio_{semi}" in s]

    def mean_of(setting: str, method: str) -> float | None:
        v = [r["dice"] for r in rows if r["setting"] == setting and r["method"] == method]
        return round(statistics.mean(v), 2) if v else None

    print(f"total {time.perf_counter() - t0:.0f} s on {'cuda' if torch.cuda.is_available() else 'cpu'} "
          f"({threads} threads, {budget:.0f} s per run){' [quick]' if args.quick else ''}")
    print("RESULT " + json.dumps({
        "method": semi, "gain_1pct": by.get("monuseg_1pct", {}).get(f"gain_{semi}"),
        "gain_localised": by.get("monuseg_local", {}).get(f"gain_{semi}"),
        "min_gain": min(gains) if gains else None,
        "step_ratio": round(statistics.median(ratios), 3) if ratios else None,
        "sup_1pct": mean_of("monuseg_1pct", "sup"), "semi_1pct": mean_of("monuseg_1pct", semi),
        "full_1pct": mean_of("monuseg_1pct", "full"), "budget_s": budget, "seeds": seeds,
        "settings": list(by)}))


if __name__ == "__main__":
    main()
