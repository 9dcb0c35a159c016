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
  (``light_speedup_1stream`` = light_unet's / unet's, one stream on ``--threads`` threads). Then once more with
  model streams (``--streams``, default ``auto``: one torch thread each, as ``napari-medseg predict`` and the
  Predict widget do by default): ``mpix_s_streams``, and ``light_speedup`` = light_unet's / unet's on that, the
  path a user gets (``--streams 1`` measures one stream only, and ``light_speedup`` is then that one's).
  ``model_ms``: the model alone on one batch of 4 windows,
  channels-last (median of 11 rounds; ``light_model_speedup`` = unet's / light_unet's): the gap to
  ``light_speedup`` is the pipeline around the model (reading, normalising, blending, writing).
- ``--datasets``: where Dice is measured (``_zoo_data.py``): ``isbi`` (the default; keys below without a prefix),
  ``monuseg`` (H&E nuclei, RGB) and ``la3d`` (the left atrium at 1.25 mm, 3D, the models with a 3D form), with
  keys ``monuseg_dice``, ``la3d_dice`` ... per model. Step time and prediction speed are 2D (3D-only models:
  parameters and Dice only).
- ``dice``: ISBI 2012 EM membranes (``../shared/data/isbi2012_em``; raw 0 = membrane is the class, as
  ``_reference.isbi_ref``): dense labels of images 00-19, patch 256, batch 8, the default TrainConfig otherwise,
  trained for ``--budget`` seconds (the schedule follows the elapsed share: equal wall-clock, not equal steps),
  then the weight average the checkpoint predicts with is scored on the held-out images 20-29 by sliding-window
  prediction: foreground Dice, IoU, surface Dice (1 px) and HD95 per image, mean (percent; HD95 in px), mean
  over ``--seeds``. ``light_dice_drop`` = UNet Dice - light_unet Dice in points (positive: the light model is
  worse). Skipped (null) when ``../shared`` is absent.
- ``ckpt_mem_ratio``: gradient checkpointing's activation memory with / without for the 3D UNet at 96^3, from
  ``benchmarks/_ckpt_memory.measure()`` where that module exists (null otherwise; ``--quick``: 48^3).
- ``dann_target_gain`` / ``dann_source_drop``: domain adaptation needs its own source/target split and runs
  (``benchmarks/bench_domain.py``); they are its last full run's figures (``_cache/last_domain_result.json``),
  with that run's setting, steps, seeds and date under ``dann_from``, or null when it has not run here.

Run it on a quiet machine: with other jobs on a 2-core machine, 2-thread runs are erratic (threads wait for
each other) and punish the light model's many small operations most (docs/models.md, "A light model for CPUs").

Last line: ``RESULT {"light_param_ratio", "light_speedup", "light_dice_drop", "ckpt_mem_ratio",
"dann_target_gain", "dann_source_drop", "models": {name: {...}}, ...}``.
"""

from __future__ import annotations

import argparse
import json
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


def _cfg(name: str, dims: int = 2, channels: int = 1):
    return preset(name, "small", spatial_dims=dims, in_channels=channels, out_channels=2)


def has_dims(name: str, dims: int) -> bool:
    from napari_medseg.models.registry import _REGISTRY

    return dims in _REGISTRY[name].dims


def params(names: list[str]) -> dict[str, int]:
    """Parameters of the 2D form (the 3D form for a 3D-only model)."""
    return {n: sum(p.numel() for p in build_model(_cfg(n, 2 if has_dims(n, 2) else 3)).parameters())
            for n in names}


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


def last_domain() -> dict:
    """The DANN keys of ``bench_domain.py``'s last full run (see module), or nulls."""
    path = Path(__file__).resolve().parent / "_cache" / "last_domain_result.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"dann_target_gain": None, "dann_source_drop": None, "dann_from": None}
    return {"dann_target_gain": d.get("dann_target_gain"), "dann_source_drop": d.get("dann_source_drop"),
            "dann_from": {k: d.get(k) for k in ("setting", "steps", "seeds", "date")}}


def predict_speed(names: list[str], size: int, rounds: int, folder: Path, streams: int | str = 1) -> dict[str, float]:
    """Best MPix/s of the tiled predictor per model on one synthetic ``size`` x ``size`` image (``streams``:
    ``predict``'s model streams)."""
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
          "device": "cpu", "streams": streams}
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
    ap.add_argument("--streams", default="auto", help="also predict with this many model streams ('auto': --threads), "
                    "as napari-medseg predict does by default (light_speedup); 1: one stream only")
    ap.add_argument("--reps", type=int, default=3, help="timed training steps per model")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: step, predict, dice, ckpt")
    ap.add_argument("--datasets", default="isbi", help="comma-separated Dice datasets: isbi, monuseg, la3d "
                    "(_zoo_data.py; la3d only for the models with a 3D form)")
    a = ap.parse_args(argv)
    a.streams = a.streams if a.streams == "auto" else int(a.streams)
    torch.set_num_threads(a.threads)
    names = a.models.split(",") if a.models else available_models()
    if "unet" not in names:
        names = ["unet", *names]
    skip = set(filter(None, a.skip.split(",")))
    seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    t0 = time.perf_counter()
    rows: dict[str, dict] = {n: {"params": p} for n, p in params(names).items()}
    print("params: " + ", ".join(f"{n} {r['params'] / 1e3:.1f} k" for n, r in rows.items()), flush=True)
    flat = [n for n in names if has_dims(n, 2)]  # step time and 2D prediction: the models with a 2D form
    if "step" not in skip:
        st = step_times(flat, 2 if a.quick else 8, 128 if a.quick else 256, 1 if a.quick else a.reps)
        for n, s in st.items():
            rows[n].update(step_s=round(s, 3), step_ratio=round(s / st["unet"], 3))
        print("step s: " + ", ".join(f"{n} {s:.3f}" for n, s in st.items()), flush=True)
    if "predict" not in skip:
        # the model alone first: timed after the predictor's runs, it came out erratic on the shared VM
        mt = model_times(flat, 3 if a.quick else 11)
        for n, v in mt.items():
            rows[n].update(model_ms=round(v, 2))
        print("model alone, 4 x 256^2, ms: " + ", ".join(f"{n} {v:.1f}" for n, v in mt.items()), flush=True)
        size = 512 if a.quick else a.size
        sp = predict_speed(flat, size, 1 if a.quick else a.rounds, Path(tempfile.mkdtemp(prefix="bench-zoo-")))
        for n, v in sp.items():
            rows[n].update(mpix_s=round(v, 2))
        print(f"predict {size}^2 MPix/s: " + ", ".join(f"{n} {v:.2f}" for n, v in sp.items()), flush=True)
        if a.streams != 1:  # the same again with model streams (one torch thread each), side by side
            sp = predict_speed(flat, size, 1 if a.quick else a.rounds, Path(tempfile.mkdtemp(prefix="bench-zoo-")),
                               streams=a.streams)
            for n, v in sp.items():
                rows[n].update(mpix_s_streams=round(v, 2))
            print(f"predict {size}^2 MPix/s, streams {a.streams}: " + ", ".join(f"{n} {v:.2f}" for n, v in sp.items()),
                  flush=True)
    from _zoo_data import DATASETS, available, scores

    budget = 10.0 if a.quick else a.budget
    isbi_ok = False
    for dname in filter(None, a.datasets.split(",")):
        if "dice" in skip:
            break
        if dname not in DATASETS:
            raise SystemExit(f"unknown dataset {dname!r}; choose from {', '.join(DATASETS)}")
        ds = DATASETS[dname]
        if not available(ds):
            print(f"SKIP Dice on {dname}: {DATA / ds.folder} is absent", flush=True)
            continue
        isbi_ok = isbi_ok or dname == "isbi"
        dn = [n for n in names if has_dims(n, ds.dims) and (not a.quick or n in ("unet", "light_unet"))]
        print(f"{dname}: {budget:.0f} s of training per model and seed, seeds {seeds}: {', '.join(dn)}", flush=True)
        for n, r in scores(ds, dn, _cfg, seeds, budget, a.threads, a.quick).items():
            rows[n].update(r if dname == "isbi" else {f"{dname}_{k}": v for k, v in r.items()})
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
    speedup_default = ratio("mpix_s_streams") if a.streams != 1 else ratio("mpix_s")
    result = {"light_param_ratio": ratio("params"), "light_speedup": speedup_default, "light_dice_drop": drop,
              "ckpt_mem_ratio": ck.get("ckpt_mem_ratio") if ck else None,
              **last_domain(),
              "light_speedup_1stream": ratio("mpix_s"), "streams": a.streams,
              "light_step_ratio": ratio("step_s"), "light_model_speedup": ratio("model_ms", inverse=True),
              "ckpt_patch": (ck or {}).get("patch"),
              "budget_s": None if "dice" in skip else budget, "datasets": a.datasets, "isbi_scored": isbi_ok,
              "seeds": seeds, "threads": a.threads, "quick": a.quick, "models": rows}
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
