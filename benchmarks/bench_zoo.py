"""The model zoo side by side in one process, CPU, 2 threads: parameters, training step time, tiled prediction
throughput and Dice on ISBI 2012 after equal training wall-clock.

    python benchmarks/bench_zoo.py                      # every registered model, 120 s of training each, seed 0
    python benchmarks/bench_zoo.py --models unet,light_unet --seeds 0,1,2    # the light model's Dice claim
    python benchmarks/bench_zoo.py --quick              # smoke run, < 3 min

Every model is the registry's "small" preset (``preset(name)``), 1 input channel, 2 classes, 2D:

- ``params``: its parameters (``light_param_ratio`` = light_unet / unet).
- ``step_ratio``: one training step (forward, cross-entropy, backward; batch 8 of 256 x 256, NCHW as the
  training loop has it on a CPU) relative to the UNet's; every model in turn for ``--reps`` rounds (the
  machine's noise falls on all alike), the median counts.
- ``mpix_s``: ``napari_medseg.inference.predict`` (the plugin's tiled predictor: window 256, overlap 0.25,
  batch 4, Gaussian blending, no tissue mask) on one synthetic ``--size`` x ``--size`` uint8 image (2048),
  megapixels per second; models in alternation for ``--rounds`` rounds, the best round counts
  (``light_speedup`` = light_unet's / unet's). ``model_ms``: the model alone on one batch of 4 windows,
  channels-last (median of 11 rounds; ``light_model_speedup`` = unet's / light_unet's): the gap to
  ``light_speedup`` is the pipeline around the model (reading, normalising, blending, writing).
- ``dice``: ISBI 2012 EM membranes (``../shared/data/isbi2012_em``; raw 0 = membrane is the class, as
  ``_reference.isbi_ref``): dense labels of images 00-19, patch 256, batch 8, the default TrainConfig otherwise,
  trained for ``--budget`` seconds (the schedule follows the elapsed share: equal wall-clock, not equal steps),
  then the weight average the checkpoint predicts with is scored on the held-out images 20-29 by sliding-window
  prediction: foreground Dice, IoU, surface Dice (1 px) and HD95 per image, mean (percent; HD95 in px), mean
  over ``--seeds``. ``light_dice_drop`` = UNet Dice - light_unet Dice in points (positive: the light model is
  worse). Skipped (null) when ``../shared`` is absent.
- ``ckpt_mem_ratio``: gradient checkpointing's activation memory with / without for the 3D UNet at 96^3, from
  ``benchmarks/_ckpt_memory.measure()`` where that module exists (null otherwise; ``--quick``: 48^3).
- ``dann_target_gain`` / ``dann_source_drop``: null: domain adaptation (DANN) is not built.

Run it on a quiet machine: with other jobs on a 2-core machine, 2-thread runs are erratic (threads wait for
each other) and punish the light model's many small operations most (docs/models.md, "A light model for CPUs").

Last line: ``RESULT {"light_param_ratio", "light_speedup", "light_dice_drop", "ckpt_mem_ratio",
"dann_target_gain", "dann_source_drop", "models": {name: {...}}, ...}``.
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_medseg.models import available_models, build_model, preset  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ISBI = "isbi2012_em"


def _cfg(name: str):
    return preset(name, "small", spatial_dims=2, in_channels=1, out_channels=2)


def params(names: list[str]) -> dict[str, int]:
    return {n: sum(p.numel() for p in build_model(_cfg(n)).parameters()) for n in names}


def step_times(names: list[str], batch: int, size: int, reps: int) -> dict[str, float]:
    """Median seconds of one training step per model (round robin after a warm-up step each)."""
    torch.manual_seed(0)
    models = {n: build_model(_cfg(n)).train() for n in names}
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, 2, (batch, size, size))

    def step(m: torch.nn.Module) -> float:
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        m.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    for m in models.values():
        step(m)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(reps):
        for n, m in models.items():
            times[n].append(step(m))
    return {n: statistics.median(v) for n, v in times.items()}


def predict_speed(names: list[str], size: int, rounds: int, folder: Path) -> dict[str, float]:
    """Best MPix/s of the tiled predictor per model on one synthetic ``size`` x ``size`` image."""
    import tifffile

    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.inference.predictor import run_predict
    from napari_medseg.io.reader import open_image
    from napari_medseg.models.normalization import NormConfig

    img = (np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)
    tifffile.imwrite(folder / "synthetic.tif", img, tile=(256, 256))
    src = open_image(folder / "synthetic.tif")
    torch.manual_seed(0)
    models = {n: build_model(_cfg(n)).eval() for n in names}
    best = dict.fromkeys(names, 0.0)
    kw = {"norm": NormConfig.uint8(1), "classes": ClassSchema(names=("background", "foreground")),
          "window": (256, 256), "batch_size": 4, "tissue_mask": False, "overwrite": True, "resume": False,
          "device": "cpu"}
    for _ in range(rounds):
        for n, m in models.items():
            res = run_predict(src, m, folder / f"{n}.zarr", **kw)
            best[n] = max(best[n], float(res.mpix_s))
    return best


def model_times(names: list[str], reps: int) -> dict[str, float]:
    """Median ms of the model alone on one batch of 4 windows of 256 x 256, channels-last input as the predictor
    passes it on a CPU (round robin): what the pipeline around the model costs is the rest of ``mpix_s``."""
    torch.manual_seed(0)
    models = {n: build_model(_cfg(n)).eval() for n in names}
    x = torch.randn(4, 1, 256, 256).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for m in models.values():
            m(x)
        for _ in range(reps):
            for n, m in models.items():
                t = time.perf_counter()
                m(x)
                times[n].append(1e3 * (time.perf_counter() - t))
    return {n: statistics.median(v) for n, v in times.items()}


def isbi_scores(names: list[str], seeds: list[int], budget: float, threads: int, quick: bool) -> dict[str, dict]:
    """Per model: mean over seeds of the held-out mean Dice / IoU / surface Dice (percent), HD95 (px), steps."""
    from napari_medseg.training import TrainConfig, run_training
    from napari_medseg.training.datasets import load_folder, make_training_data
    from napari_medseg.training.metrics import dense_scores, sliding_window_predict

    pairs = load_folder(DATA / ISBI, foreground=[0])  # raw 0 = membrane is the class
    train_p, test_p = (pairs[:3], pairs[20:21]) if quick else (pairs[:20], pairs[20:30])
    patch, batch = (128, 4) if quick else (256, 8)
    data = make_training_data(train_p, sparse="dense")
    out: dict[str, dict] = {}
    for n in names:
        runs = []
        for seed in seeds:
            cfg = TrainConfig(model=_cfg(n), patch_size=(patch,), batch_size=batch, steps=10**9, time_budget_s=budget,
                              seed=seed, val_fraction=0.0, val_every=10**9, library=False, threads=threads,
                              num_workers=1, checkpoint_dir=tempfile.mkdtemp(prefix=f"zoo_{n}_"))
            res = run_training(cfg, data)
            model = res.teacher if res.teacher is not None else res.model  # what the checkpoint predicts with
            per: dict[str, list[float]] = {"dice": [], "iou": [], "surface_dice": [], "hd95": []}
            for p in test_p:
                img = np.asarray(p.image.levels[0])[None]
                prob = sliding_window_predict(model, img, res.norm, (patch, patch), "cpu", overlap=0.25)
                s = dense_scores(prob.argmax(0).numpy(), p.mask, 2, None)  # spacing None: px, 1 px tolerance
                for k in per:
                    v = s[k][0]
                    per[k].append(0.0 if math.isnan(v) and k != "hd95" else v)
            row = {k: float(np.nanmean(v)) * (1 if k == "hd95" else 100) for k, v in per.items()}
            row["steps"] = res.steps
            print(f"  {n} seed {seed}: " + json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
            runs.append(row)
        out[n] = {k: round(statistics.mean(r[k] for r in runs), 2) for k in runs[0]}
        out[n]["dice_per_seed"] = [round(r["dice"], 2) for r in runs]
    return out


def ckpt_memory(quick: bool, threads: int) -> dict | None:
    try:
        from _ckpt_memory import measure
    except ImportError:
        return None
    return measure(size=48, threads=threads, repeats=1, rss=False) if quick else measure(threads=threads)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (< 3 min): small sizes, unet + light_unet Dice")
    ap.add_argument("--models", default=None, help="comma-separated registry names (default: every model)")
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds per model and seed (ISBI Dice)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048, help="side of the synthetic image predicted")
    ap.add_argument("--rounds", type=int, default=3, help="prediction rounds (best counts)")
    ap.add_argument("--reps", type=int, default=3, help="timed training steps per model")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: step, predict, dice, ckpt")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = a.models.split(",") if a.models else available_models()
    if "unet" not in names:
        names = ["unet", *names]
    skip = set(filter(None, a.skip.split(",")))
    seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    t0 = time.perf_counter()
    rows: dict[str, dict] = {n: {"params": p} for n, p in params(names).items()}
    print("params: " + ", ".join(f"{n} {r['params'] / 1e3:.1f} k" for n, r in rows.items()), flush=True)
    if "step" not in skip:
        st = step_times(names, 2 if a.quick else 8, 128 if a.quick else 256, 1 if a.quick else a.reps)
        for n, s in st.items():
            rows[n].update(step_s=round(s, 3), step_ratio=round(s / st["unet"], 3))
        print("step s: " + ", ".join(f"{n} {s:.3f}" for n, s in st.items()), flush=True)
    if "predict" not in skip:
        # the model alone first: timed after the predictor's runs, it came out erratic on the shared VM
        mt = model_times(names, 3 if a.quick else 11)
        for n, v in mt.items():
            rows[n].update(model_ms=round(v, 2))
        print("model alone, 4 x 256^2, ms: " + ", ".join(f"{n} {v:.1f}" for n, v in mt.items()), flush=True)
        size = 512 if a.quick else a.size
        sp = predict_speed(names, size, 1 if a.quick else a.rounds, Path(tempfile.mkdtemp(prefix="bench-zoo-")))
        for n, v in sp.items():
            rows[n].update(mpix_s=round(v, 2))
        print(f"predict {size}^2 MPix/s: " + ", ".join(f"{n} {v:.2f}" for n, v in sp.items()), flush=True)
    isbi_ok = (DATA / ISBI).is_dir()
    if "dice" not in skip and not isbi_ok:
        print(f"SKIP Dice: {DATA / ISBI} is absent", flush=True)
    if "dice" not in skip and isbi_ok:
        dn = [n for n in names if n in ("unet", "light_unet")] if a.quick else names
        budget = 10.0 if a.quick else a.budget
        print(f"ISBI 2012: {budget:.0f} s of training per model and seed, seeds {seeds}", flush=True)
        for n, r in isbi_scores(dn, seeds, budget, a.threads, a.quick).items():
            rows[n].update(r)
    ck = None if "ckpt" in skip else ckpt_memory(a.quick, a.threads)

    def ratio(key: str, inverse: bool = False) -> float | None:
        lt, un = rows.get("light_unet", {}).get(key), rows["unet"].get(key)
        if lt is None or un is None:
            return None
        return round(un / lt if inverse else lt / un, 3)

    drop = None
    if "dice" in rows.get("light_unet", {}) and "dice" in rows["unet"]:
        drop = round(rows["unet"]["dice"] - rows["light_unet"]["dice"], 2)
    for n, r in rows.items():
        print(f"{n:15s} " + "  ".join(f"{k} {v}" for k, v in r.items() if k != "dice_per_seed"), flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s, {a.threads} threads{' [quick]' if a.quick else ''}")
    result = {"light_param_ratio": ratio("params"), "light_speedup": ratio("mpix_s"), "light_dice_drop": drop,
              "ckpt_mem_ratio": ck.get("ckpt_mem_ratio") if ck else None,
              "dann_target_gain": None, "dann_source_drop": None,
              "light_step_ratio": ratio("step_s"), "light_model_speedup": ratio("model_ms", inverse=True),
              "ckpt_patch": (ck or {}).get("patch"),
              "budget_s": None if "dice" in skip or not isbi_ok else (10.0 if a.quick else a.budget),
              "seeds": seeds, "threads": a.threads, "quick": a.quick, "models": rows}
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
