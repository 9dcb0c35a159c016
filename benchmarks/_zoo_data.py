"""The datasets of ``bench_zoo.py``'s Dice columns: every architecture trained for the same wall-clock on
dense labels, scored on held-out images by sliding-window prediction (the weights the checkpoint predicts with).

- ``isbi``: ISBI 2012 EM membranes (raw 0 = membrane is the class), images 00-19 / 20-29, 1 channel, patch 256.
- ``monuseg``: MoNuSeg H&E nuclei (RGB), the first 20 images / the other 10 (``bench_semisup``'s split), patch 256.
- ``la3d``: the left atrium MRI at 1.25 mm (the 0.625 mm volumes halved per axis, ``bench_semisup.downsample``),
  every case but the last 16 / the last 16, 3D, patch 48 (``la_3d_coarse``); only the architectures that
  have a 3D form.

Scores per image: foreground Dice, IoU, surface Dice (1 px or the voxel spacing's tolerance) and HD95 (px or
mm, the image's spacing), mean over images, then over seeds.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str
    dims: int
    channels: int
    patch: int
    batch: int


DATASETS = {
    "isbi": Dataset("isbi", "isbi2012_em", 2, 1, 256, 8),
    "monuseg": Dataset("monuseg", "monuseg_train", 2, 3, 256, 8),
    "la3d": Dataset("la3d", "la2018_mri_train", 3, 1, 48, 4),
}


def available(ds: Dataset) -> bool:
    return (DATA / ds.folder).is_dir()


def _pairs(ds: Dataset, quick: bool):
    from napari_medseg.training.datasets import load_folder

    if ds.name == "la3d":
        from bench_semisup import downsample

        pairs = downsample(load_folder(DATA / ds.folder, limit=6 if quick else None), 2)
        return (pairs[:4], pairs[4:5]) if quick else (pairs[:-16], pairs[-16:])
    pairs = load_folder(DATA / ds.folder, foreground=[0] if ds.name == "isbi" else None)
    return (pairs[:3], pairs[20:21]) if quick else (pairs[:20], pairs[20:30])


def _chw(p) -> np.ndarray:
    a = np.asarray(p.image.levels[0])
    if "C" not in p.image.axes:
        return a[None]
    return np.moveaxis(a, p.image.axes.index("C"), 0)


def scores(ds: Dataset, names: list[str], model_cfg, seeds: list[int], budget: float, threads: int,
           quick: bool, train: dict | None = None) -> dict[str, dict]:
    """Per model: mean over seeds of the held-out mean Dice / IoU / surface Dice (percent), HD95, steps.
    ``train``: further ``TrainConfig`` fields of every run (e.g. a loss)."""
    from napari_medseg.training import TrainConfig, run_training
    from napari_medseg.training.datasets import make_training_data
    from napari_medseg.training.metrics import dense_scores, sliding_window_predict

    train_p, test_p = _pairs(ds, quick)
    patch = (min(ds.patch, 32 if ds.dims == 3 else 128) if quick else ds.patch)
    batch = 2 if quick else ds.batch
    data = make_training_data(train_p, sparse="dense")
    out: dict[str, dict] = {}
    from napari_medseg.models.registry import valid_size

    for n in names:
        runs = []
        mcfg = model_cfg(n, ds.dims, ds.channels)
        p_n = valid_size(mcfg, patch)  # e.g. 64 for a Swin model whose sizes are multiples of 32
        for seed in seeds:
            cfg = TrainConfig(model=mcfg, patch_size=(p_n,), batch_size=batch,
                              steps=10**9, time_budget_s=budget, seed=seed, val_fraction=0.0, val_every=10**9,
                              library=False, threads=threads, num_workers=1,
                              checkpoint_dir=tempfile.mkdtemp(prefix=f"zoo_{ds.name}_{n}_"), **(train or {}))
            res = run_training(cfg, data)
            model = res.teacher if res.teacher is not None else res.model  # what the checkpoint predicts with
            per: dict[str, list[float]] = {"dice": [], "iou": [], "surface_dice": [], "hd95": []}
            for p in test_p:
                prob = sliding_window_predict(model, _chw(p), res.norm, (p_n,) * ds.dims, "cpu", overlap=0.25)
                spacing = p.image.pixel_size if ds.dims == 3 else None  # 2D: px, 1 px tolerance
                s = dense_scores(prob.argmax(0).numpy(), p.mask, 2, spacing)
                for k in per:
                    v = s[k][0]
                    per[k].append(0.0 if math.isnan(v) and k != "hd95" else v)
            row = {k: float(np.nanmean(v)) * (1 if k == "hd95" else 100) for k, v in per.items()}
            row["steps"] = res.steps
            row["patch"] = p_n
            print(f"  {ds.name} {n} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
            runs.append(row)
        out[n] = {k: round(statistics.mean(r[k] for r in runs), 2) for k in runs[0]}
        out[n]["dice_per_seed"] = [round(r["dice"], 2) for r in runs]
        out[n]["hd95_per_seed"] = [round(r["hd95"], 2) for r in runs]
    return out
