"""The human side of a bioimage.io package: its README (data, metrics, intended use, validation) and its cover
(the test image beside the model's prediction of it, 2:1 as the model zoo shows covers)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medseg.core.classes import ClassSchema
from napari_medseg.models.checkpoint import Checkpoint

# Papers to cite per architecture (the bioimage.io spec asks for at least one citation).
CITATIONS: dict[str, tuple[str, str | None, str | None]] = {
    "unet": ("Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
             "MICCAI 2015.", "10.1007/978-3-319-24574-4_28", None),
    "attention_unet": ("Oktay et al. Attention U-Net: Learning Where to Look for the Pancreas. MIDL 2018.",
                       "10.48550/arXiv.1804.03999", None),
    "unetpp": ("Zhou et al. UNet++: A Nested U-Net Architecture for Medical Image Segmentation. DLMIA 2018.",
               "10.1007/978-3-030-00889-5_1", None),
    "swin_unet": ("Cao et al. Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation. ECCV "
                  "Workshops 2022.", "10.1007/978-3-031-25066-8_9", None),
    "swin_unetr": ("Hatamizadeh et al. Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors "
                   "in MRI Images. BrainLes 2021.", "10.1007/978-3-031-08999-2_22", None),
}
MONAI = ("Cardoso et al. MONAI: An open-source framework for deep learning in healthcare. 2022.",
         "10.48550/arXiv.2211.02701", None)


def citations(architecture: str) -> list[tuple[str, str | None, str | None]]:
    return [CITATIONS.get(architecture, MONAI), MONAI] if architecture in CITATIONS else [MONAI]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def readme(ckpt: Checkpoint, *, name: str, description: str, pixel: str, formats: tuple[str, ...],
           test_size: tuple[int, ...]) -> str:
    """The package's README.md: what the model does, on what data, how well, and how to use and check it."""
    cfg, m = ckpt.model_config, ckpt.meta
    classes = ", ".join(ckpt.classes.names[1:])
    images = m.get("images") or []
    data = ("\n".join(f"- `{i}`" for i in images[:20]) + (f"\n- ... and {len(images) - 20} more" if len(images) > 20
                                                           else "")) if images else "- not recorded"
    metrics = [(k, m[k]) for k in ("val_dice", "mean_dice", "hd95") if isinstance(m.get(k), (int, float))]
    mtable = ("| metric | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics)
              if metrics else "No validation metrics were recorded for this model.")
    train = m.get("train_config") or {}
    return f"""# {name}

{description}

Semantic segmentation into: **background, {classes}** (one class per pixel, softmax probabilities per class).
Trained interactively with [napari-medseg](https://github.com/napari-medseg/napari-medseg) from painted labels.

## Model

- architecture: `{cfg.name}` ({cfg.spatial_dims}D, {cfg.in_channels} input channel(s), {cfg.out_channels} output channels)
- input pixel size: {pixel}
- normalisation: {ckpt.norm.mode} (exported as bioimage.io preprocessing steps: per channel `scale_linear`, then `clip` to [0, 1])
- weights formats: {", ".join(formats)}; the PyTorch state dict needs `pip install napari-medseg`
  (`napari_medseg.models.build_model_from_dict`), TorchScript and ONNX need only their runtimes
- training: step {m.get("step", "?")}, patch {m.get("patch_size", "?")}, level {m.get("level", "?")},
  semi-supervised: {train.get("semi", m.get("semi", "?"))}, saved {m.get("saved", "?")}

## Training data

{data}

## Intended use

Research use on images like the training data (same stain or modality, scanner and pixel size). It is not a
medical device and not validated for diagnosis. Predictions on other tissue, stains, scanners or pixel sizes
must be checked by an expert before any use. Tile large images with overlap (the tiled predictor of
napari-medseg blends windows with Gaussian weights).

## Validation

The metrics below were computed by napari-medseg during training on held-out blocks of the painted images
(pixels never used for training); they describe agreement with the painted labels, not with an independent
ground truth. Validate on your own held-out, fully annotated images (Dice per class, HD95) before relying on
the model.

{mtable}

The package carries a test input of {tuple(test_size)} pixels and the output napari-medseg computed for it;
`bioimageio test` (bioimageio.core) reproduces it for every weights format.
"""


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """(C, H, W) raw pixels -> (H, W, 3) uint8 for display (percentile-stretched per channel)."""
    a = np.asarray(img, dtype=np.float32)
    a = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, axis=0)
    out = np.empty(a.shape, np.uint8)
    for i, c in enumerate(a):
        f = c[np.isfinite(c)]
        lo, hi = (np.percentile(f, [1, 99]) if f.size else (0.0, 1.0))
        out[i] = (np.clip((np.nan_to_num(c) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return np.moveaxis(out, 0, -1)


def cover(image: np.ndarray, labels: np.ndarray, classes: ClassSchema) -> np.ndarray:
    """The image (``(C, H, W)``; a 3D input shows its middle slice) beside it with the prediction ``labels``
    (``(H, W)`` class indices) overlaid in the class colors: ``(H, 2W, 3)`` uint8."""
    rgb = _to_uint8(image)
    over = rgb.astype(np.float32)
    colors = classes.prediction_colors(alpha=1.0)
    for k in range(1, classes.n_classes):
        c = colors.get(k)
        if c is None:
            continue
        mask = labels == k
        over[mask] = 0.45 * over[mask] + 0.55 * np.array(c[:3], np.float32) * 255
    return np.concatenate([rgb, over.astype(np.uint8)], axis=1)
