"""Parameter counts and CPU forward+backward time per model, side by side in one process.

    python tests/models/bench_models.py                  # 2D 1x3x256x256, small presets, 5 timed steps
    python tests/models/bench_models.py --quick          # 1x3x128x128, 1 timed step: < 1 min on 2 cores
    python tests/models/bench_models.py --preset base --dims 3 --size 64

All models are built first; after one warm-up step each, ``--reps`` rounds time one training step
(forward, cross-entropy, backward) of every model in turn, so load from other processes spreads over all
of them. The median per model is reported, and its ratio to ``unet``. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from napari_medseg.models import ModelConfig, build_model, preset

NAMES = ["unet", "attention_unet", "unetpp", "swin_unet", "swin_unetr"]


class Case:
    """One model with its input, ready for timed training steps."""

    def __init__(self, cfg: ModelConfig, size: int, channels_last: bool = False) -> None:
        torch.manual_seed(0)
        self.model = build_model(cfg).train()
        self.x = torch.randn(1, cfg.in_channels, *(size,) * cfg.spatial_dims)
        self.y = torch.randint(0, cfg.out_channels, (1, *(size,) * cfg.spatial_dims))
        if channels_last:
            fmt = torch.channels_last if cfg.spatial_dims == 2 else torch.channels_last_3d
            self.model = self.model.to(memory_format=fmt)
            self.x = self.x.contiguous(memory_format=fmt)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.times: list[float] = []

    def step(self) -> float:
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.model.zero_grad(set_to_none=True)
        return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128 px (2D) / 32 px (3D), one timed step per model")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--size", type=int, default=None, help="spatial size per axis (default 256 in 2D, 64 in 3D)")
    p.add_argument("--preset", default="small", choices=("small", "base"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    p.add_argument("--models", default=",".join(NAMES))
    p.add_argument("--channels-last", action="store_true", help="channels_last(_3d) model and input")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    size = a.size or ((128 if a.dims == 2 else 32) if a.quick else (256 if a.dims == 2 else 64))
    reps = 1 if a.quick else a.reps
    cases = {name: Case(preset(name, a.preset, spatial_dims=a.dims, in_channels=3, out_channels=4),
                        size, a.channels_last) for name in a.models.split(",")}
    for c in cases.values():
        c.step()  # warm-up: allocators, kernels
    for _ in range(reps):  # round robin: the machine's noise falls on every model alike
        for c in cases.values():
            c.times.append(c.step())
    rows = {}
    for name, c in cases.items():
        rows[name] = {"params": c.params, "fwd_bwd_s": statistics.median(c.times), "min_s": min(c.times)}
        print(f"{name:15s} {c.params / 1e6:7.2f} M params  fwd+bwd {rows[name]['fwd_bwd_s']:.3f} s "
              f"(min {rows[name]['min_s']:.3f})", flush=True)
    if "unet" in rows:
        for r in rows.values():
            r["ratio_to_unet"] = round(r["fwd_bwd_s"] / rows["unet"]["fwd_bwd_s"], 2)
    result = {"input": [1, 3, *(size,) * a.dims], "preset": a.preset, "channels_last": a.channels_last, "threads": a.threads, "reps": reps,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "torch": torch.__version__, "models": rows}
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
