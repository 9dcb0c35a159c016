"""Synthetic images for the training tests: bright blobs on a dark noisy background (2D and 3D)."""

from __future__ import annotations

import numpy as np

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.source import ImageSource
from napari_medseg.models.config import ModelConfig
from napari_medseg.training import TrainConfig, TrainingData, TrainingItem

TINY_2D = ModelConfig(name="unet", spatial_dims=2, channels=(8, 16, 32), num_res_units=1)
TINY_3D = ModelConfig(name="unet", spatial_dims=3, channels=(8, 16), num_res_units=0)


def blobs(shape: tuple[int, ...], n: int = 12, seed: int = 0, radius: tuple[int, int] = (5, 10)
          ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, 0/1 mask) with ``n`` balls."""
    r = np.random.default_rng(seed)
    grid = np.indices(shape)
    m = np.zeros(shape, np.uint8)
    for _ in range(n):
        c = [r.integers(0, s) for s in shape]
        rad = r.integers(*radius)
        d2 = sum((g - ci) ** 2 for g, ci in zip(grid, c))
        m[d2 <= rad**2] = 1
    img = (m * 120 + 60 + r.normal(0, 15, shape)).clip(0, 255).astype(np.uint8)
    return img, m


def sparse_labels(mask: np.ndarray, fraction: float = 0.03, seed: int = 1) -> np.ndarray:
    r = np.random.default_rng(seed)
    lab = np.zeros(mask.shape, np.uint8)
    sel = r.random(mask.shape) < fraction
    lab[sel] = mask[sel] + 1
    return lab


def blob_data(shape: tuple[int, ...] = (96, 96), n_items: int = 1, fraction: float = 0.03, dense: bool = False,
              unlabelled: int = 0, seed: int = 0) -> TrainingData:
    items = []
    for i in range(n_items + unlabelled):
        img, m = blobs(shape, seed=seed + i)
        axes = "YX" if len(shape) == 2 else "ZYX"
        src = ImageSource([img], axes, (1.0,) * len(shape), name=f"blobs{i}")
        lab = sparse_labels(m, fraction, seed + 100 + i) if i < n_items else None
        items.append(TrainingItem(src, lab, m if dense else None, name=f"blobs{i}"))
    return TrainingData(items, ClassSchema())


def tiny_cfg(tmp_path, dims: int = 2, **kw) -> TrainConfig:
    base = dict(model=TINY_2D if dims == 2 else TINY_3D, patch_size=(32,) if dims == 2 else (16,), batch_size=4,
                steps=6, val_every=3, checkpoint_dir=str(tmp_path / "ck"), num_workers=1, prefetch=2,
                warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def trained_blob_model(tmp_path, steps: int = 6, shape: tuple[int, int] = (200, 180), seed: int = 7):
    """(checkpoint path, image) of a tiny 2D U-Net trained ``steps`` steps on blobs, the image (uint8, like its
    data) also written to ``tmp_path/img.tif``; no library entry."""
    import tifffile

    from napari_medseg.training import run_training

    res = run_training(tiny_cfg(tmp_path, steps=steps, library=False), blob_data())
    img, _ = blobs(shape, seed=seed)
    tifffile.imwrite(tmp_path / "img.tif", img)
    return res.best_checkpoint or res.last_checkpoint, img
