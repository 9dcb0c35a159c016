"""Whole-slide objects: the instance pass (``objects.tiled.instances_from_prediction``) against the semantic
prediction of the same synthetic slide, and the instance pass's peak memory.

1. The slide: ``_synthetic.make_pyramidal_tiff`` (``size`` x ``size``, ``tissue`` fraction, H&E-like tiles
   with purple nuclei; cached in ``benchmarks/_cache``).
2. The semantic prediction, timed, in a child process: ``run_predict`` with ``--model default`` (the UNet of
   ``ModelConfig``'s defaults, what a user predicts with) or ``small`` (the small UNet of ``bench_tiled_predict``)
   (3 output channels: background, nucleus, object boundary; window 512, overlap
   0.25, batch 4, tissue mask auto, CPU, ``threads`` torch threads), labels only.
3. The untrained UNet's classes are noise, so before the instance pass (not timed) its level-0 labels are
   replaced, inside the tissue blocks it predicted, by a nuclei map read from the slide itself (purple
   pixels = nucleus, their one-pixel rim = object boundary): objects of realistic size and density.
4. The instance pass, timed, in a fresh child process that imports no torch (objects + their table).
   ``big_slide_rss_mb`` is that process's peak RSS (``ru_maxrss``), the libraries included.

``instance_overhead`` = instance seconds / semantic seconds, i.e. (semantic + instances) / semantic - 1: what
finding the objects adds to predicting the slide. Measured at ``size`` (no extrapolation).

Usage: ``python benchmarks/instances_slide.py [--size 8192] [--tissue 0.35] [--threads 2]``; the last line
is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

NAMES = ("background", "nucleus")


def _schema():
    from napari_medseg.core.classes import ClassSchema

    return ClassSchema(NAMES).with_objects(["nucleus"])


MODELS = {
    # the model a user predicts with: ModelConfig's defaults (UNet 16-256, 2 residual units per level)
    "default": {},
    # the small UNet of bench_tiled_predict (the pipeline's own cost shows more)
    "small": {"channels": (8, 16, 32), "num_res_units": 0, "norm": "batch"},
}


def _predict(slide: str, out: str, threads: int, model: str = "default") -> dict:
    import torch

    from napari_medseg.inference import run_predict
    from napari_medseg.io.reader import open_image
    from napari_medseg.models import ModelConfig, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model(ModelConfig(in_channels=3, out_channels=3, **MODELS[model])).eval()
    src = open_image(slide)
    t = time.perf_counter()
    r = run_predict(src, net, out, classes=_schema(), window=(512, 512), overlap=0.25, batch_size=4,
                    tissue_mask="auto", device="cpu")
    return {"seconds": time.perf_counter() - t, "blocks": r.blocks_done, "blocks_skipped": r.blocks_skipped}


def _nuclei_map(slide: str, out: str) -> dict:
    """Replace the predicted labels by the slide's nuclei (where the prediction was computed)."""
    import numpy as np
    import zarr
    from scipy import ndimage as ndi

    from napari_medseg.io.reader import open_image

    src = open_image(slide)
    lab = zarr.open_group(out, mode="a")["labels/prediction/0"]
    H, W = lab.shape
    step = 2048
    b = _schema().boundary_value
    px = 0
    for y in range(0, H, step):
        for x in range(0, W, step):
            sl = (slice(y, min(H, y + step)), slice(x, min(W, x + step)))
            cur = np.asarray(lab[sl])
            if not cur.any():  # not predicted (outside the tissue mask)
                continue
            rgb = np.asarray(src.levels[0][sl])
            purple = (rgb[..., 0] < 150) & (rgb[..., 2] > 110)
            inner = ndi.binary_erosion(purple)
            new = np.zeros(cur.shape, np.uint8)
            new[purple] = b
            new[inner] = 1
            lab[sl] = new
            px += int(inner.sum())
    return {"nucleus_px": px}


def _instances(out: str, halo: int, block: int) -> dict:
    import resource

    from napari_medseg.core.events import drive
    from napari_medseg.objects.tiled import instances_from_prediction

    t = time.perf_counter()
    # the CLI's defaults (napari-medseg predict --instances): speckle under 10 px is no seed, basic features
    r = drive(instances_from_prediction(out, halo=halo, block=block, min_size=0, min_seed=10, features="basic"))
    sec = time.perf_counter() - t
    return {"seconds": sec, "n": r.n, "cut": r.cut, "complete": r.complete,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_imported": "torch" in sys.modules}


def _child(op: str, **kw) -> dict:
    """Run ``op`` in a fresh Python process; its JSON answer."""
    code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import instances_slide as m; "
            f"print('ANSWER ' + json.dumps(m._{op}(**json.loads(sys.argv[1]))))")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(kw)], capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("ANSWER ")]
    if p.returncode or not lines:
        raise RuntimeError(f"{op} failed:\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def run(size: int = 50000, tissue: float = 0.35, *, threads: int = 2, halo: int = 64, block: int = 2048,
        workdir: str | None = None, model: str = "default") -> dict:
    from _synthetic import CACHE_DIR, make_pyramidal_tiff

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    slide = str(make_pyramidal_tiff(CACHE_DIR, size, size, tissue))
    tmp = Path(tempfile.mkdtemp(prefix="medseg-inst-", dir=workdir))
    out = str(tmp / "slide.prediction.zarr")
    try:
        sem = _child("predict", slide=slide, out=out, threads=threads, model=model)
        nuc = _child("nuclei_map", slide=slide, out=out)
        inst = _child("instances", out=out, halo=halo, block=block)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"instance_overhead": round(inst["seconds"] / sem["seconds"], 3),
            "big_slide_rss_mb": round(inst["peak_rss_mb"]), "size": size, "tissue": tissue,
            "semantic_seconds": round(sem["seconds"], 1), "instance_seconds": round(inst["seconds"], 1),
            "objects": inst["n"], "cut": inst["cut"], "complete": inst["complete"], "halo": halo, "block": block,
            "blocks_predicted": sem["blocks"], "nucleus_px": nuc["nucleus_px"], "threads": threads,
            "instance_pass_imports_torch": inst["torch_imported"], "model": model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=50000)
    ap.add_argument("--tissue", type=float, default=0.35)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--model", choices=sorted(MODELS), default="default",
                    help="default: ModelConfig's UNet (what a user predicts with); small: bench_tiled_predict's")
    a = ap.parse_args()
    print("RESULT " + json.dumps(run(a.size, a.tissue, threads=a.threads, halo=a.halo, block=a.block,
                                           model=a.model)))


if __name__ == "__main__":
    main()
