"""Boundary-aware losses at equal training wall-clock: does MONAI's boundary loss or Hausdorff distance-transform
loss, added to the default cross-entropy + Dice, lower HD95 on held-out images with dense labels?

    python benchmarks/bench_boundary.py                                   # ISBI 2012, 90 s per run, 3 seeds
    python benchmarks/bench_boundary.py --datasets isbi,monuseg --budget 120
    python benchmarks/bench_boundary.py --quick                           # smoke run, ~2 min

Every run trains the Train widget's default U-Net (``TrainConfig``'s, 1 or 3 channels) on the dense labels of
``_zoo_data``'s training images for ``--budget`` seconds (the schedule follows the elapsed share, so a loss that
makes steps slower gets fewer of them: the comparison a user sees), with ``boundary_loss`` = none, boundary or
hausdorff (``boundary_weight`` 0.5, ramped in over the first half: the defaults), then the weights the checkpoint
predicts with are scored on the held-out images by sliding-window prediction: Dice, IoU, surface Dice (1 px) and
HD95 (px) per image, mean over images, then over ``--seeds`` (paired: same seed, same data order).

Last line: ``RESULT {"<dataset>": {"<loss>": {"dice", "hd95", "surface_dice", "steps", "dice_per_seed",
"hd95_per_seed"}}, "hd95_change_boundary": ..., "hd95_change_hausdorff": ...}`` (changes: the first dataset's
mean HD95 with the loss minus without, px; negative is better). Nulls when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _zoo_data as zd  # noqa: E402

LOSSES = ("none", "boundary", "hausdorff")


def _model_cfg(name: str, dims: int, channels: int):
    from napari_medseg.training import TrainConfig

    return TrainConfig().model.replace(spatial_dims=dims, in_channels=channels, out_channels=2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="isbi", help="comma-separated: isbi, monuseg")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=float, default=90.0, help="training seconds per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="20 s per run, one seed, small data")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    budget = 20.0 if a.quick else a.budget
    losses = [v.strip() for v in a.losses.split(",") if v.strip()]
    names = [d.strip() for d in a.datasets.split(",") if d.strip()]
    out: dict = {}
    t0 = time.perf_counter()
    for name in names:
        ds = zd.DATASETS[name]
        if not zd.available(ds):
            print(f"skipped {name}: no {zd.DATA / ds.folder}")
            out[name] = None
            continue
        out[name] = {}
        for loss in losses:
            res = zd.scores(ds, ["unet"], _model_cfg, seeds, budget, a.threads, a.quick,
                            train={"boundary_loss": loss})["unet"]
            out[name][loss] = res
        print(f"\n{name}, {budget:.0f} s per run, seeds {seeds}\n| loss | Dice | HD95 (px) | surface Dice | steps |\n"
              "| --- | --- | --- | --- | --- |")
        for loss, r in out[name].items():
            print(f"| {loss} | {r['dice']:.2f} ({', '.join(f'{v:.2f}' for v in r['dice_per_seed'])}) | "
                  f"{r['hd95']:.2f} | {r['surface_dice']:.2f} | {r['steps']:.0f} |", flush=True)
    first = out.get(names[0]) if names else None
    for loss in ("boundary", "hausdorff"):
        ok = first and loss in first and "none" in first
        out[f"hd95_change_{loss}"] = round(first[loss]["hd95"] - first["none"]["hd95"], 2) if ok else None
        out[f"dice_change_{loss}"] = round(first[loss]["dice"] - first["none"]["dice"], 2) if ok else None
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(out))
    return out


if __name__ == "__main__":
    main()
