"""The GPU paths, measured in one run: tiled whole-slide prediction and training throughput on a CUDA device.

Written for the rare sessions that are lent a GPU (CI never has one): one prepared command, a few minutes.
On a synthetic full-tissue H&E-like JPEG slide (``_synthetic.make_pyramidal_tiff``, opened with the package
reader, tiles decoded on the host as in real use) it reports

- the device: name, torch and CUDA versions, a bf16 matrix product's TFLOP/s (8192^3, the practical peak that
  the FLOP bound below divides by) and float32 / TF32 figures beside it;
- ``read_mpix_s``: reading and decoding the slide block strip by strip (threads), the pipeline's upper bound;
- ``run_predict`` (labels only, overlap 0.25, Gaussian blending, window 512, no tissue mask) for the 1x1
  "null model", the benchmark's small UNet and the plugin's default UNet, at batch 4 (the default) and
  larger batches and ``batch_size="auto"`` (the default: from free memory), mixed precision (bf16 autocast,
  channels-last: the GPU default) and float32: MPix/s;
- the same model's forward passes alone over as many windows, input already on the device
  (``pipeline_vs_model`` = model-alone seconds / end-to-end seconds; 1.0: the pipeline adds nothing);
- the FLOP bound: the default UNet's FLOPs per window (``torch.utils.flop_counter``) times the windows of the
  slide over the measured bf16 peak (``flop_bound_ratio`` = bound seconds / measured seconds);
- MONAI's ``sliding_window_inference`` over the same level loaded onto the GPU (same model, batch, overlap,
  Gaussian blending, autocast): ``speedup_vs_monai`` (MONAI load + inference over our whole run);
- training: ``training.train`` (prefetching loader from the JPEG slide, on-device augmentation) with the
  default UNet, batch 8 x 256^2, supervised, AMP + channels-last against float32: steps/s and the share of
  step time the GPU waited for data;
- the default UNet's forward passes alone, eager against ``torch.compile`` (AMP), with the compile time.

Usage: ``python benchmarks/bench_gpu.py [--size 16384] [--device cuda]`` (``--quick``: a 2k slide and a few
steps, also runs on the CPU to check the script). Last line: ``RESULT {json}``.

On a lent machine whose Python has torch but not this package's other dependencies (its package list, 2026-11: torch, numpy,
scipy, scikit-image, tifffile, einops, onnxruntime, no monai, zarr or dask), carry wheels for Python 3.12 of: dask,
distributed, donfig, google-crc32c, imagecodecs, importlib_metadata, jsonschema, jsonschema-specifications,
lazy-importer, locket, monai, nibabel, numcodecs, partd, pydicom, pyjpegls, referencing, rpds-py, tblib, tornado,
zarr, zict (about 48 MB; the versions of this project's environment), install them with ``--target`` and put that
folder and the repository on ``PYTHONPATH``. Run the CUDA tests (``pytest -m gpu tests/training/test_gpu_paths.py
tests/inference/test_predict.py tests/inference/test_batching.py``) and this script in two calls, so that one
failure does not cost both (the one call of 2026-12-05 returned nothing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WINDOW = (512, 512)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_tflops(dev: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def device_facts(dev: torch.device, quick: bool) -> dict:
    n = 1024 if quick or dev.type != "cuda" else 8192
    out = {"device": str(dev), "torch": torch.__version__}
    if dev.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(dev), cuda=torch.version.cuda,
                   gpu_mem_gb=round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1))
        out["bf16_tflops"] = round(matmul_tflops(dev, torch.bfloat16, n), 1)
        torch.backends.cuda.matmul.allow_tf32 = True
        out["tf32_tflops"] = round(matmul_tflops(dev, torch.float32, n), 1)
        torch.backends.cuda.matmul.allow_tf32 = False
        out["fp32_tflops"] = round(matmul_tflops(dev, torch.float32, n), 1)
    else:
        out["bf16_tflops"] = round(matmul_tflops(dev, torch.float32, n, reps=3), 3)  # the CPU: float32 stands in
    return out


def models() -> dict:
    from napari_medseg.models import ModelConfig, build_model

    torch.manual_seed(0)
    small = ModelConfig(in_channels=3, out_channels=2, channels=(8, 16, 32), num_res_units=0, norm="batch")
    return {"null": torch.nn.Conv2d(3, 2, 1).eval(), "small_unet": build_model(small).eval(),
            "default_unet": build_model(ModelConfig(in_channels=3, out_channels=2)).eval()}


def read_speed(src) -> float:
    lvl, h = src.levels[0], src.shape[0]
    t = time.perf_counter()
    for y in range(0, h, 1024):
        lvl[y:y + 1024].compute(scheduler="threads")
    return float(np.prod(src.shape)) / 1e6 / (time.perf_counter() - t)


def predict_once(src, model, dev, batch: int | str, amp: bool, tmp: Path) -> dict:
    from napari_medseg.inference import run_predict

    out = tmp / "pred.zarr"
    shutil.rmtree(out, ignore_errors=True)
    sync(dev)
    t = time.perf_counter()
    r = run_predict(src, model, out, window=WINDOW, overlap=0.25, batch_size=batch, blend="gaussian",
                    tissue_mask=False, device=dev.type, amp=amp)
    sec = time.perf_counter() - t
    return {"seconds": round(sec, 3), "mpix_s": round(float(np.prod(src.shape)) / 1e6 / sec, 1),
            "windows": r.windows_computed, "stats": {k: round(v, 3) if isinstance(v, float) else v
                                                     for k, v in (r.stats or {}).items()}}


def forward_alone(model, dev, batch: int, amp: bool, windows: int) -> float:
    """Seconds of the model's forward passes (``WindowRunner``) over ``windows`` windows already on the device."""
    from napari_medseg.inference.modelrun import WindowRunner

    runner = WindowRunner(model, dev, batch_size=batch, amp=amp)
    x = torch.rand(batch, 3, *WINDOW, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.inference_mode():
        runner(x)
        sync(dev)
        n = -(-windows // batch)
        t = time.perf_counter()
        for _ in range(n):
            runner(x)
        sync(dev)
    return time.perf_counter() - t


def compiled_speedup(model, dev, batch: int, windows: int) -> dict:
    """The default UNet's forward passes alone, eager against ``torch.compile`` (both AMP): is a compile option
    worth its start-up time?"""
    t = time.perf_counter()
    eager = forward_alone(model, dev, batch, True, windows)
    comp = torch.compile(model.to(dev))
    forward_alone(comp, dev, batch, True, batch)  # compiles
    compile_s = time.perf_counter() - t - eager
    compiled = forward_alone(comp, dev, batch, True, windows)
    return {"eager_s": round(eager, 3), "compiled_s": round(compiled, 3), "compile_s": round(compile_s, 1),
            "compile_speedup": round(eager / compiled, 3)}


def window_flops(model) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    m = model.to("cpu")
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        m(torch.zeros(1, 3, *WINDOW))
    return float(fc.get_total_flops())


def monai_run(src, model, dev, batch: int, amp: bool) -> float:
    from monai.inferers import sliding_window_inference

    model = model.to(dev)
    sync(dev)
    t = time.perf_counter()
    img = src.levels[0].compute(scheduler="threads")
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(dev).float().div_(255.0)
    del img
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
        probs = sliding_window_inference(x, WINDOW, batch, lambda v: torch.softmax(model(v).float(), 1),
                                         overlap=0.25, mode="gaussian", sigma_scale=0.125)
        torch.argmax(probs, 1)
    sync(dev)
    sec = time.perf_counter() - t
    del probs, x
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return sec


def train_speed(src, dev, amp: bool, steps: int, workers: int, patch: int) -> dict:
    from bench_train import paint, run

    from napari_medseg.training import TrainConfig, TrainingData, TrainingItem

    store, classes = paint(src, 40)
    data = TrainingData([TrainingItem(src, store, name="synthetic slide")], classes)
    warm = 5
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(library=False, patch_size=(patch,), batch_size=8, steps=steps + warm, val_fraction=0.0,
                          val_every=10**6, num_workers=workers, device=dev.type, checkpoint_dir=tmp, seed=0,
                          amp=amp, channels_last=amp, semi="none")
        r = run(cfg, data, warm)
    return {"steps_per_s": round(r["n"] / r["step_s"], 2), "data_wait_frac": round(r["wait_s"] / r["step_s"], 3),
            "steps": r["n"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384, help="side of the full-tissue slide (default 16384)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="2k slide, few steps: checks the script anywhere")
    ap.add_argument("--workers", type=int, default=8, help="training loader threads (default 8)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: monai, train, fp32, compile")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu --quick to check the script")
    dev = torch.device(args.device)
    size = 2048 if args.quick else args.size
    t0 = time.perf_counter()
    from _synthetic import make_pyramidal_tiff

    from napari_medseg.io.reader import open_image

    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    src = open_image(make_pyramidal_tiff(tmp, size, size, tissue_fraction=1.0, seed=1))
    res: dict = device_facts(dev, args.quick)
    res.update(slide=size, setup_s=round(time.perf_counter() - t0, 1))
    print(json.dumps(res), flush=True)
    res["read_mpix_s"] = round(max(read_speed(src) for _ in range(2)), 1)
    print(f"read+decode {res['read_mpix_s']} MPix/s", flush=True)
    ms = models()
    runs: dict = {}
    plan = [("null", 4, True), ("small_unet", 4, True), ("default_unet", 4, True), ("default_unet", 16, True),
            ("default_unet", 32, True), ("small_unet", 32, True), ("default_unet", "auto", True)]
    if "fp32" not in skip:
        plan += [("default_unet", 16, False)]
    if args.quick:
        plan = plan[:3] + [("default_unet", "auto", True)]
    windows = predict_once(src, ms["null"], dev, 4, True, tmp)["windows"]  # warm-up: reader, allocator, imports
    for name, batch, amp in plan:
        key = f"{name}_b{batch}_{'amp' if amp else 'fp32'}"
        if batch == "auto":  # the predictor's default: the batch it measured, then that batch alone
            r = predict_once(src, ms[name], dev, batch, amp, tmp)
            alone = forward_alone(ms[name], dev, int(r["stats"]["batch_size"]), amp, windows)
        else:
            alone = forward_alone(ms[name], dev, batch, amp, windows)  # first: also warms cuDNN for this shape
            r = predict_once(src, ms[name], dev, batch, amp, tmp)
        r["model_alone_s"] = round(alone, 3)
        r["pipeline_vs_model"] = round(r["model_alone_s"] / r["seconds"], 3)
        runs[key] = r
        print(key, json.dumps(r), flush=True)
    res["runs"] = runs
    flops = window_flops(ms["default_unet"])
    best = max((r for k, r in runs.items() if k.startswith("default_unet") and k.endswith("amp")),
               key=lambda r: r["mpix_s"])
    bound_s = best["windows"] * flops / (res["bf16_tflops"] * 1e12)
    res.update(default_unet_gflop_per_window=round(flops / 1e9, 2), flop_bound_s=round(bound_s, 3),
               flop_bound_ratio=round(bound_s / best["seconds"], 4),
               null_mpix_s=runs["null_b4_amp"]["mpix_s"],
               null_vs_read=round(runs["null_b4_amp"]["mpix_s"] / res["read_mpix_s"], 3),
               unet_mpix_s=best["mpix_s"], pipeline_vs_model=best["pipeline_vs_model"])
    if "monai" not in skip:
        mb = 16 if not args.quick else 4
        try:
            monai_run(src, ms["default_unet"], dev, mb, True)  # warm-up (cuDNN plans)
            m_s = monai_run(src, ms["default_unet"], dev, mb, True)
            ours = runs.get(f"default_unet_b{mb}_amp", best)
            res.update(monai_s=round(m_s, 3), monai_batch=mb, speedup_vs_monai=round(m_s / ours["seconds"], 3))
            print(f"MONAI {m_s:.2f} s vs ours {ours['seconds']} s", flush=True)
        except Exception as e:  # report and go on
            res["monai_error"] = f"{type(e).__name__}: {e}"[:300]
    if "compile" not in skip and dev.type == "cuda":
        try:
            res["compile"] = compiled_speedup(ms["default_unet"], dev, 16, windows)
        except Exception as e:  # report and go on: the other parts matter more
            res["compile"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print("compile", res["compile"], flush=True)
    if "train" not in skip:
        steps = 6 if args.quick else 60
        patch = 128 if args.quick else 256
        res["train_amp"] = train_speed(src, dev, True, steps, args.workers, patch)
        print("train amp", res["train_amp"], flush=True)
        if "fp32" not in skip:
            res["train_fp32"] = train_speed(src, dev, False, steps, args.workers, patch)
            print("train fp32", res["train_fp32"], flush=True)
            res["train_amp_speedup"] = round(res["train_amp"]["steps_per_s"] / res["train_fp32"]["steps_per_s"], 3)
    shutil.rmtree(tmp, ignore_errors=True)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
