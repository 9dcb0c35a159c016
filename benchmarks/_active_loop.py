"""Does "where to paint next" help? The annotate-train loop run twice from the same start: each round's regions
chosen by the model's ranking (``napari_medseg.guidance``) or at random (``bench_loop.py --active-learning``).

Data: ``../shared/data/monuseg_train`` (MoNuSeg H&E nuclei, 30 images of 1000 x 1000, sorted by name): the first
``pool`` images are the unpainted pool, the last ``test`` are never painted and only scored. Regions are the
ranking's grid cells (``--region`` px). Round 0 paints ``--start-regions`` random regions (the same for both
strategies of a seed) and trains a model from scratch; every later round each strategy

1. chooses ``--per-round`` regions of the pool: the best unpainted regions of the ranking of every pool image by the
   last checkpoint (``guidance.run_rank``, on tissue, the cost measured), or as many random unpainted regions of the
   same candidate list (``--al-per-image N``: the ranked choice takes at most N regions of one image, a batch
   spread over the pool; random is left uncapped);
2. paints them as a user would: scribbles over ``--paint-fraction`` of each region's pixels, evenly split between
   nucleus and background (``training.sparsify.scribbles`` on the region's true mask), into the pool image's
   ``LabelStore`` (what the ranking's ``painted`` fraction reads);
3. fine-tunes the last checkpoint for ``--steps`` steps on every painted image (``training.run_training``, the
   plugin's training path, its defaults except patch/batch), and scores mean nucleus Dice (percent) on the held-out
   images with the weight average (what the plugin predicts with).

The paint budget per round is the same for both strategies; steps, not seconds, bound training, so the Dice does
not depend on the machine's load. ``al_gain`` = mean over seeds of (ranked - random) Dice after the last round;
``rank_cost_frac`` = ranking seconds / training seconds of the same round (median).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BG, NUC = 1, 2  # store values


def _regions(shape: tuple[int, int], size: int) -> list[tuple[tuple[int, int], ...]]:
    """The grid of ``size`` px cells over an image (the ranking's grid when nothing grows it)."""
    return [((y, min(y + size, shape[0])), (x, min(x + size, shape[1])))
            for y in range(0, shape[0], size) for x in range(0, shape[1], size)]


def _paint(store: Any, mask: np.ndarray, box: tuple[tuple[int, int], ...], fraction: float, seed: int) -> int:
    """Scribbles over ``fraction`` of ``box`` (truth from ``mask``) written into ``store``; painted pixel count."""
    from napari_medseg.training.sparsify import scribbles

    sl = tuple(slice(a, b) for a, b in box)
    new = scribbles(mask[sl].astype(np.uint8), fraction, seed)
    old = store.read(sl)
    merged = np.where(new > 0, new, old).astype(np.uint8)
    store.write(sl, merged)
    return int((new > 0).sum())


def _train(pool: list, stores: list, base: Any, init: str | None, steps: int, seed: int, threads: int) -> tuple[Any, float]:
    from napari_medseg.training import run_training
    from napari_medseg.training.data import TrainingData, TrainingItem

    items = [TrainingItem(p.image, np.asarray(s.read(tuple(slice(0, n) for n in s.shape))), p.mask, name=p.name)
             for p, s in zip(pool, stores) if s.class_counts().get(NUC, 0) + s.class_counts().get(BG, 0) > 0]
    data = TrainingData(items, _schema())
    cfg = base.replace(steps=steps, seed=seed, threads=threads, library=False,
                       checkpoint_dir=tempfile.mkdtemp(prefix="bench_al_"))
    t = time.perf_counter()
    res = run_training(cfg, data, init=init)
    return res, time.perf_counter() - t


def _score(res: Any, test: list, patch: int) -> float:
    from napari_medseg.models.devices import select_device
    from napari_medseg.training.metrics import dense_scores, sliding_window_predict

    model = res.teacher if res.teacher is not None else res.model
    setup = select_device("cpu")
    out = []
    for p in test:
        img = np.moveaxis(np.asarray(p.image.levels[0]), -1, 0)
        prob = sliding_window_predict(model, img, res.norm, (patch, patch), setup.device, overlap=0.25,
                                      autocast=setup.autocast)
        d, _ = dense_scores(prob.argmax(0).numpy(), p.mask, prob.shape[0], p.image.pixel_size)
        out.append(0.0 if np.isnan(d[0]) else float(d[0]))
    return 100 * float(np.mean(out))


def _rank(pool: list, stores: list, ckpt: str, region: int, threads: int, novelty: float = 0.0
          ) -> tuple[list[tuple[float, int, Any]], float, int]:
    """Every scored region of the pool as (score, image index, RankedRegion), best first; seconds; windows."""
    from napari_medseg.guidance import run_rank

    cands, secs, wins = [], 0.0, 0
    for i, (p, s) in enumerate(zip(pool, stores)):
        r = run_rank(p.image, ckpt, store=s, region_size=region, threads=threads, novelty_weight=novelty)
        secs += r.seconds
        wins += r.windows
        cands += [(reg.score, i, reg) for reg in r.regions]
    cands.sort(key=lambda c: -c[0])
    return cands, secs, wins


def _unpainted(stores: list, cands: list[tuple[float, int, Any]]) -> list[tuple[float, int, Any]]:
    """The candidates not painted now (one ``painted_fraction`` call per image), in their order."""
    from napari_medseg.guidance import painted_fraction
    from napari_medseg.guidance.ranking import PAINTED_MAX

    keep: set[int] = set()
    for i in {c[1] for c in cands}:
        idx = [k for k, c in enumerate(cands) if c[1] == i]
        frac = painted_fraction(stores[i], [cands[k][2].box for k in idx])
        keep.update(k for k, f in zip(idx, frac) if f < PAINTED_MAX)
    return [c for k, c in enumerate(cands) if k in keep]


def _spread(cands: list[tuple[float, int, Any]], n: int, per_image: int) -> list[tuple[float, int, Any]]:
    """The first ``n`` candidates in their order, at most ``per_image`` from one image (0: no cap)."""
    if per_image <= 0:
        return cands[:n]
    taken: dict[int, int] = {}
    out = []
    for c in cands:
        if taken.get(c[1], 0) < per_image:
            taken[c[1]] = taken.get(c[1], 0) + 1
            out.append(c)
            if len(out) == n:
                break
    return out


def run(args: Any, data_dir: Path) -> dict[str, Any]:
    from napari_medseg.labels.store import LabelStore
    from napari_medseg.training.config import TrainConfig
    from napari_medseg.training.datasets import load_folder

    pairs = load_folder(data_dir)
    pool, test = pairs[: args.pool], pairs[len(pairs) - args.test:]
    base = TrainConfig(patch_size=(args.patch,), batch_size=args.batch, eval_model="ema", val_every=10 ** 6,
                       val_first=0)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        stores0 = [LabelStore.in_memory(p.mask.shape[:2], classes=_schema()) for p in pool]
        grid = [(i, b) for i, p in enumerate(pool) for b in _regions(p.mask.shape[:2], args.region)]
        for k in rng.choice(len(grid), args.start_regions, replace=False):
            i, b = grid[int(k)]
            _paint(stores0[i], pool[i].mask, b, args.paint_fraction, seed * 1000 + int(k))
        res0, t0 = _train(pool, stores0, base, None, args.start_steps, seed, args.threads)
        d0 = _score(res0, test, args.patch)
        print(f"  seed {seed} round 0: Dice {d0:.2f} ({t0:.0f} s training)", flush=True)
        for strategy in ("ranked", "random"):
            stores = [LabelStore.in_memory(s.shape, classes=_schema()) for s in stores0]
            for s, s0 in zip(stores, stores0):
                full = tuple(slice(0, n) for n in s0.shape)
                s.write(full, s0.read(full))
            ckpt = res0.last_checkpoint
            rows.append({"seed": seed, "strategy": strategy, "round": 0, "dice": round(d0, 2), "train_s": round(t0, 1)})
            srng = np.random.default_rng(seed + 7)
            for rnd in range(1, args.rounds + 1):
                cands, rank_s, wins = _rank(pool, stores, ckpt, args.region, args.threads, args.novelty)
                cands = _unpainted(stores, cands)
                if strategy == "random":  # in a fixed order first: the random picks do not depend on the scores
                    cands.sort(key=lambda c: (c[1], c[2].box))
                    cands = [cands[int(j)] for j in srng.permutation(len(cands))]
                chosen = _spread(cands, args.per_round, args.per_image if strategy == "ranked" else 0)
                painted = sum(_paint(stores[i], pool[i].mask, reg.box, args.paint_fraction,
                                     seed * 1000 + rnd * 100 + n) for n, (_, i, reg) in enumerate(chosen))
                res, train_s = _train(pool, stores, base, ckpt, args.steps, seed + rnd, args.threads)
                ckpt = res.last_checkpoint
                d = _score(res, test, args.patch)
                row = {"seed": seed, "strategy": strategy, "round": rnd, "dice": round(d, 2),
                       "painted_px": painted, "rank_s": round(rank_s, 1), "rank_windows": wins,
                       "train_s": round(train_s, 1), "mean_uncertainty_chosen":
                       round(float(np.mean([c[2].uncertainty for c in chosen])), 4),
                       "images_chosen": sorted({i for _, i, _ in chosen})}
                rows.append(row)
                print("  " + json.dumps(row), flush=True)
    return summarise(rows, args)


def _schema() -> Any:
    from napari_medseg.core.classes import ClassSchema

    return ClassSchema.default(2)


def summarise(rows: list[dict[str, Any]], args: Any) -> dict[str, Any]:
    last = args.rounds
    by = {(r["seed"], r["strategy"]): r["dice"] for r in rows if r["round"] == last}
    gains = [by[(s, "ranked")] - by[(s, "random")] for s in args.seeds]
    curves = {st: [[r["dice"] for r in rows if r["strategy"] == st and r["seed"] == s] for s in args.seeds]
              for st in ("ranked", "random")}
    ranked = [r for r in rows if r["strategy"] == "ranked" and r["round"] > 0]
    cost = [r["rank_s"] / r["train_s"] for r in ranked if r["train_s"] > 0]
    return {"al_gain": round(float(np.mean(gains)), 2), "al_gain_per_seed": [round(g, 2) for g in gains],
            "al_gain_sd": round(float(np.std(gains)), 2),
            "dice_ranked_last": round(float(np.mean([by[(s, "ranked")] for s in args.seeds])), 2),
            "dice_random_last": round(float(np.mean([by[(s, "random")] for s in args.seeds])), 2),
            "curves": curves, "rank_cost_frac": round(statistics.median(cost), 3) if cost else None,
            "rounds": args.rounds, "per_round": args.per_round, "region": args.region, "steps": args.steps,
            "novelty": args.novelty, "per_image": args.per_image,
            "seeds": list(args.seeds), "rows": rows}


def add_arguments(ap: Any) -> None:
    g = ap.add_argument_group("active learning (--active-learning)")
    g.add_argument("--active-learning", action="store_true",
                   help="headless: regions chosen by the ranking vs at random, from the same start")
    g.add_argument("--al-seeds", default="0,1,2")
    g.add_argument("--al-rounds", type=int, default=3)
    g.add_argument("--per-round", type=int, default=4, help="regions painted per round")
    g.add_argument("--start-regions", type=int, default=4)
    g.add_argument("--region", type=int, default=256)
    g.add_argument("--paint-fraction", type=float, default=0.05)
    g.add_argument("--al-steps", type=int, default=150, help="fine-tuning steps per round")
    g.add_argument("--start-steps", type=int, default=300)
    g.add_argument("--pool", type=int, default=20)
    g.add_argument("--al-threads", type=int, default=2)
    g.add_argument("--al-novelty", type=float, default=0.0, help="novelty weight of the ranking (default 0: off)")
    g.add_argument("--al-per-image", type=int, default=0,
                   help="ranked: at most this many regions of one image per round (default 0: no cap)")


def from_args(args: Any) -> Any:
    """The active-learning settings of ``args`` (``--quick`` shrinks them to a smoke run)."""
    ns = dataclasses.make_dataclass("AL", ["seeds", "rounds", "per_round", "start_regions", "region",
                                           "paint_fraction", "steps", "start_steps", "pool", "test", "threads",
                                           "patch", "batch", "novelty", "per_image"])
    if args.quick:
        return ns([0], 1, 2, 2, 256, args.paint_fraction, 10, 20, 3, 2, args.al_threads, 128, 4, args.al_novelty,
                  args.al_per_image)
    return ns([int(s) for s in args.al_seeds.split(",")], args.al_rounds, args.per_round, args.start_regions,
              args.region, args.paint_fraction, args.al_steps, args.start_steps, args.pool, 10, args.al_threads,
              256, 8, args.al_novelty, args.al_per_image)


def write_plot(path: Path, result: dict[str, Any]) -> None:
    """Held-out Dice per round, mean over seeds, ranked regions against random ones (a QImage: needs a
    QApplication, which ``QGuiApplication`` offscreen gives)."""
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from _gui_probe import save_line_plot
    from qtpy.QtWidgets import QApplication

    _app = QApplication.instance() or QApplication([])
    series = {}
    for name, colour in (("ranked", "#d55e00"), ("random", "#0072b2")):
        curves = np.array(result["curves"][name], float)
        xs = list(range(curves.shape[1]))
        series[f"{name} regions (mean of {curves.shape[0]} seeds)"] = (xs, curves.mean(axis=0).tolist(), colour)
    vals = [v for _, ys, _ in series.values() for v in ys]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_line_plot(path, series, title=f"Where to paint next: {result['per_round']} regions of {result['region']} px "
                   "per round, MoNuSeg", xlabel=f"round ({result['steps']} fine-tuning steps each)",
                   ylabel="held-out nucleus Dice (%)", ylim=(float(np.floor(min(vals) - 1)), float(np.ceil(max(vals) + 1))),
                   size=(720, 420))
