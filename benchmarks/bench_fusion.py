"""Multimodal fusion on the synthetic "bright in ch0 AND bright in ch1" task (napari_medseg/samples/multimodal.py).

For each contrast variant ("same": both modalities bright on dark; "different": channel 1 dark-on-bright on
another scale, noisier, with a bias field) and each seed, trains for a fixed number of steps (batch 4, Adam 3e-3,
CE + soft Dice, per-channel z-score) and reports held-out Dice of:

- ``ch0`` / ``ch1``: a U-Net seeing one channel (cannot solve the task: its ceiling is < 0.7);
- ``early``: a U-Net with both channels as input channels (early fusion);
- ``late``: ``fusion_unet`` (one encoder per channel, fused per level; about 4x the U-Net's parameters);
- ``early_wide``: the early-fusion U-Net at twice the widths (about the late model's parameters), so a gain of
  ``late`` over ``early`` is not just capacity.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_fusion.py --quick          # 2D, 1 seed, 120 steps
    OMP_NUM_THREADS=1 python benchmarks/bench_fusion.py                  # 2D, 3 seeds, 300 steps
    OMP_NUM_THREADS=1 python benchmarks/bench_fusion.py --dims 3 --steps 150 --seeds 1

Ends with ``RESULT {"early_dice_both": ..., "late_minus_early_different": ...}`` (Dice points for the gain).
Wall-clock times are per run on a shared machine: noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_medseg.models import ModelConfig, build_model
from napari_medseg.samples.multimodal import two_modality_and


def _zscore(x: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, x.ndim))
    return (x - x.mean(axis=axes, keepdims=True)) / x.std(axis=axes, keepdims=True)


def _data(n: int, seed: int, contrast: str, shape: tuple[int, ...]):
    xs, ys = zip(*[two_modality_and(shape, seed=seed + i, contrast=contrast) for i in range(n)])
    return torch.from_numpy(np.stack([_zscore(x) for x in xs])), torch.from_numpy(np.stack(ys)).long()


def run(name: str, chans: list[int], contrast: str, steps: int, seed: int, shape: tuple[int, ...],
        widths: tuple[int, ...]) -> tuple[float, float, int]:
    """(held-out Dice, seconds, parameters)."""
    torch.manual_seed(seed)
    xtr, ytr = _data(16, 100 + 1000 * seed, contrast, shape)
    xte, yte = _data(6, 90000 + 1000 * seed, contrast, shape)
    xtr, xte = xtr[:, chans], xte[:, chans]
    cfg = ModelConfig(name=name, spatial_dims=len(shape), in_channels=len(chans), out_channels=2, channels=widths,
                      num_res_units=1)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (4 if len(shape) == 2 else 2,), generator=g)
        out = model(xtr[idx])
        p, y = out.softmax(1)[:, 1], (ytr[idx] == 1).float()
        loss = F.cross_entropy(out, ytr[idx]) + 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xte[i:i + 2]) for i in range(0, len(xte), 2)]).argmax(1) == 1
    truth = yte == 1
    dice = 2 * (pred & truth).sum().item() / max(1, pred.sum().item() + truth.sum().item())
    return dice, secs, sum(q.numel() for q in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 120 steps")
    ap.add_argument("--dims", type=int, choices=(2, 3), default=2)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or (120 if args.quick else 300)
    seeds = args.seeds or (1 if args.quick else 3)
    shape = (64, 64) if args.dims == 2 else (32, 48, 48)
    widths = (8, 16, 32) if args.dims == 2 else (8, 16, 32)
    wide = tuple(2 * w for w in widths)
    arms = {"ch0": ("unet", [0], widths), "ch1": ("unet", [1], widths), "early": ("unet", [0, 1], widths),
            "late": ("fusion_unet", [0, 1], widths), "early_wide": ("unet", [0, 1], wide)}
    table: dict[str, dict[str, list[float]]] = {}
    for contrast in ("same", "different"):
        for arm, (name, chans, w) in arms.items():
            dices = []
            for seed in range(seeds):
                d, secs, n = run(name, chans, contrast, steps, seed, shape, w)
                dices.append(d)
                print(f"{contrast:9s} {arm:5s} seed {seed}: Dice {d:.3f}  {secs:5.1f} s  {n} params", flush=True)
            table.setdefault(contrast, {})[arm] = dices
    print(f"\n{args.dims}D {shape}, {steps} steps, {seeds} seed(s): mean Dice (min..max)")
    for contrast, row in table.items():
        print(f"  {contrast:9s} " + "  ".join(f"{a} {statistics.mean(v):.3f} ({min(v):.3f}..{max(v):.3f})"
                                             for a, v in row.items()))
    mean = {c: {a: statistics.mean(v) for a, v in row.items()} for c, row in table.items()}
    print("RESULT " + json.dumps({
        "early_dice_both": round(mean["same"]["early"], 4),
        "best_single_channel_dice": round(max(mean["same"]["ch0"], mean["same"]["ch1"]), 4),
        "late_dice_both": round(mean["same"]["late"], 4),
        "late_minus_early_same": round(100 * (mean["same"]["late"] - mean["same"]["early"]), 2),
        "late_minus_early_different": round(100 * (mean["different"]["late"] - mean["different"]["early"]), 2),
        "late_minus_early_wide_different": round(100 * (mean["different"]["late"]
                                                        - mean["different"]["early_wide"]), 2),
    }))


if __name__ == "__main__":
    main()
