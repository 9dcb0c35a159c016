"""Probe for issue 18 (not the product's path): does a distance-map output help instances at a fixed CPU budget?

A standalone training loop, so that the question is answered before the training, prediction and objects code
carry a regression output: the default U-Net (``build_model``) on the 20 MoNuSeg training images of
``bench_instances`` (random 256 x 256 crops, rotations and flips, batch 8, AdamW, cosine learning rate, bfloat16
autocast on a CPU that has it), trained for ``--budget`` seconds with the 3-class target the product uses (2-px
rims of the ground-truth components as boundary) and, with ``--arm dist``, a fourth output: each object's
Euclidean distance to its edge over its maximum (0 outside objects, 1 at its centre; Naylor et al. 2018,
HoVer-Net's normalised distance), mean-squared error on its sigmoid, weight 2. By default no separation weights,
no zoom, no stain handling: its AJI is then below the product's; compare arms of this loop with each other.
``--contact W`` adds the product's separation weights (``training.contact.ContactWeights``, radius 5) to the
cross-entropy, and ``--zooms`` predicts each held-out image at a given zoom (e.g. the ones the product's
``zoom="auto"`` chose), its output resized back: with both the recipe reaches the product's AJI.

Scored on the 10 held-out images (MONAI's sliding window, 256 px, overlap 0.25, Gaussian, bfloat16 where training used it), AJI / F1 at IoU 0.5
/ PQ against the components of the masks, for:
- ``cls``: the product's recipe (``find_objects`` on the 3-class argmax, min seed and size 10 px);
- ``dist_peaks`` (``--arm dist``): markers at the local maxima of the distance map (Gaussian sigma 1 px, at
  least 4 px apart, above 0.2) within each foreground component, watershed of the negated map in the
  foreground (nucleus + boundary of the argmax);
- ``dist_tT``: markers = components of the distance map above T inside the foreground, the same watershed.

    python benchmarks/probe_distance_head.py --arm cls --seed 0 --budget 600
    python benchmarks/probe_distance_head.py --arm dist --seed 0 --budget 600
    python benchmarks/probe_distance_head.py --arm dist --seed 0 --budget 600 --contact 10 \
        --zooms 1.14,1.22,1.02,1.00,2.00,1.63,1.31,1.24,1.04,1.24
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_instances as B  # noqa: E402

from napari_medseg.models.config import ModelConfig  # noqa: E402
from napari_medseg.models.registry import build_model  # noqa: E402
from napari_medseg.objects.instances import find_objects  # noqa: E402
from napari_medseg.objects.metrics import instance_scores  # noqa: E402

PATCH, BATCH, LR, DIST_WEIGHT = 256, 8, 2e-3, 2.0


def pixels(src) -> np.ndarray:
    return np.asarray(src.levels[0]) if hasattr(src, "levels") else np.asarray(src)


def targets(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3-class target: 0 background, 1 nucleus, 2 its 2-px rim; normalised distance map) of a binary mask."""
    from skimage.segmentation import find_boundaries

    lab, _ = ndi.label(mask > 0)
    rim = ndi.binary_dilation(find_boundaries(lab, mode="inner")) & (lab > 0)
    cls = np.where(lab > 0, np.where(rim, 2, 1), 0).astype(np.int64)
    dist = np.zeros(mask.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(lab), 1):
        if sl is None:
            continue
        inside = lab[sl] == i
        d = ndi.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        if d.max() > 0:
            dist[sl][inside] = (d / d.max())[inside]
    return cls, dist


class Crops:
    def __init__(self, pairs, rng: np.random.Generator) -> None:
        self.rng = rng
        self.imgs = [pixels(p.image).astype(np.float32) / 255.0 for p in pairs]
        self.tgts = [targets(pixels(p.mask)) for p in pairs]
        self.mean = np.mean([i.reshape(-1, 3).mean(0) for i in self.imgs], 0)
        self.std = np.mean([i.reshape(-1, 3).std(0) for i in self.imgs], 0)

    def normalise(self, img: np.ndarray) -> np.ndarray:
        return (img - self.mean) / self.std

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xs, cs, ds = [], [], []
        for _ in range(BATCH):
            k = self.rng.integers(len(self.imgs))
            im, (c, d) = self.imgs[k], self.tgts[k]
            y0, x0 = (int(self.rng.integers(0, s - PATCH + 1)) for s in im.shape[:2])
            win = (slice(y0, y0 + PATCH), slice(x0, x0 + PATCH))
            a, b, e = im[win], c[win], d[win]
            r = int(self.rng.integers(4))
            a, b, e = np.rot90(a, r), np.rot90(b, r), np.rot90(e, r)
            if self.rng.random() < 0.5:
                a, b, e = a[:, ::-1], b[:, ::-1], e[:, ::-1]
            xs.append(self.normalise(a).transpose(2, 0, 1))
            cs.append(b)
            ds.append(e)
        return tuple(torch.from_numpy(np.ascontiguousarray(np.stack(v))) for v in (xs, cs, ds))  # type: ignore


