"""Reference checkpoints for the deployment, CRF, distillation and TTA benches, trained once and cached.

``isbi_ref()`` trains the default UNet (the "small" preset) on the 20 training images of ISBI 2012
(``../shared/data/isbi2012_em``, dense labels, membrane = class 1), patch 256, batch 8, 600 steps, seed 0,
as the ``isbi_2d`` reference run of benchmarks/RESULTS.md (about 140 s on 2 quiet cores), and keeps the
checkpoint in the cache folder under a hash of its settings, so every bench reuses the same model. The 10
held-out images (20-29) come back with it for scoring.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ISBI_SETTINGS = {"data": "isbi2012_em", "train": [0, 20], "test": [20, 30], "patch": 256, "batch": 8,
                 "steps": 600, "seed": 0, "model": "unet-small", "version": 1}


@dataclass
class Reference:
    checkpoint: Path
    test: list  # training.datasets.Pair of the held-out images
    train: list
    seconds: float | None  # training time when trained now, None when it came from the cache


def _cache(settings: dict) -> Path:
    from napari_medseg.core.user_folders import cache_folders

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_folders()[0] / "bench-reference" / f"isbi-ref-{key}"


def isbi_ref(threads: int = 2, act: str = "prelu", steps: int | None = None) -> Reference:
    """ISBI-ref (see module); ``act="relu"``: the same run with the quantisation-friendly activation; ``steps``:
    another training length (e.g. an under-trained model for the CRF bench), cached under its own key."""
    import time

    import torch

    from napari_medseg.training import TrainConfig, run_training
    from napari_medseg.training.datasets import load_folder, make_training_data

    s = ISBI_SETTINGS | ({"act": act, "model_base": "train-config-default"} if act != "prelu" else {})
    s = s | ({"steps": int(steps)} if steps is not None else {})
    pairs = load_folder(DATA / s["data"], foreground=[0])  # raw 0 = membrane is the class
    train_p, test_p = pairs[s["train"][0]:s["train"][1]], pairs[s["test"][0]:s["test"][1]]
    folder = _cache(s)
    ckpt = folder / "model.pt"
    if ckpt.is_file():
        return Reference(ckpt, test_p, train_p, None)
    torch.set_num_threads(threads)
    cfg = TrainConfig(model=TrainConfig().model.replace(act=act), patch_size=(s["patch"],), batch_size=s["batch"], steps=s["steps"], seed=s["seed"],
                      val_fraction=0.0, library=False, threads=threads,
                      checkpoint_dir=tempfile.mkdtemp(prefix="isbi-ref-"))
    t = time.perf_counter()
    res = run_training(cfg, make_training_data(train_p, sparse="dense"))
    dt = time.perf_counter() - t
    folder.mkdir(parents=True, exist_ok=True)
    from napari_medseg.models import load_checkpoint, save_checkpoint

    save_checkpoint(ckpt, load_checkpoint(res.best_checkpoint or res.last_checkpoint))
    return Reference(ckpt, test_p, train_p, dt)