def train(arm: str, crops: Crops, budget: float, contact: float = 0.0) -> tuple[torch.nn.Module, int]:
    net = build_model(ModelConfig(name="unet", spatial_dims=2, in_channels=3, out_channels=4 if arm == "dist" else 3))
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    from napari_medseg.models.devices import cpu_bf16_native

    dtype = torch.bfloat16 if cpu_bf16_native() else None
    from napari_medseg.training.contact import ContactWeights

    weigh = ContactWeights([2], contact, 5) if contact else None  # store values: 1 background, 2 nucleus, 3 rim
    t0, steps = time.time(), 0
    net.train()
    while time.time() - t0 < budget:
        for g in opt.param_groups:
            g["lr"] = LR * 0.5 * (1 + math.cos(math.pi * (time.time() - t0) / budget))
        x, c, d = crops.batch()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = net(x.float())
        out = out.float()
        pr = out[:, :3].softmax(1)
        oh = F.one_hot(c, 3).permute(0, 3, 1, 2).float()
        dice = ((2 * (pr * oh).sum((0, 2, 3)) + 1) / (pr.sum((0, 2, 3)) + oh.sum((0, 2, 3)) + 1)).mean()
        if weigh is None:
            ce = F.cross_entropy(out[:, :3], c)
        else:
            w = weigh(c + 1)
            ce = (F.cross_entropy(out[:, :3], c, reduction="none") * w).sum() / w.sum()
        loss = ce + 1 - dice
        if arm == "dist":
            loss = loss + DIST_WEIGHT * F.mse_loss(torch.sigmoid(out[:, 3]), d.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps


def distance_objects(dist: np.ndarray, fg: np.ndarray, threshold: float | None) -> np.ndarray:
    """Watershed of the negated distance map in ``fg`` from its peaks (``threshold`` None: the smoothed map's) or
    from the components of ``dist > threshold`` (then objects under 10 px are dropped)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if threshold is None:
        dist = ndi.gaussian_filter(dist, 1.0)
        peaks = peak_local_max(dist, min_distance=4, threshold_abs=0.2, labels=ndi.label(fg)[0], exclude_border=False)
        markers = np.zeros(fg.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        return watershed(-dist, markers, mask=fg)
    markers = ndi.label((dist > threshold) & fg)[0]
    lab = watershed(-dist, markers, mask=fg)
    small = np.flatnonzero(np.bincount(lab.ravel()) < B.MIN_SIZE)
    return np.where(np.isin(lab, small[small > 0]), 0, lab)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", choices=("cls", "dist"), default="dist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds")
    ap.add_argument("--contact", type=float, default=0.0,
                    help="separation weight (training/contact.py, radius 5); the product's default is 10")
    ap.add_argument("--zooms", default="", help="comma-separated zoom per held-out image, in the order of "
                    "bench_semisup's split (G9 x4, HE x3, KB, NH, RD), each predicted at its zoom and resized back, "
                    "e.g. the ones the product's zoom='auto' chose; empty: zoom 1")
    a = ap.parse_args()
    from monai.inferers import sliding_window_inference

    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    train_p, test_p, _, _ = B.setting_data("monuseg_5pct", B.DATA, quick=False)
    crops = Crops(train_p, np.random.default_rng(a.seed))
    net, steps = train(a.arm, crops, a.budget, a.contact)
    zooms = [float(z) for z in a.zooms.split(",")] if a.zooms else [1.0] * len(test_p)
    from napari_medseg.models.devices import cpu_bf16_native

    bf16 = cpu_bf16_native()
    rows: dict[str, list[dict]] = {}
    for p, zoom in zip(test_p, zooms, strict=True):
        x = torch.from_numpy(crops.normalise(pixels(p.image).astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            size = x.shape[-2:]
            if zoom != 1.0:
                x = F.interpolate(x, scale_factor=zoom, mode="bilinear", align_corners=False)
            o = sliding_window_inference(x, (PATCH, PATCH), BATCH, net, overlap=0.25, mode="gaussian").float()
            if zoom != 1.0:
                o = F.interpolate(o, size=size, mode="bilinear", align_corners=False)
            o = o[0]
        gt = ndi.label(pixels(p.mask) > 0)[0]
        pred = o[:3].argmax(0).numpy().astype(np.uint8)
        found = {"cls": find_objects(pred, B.SCHEMA, min_size=B.MIN_SIZE, min_seed=B.MIN_SIZE).labels}
        if a.arm == "dist":
            dist = torch.sigmoid(o[3]).numpy()
            found["dist_peaks"] = distance_objects(dist, pred > 0, None)
            for t in (0.3, 0.4, 0.5):
                found[f"dist_t{t}"] = distance_objects(dist, pred > 0, t)
        for k, lab in found.items():
            rows.setdefault(k, []).append(instance_scores(gt, lab))
    res: dict = {"arm": a.arm, "seed": a.seed, "steps": steps, "budget_s": a.budget, "contact": a.contact,
                 "zooms": a.zooms or None}
    for k, v in rows.items():
        res[k] = {m: round(float(np.mean([s[m] for s in v])), 4) for m in ("aji", "f1_50", "pq")}
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
