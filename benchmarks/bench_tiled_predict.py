"""Tiled whole-slide prediction against MONAI's ``sliding_window_inference``, side by side in one run.

Slides are synthetic H&E-like JPEG pyramidal TIFFs (``_synthetic.make_pyramidal_tiff``, cached in
``benchmarks/_cache``), opened with ``napari_medseg.io.open_path``. The same small UNet (weights fixed by
seed 0) runs in two long-lived worker processes, ours and MONAI's, with the same torch thread count; the
parent interleaves their runs. Peak RSS is measured per run (``/proc/self/clear_refs`` resets the
high-water mark before each run, ``VmHWM`` after it). ``rss_ratio`` compares whole processes (Python,
torch, MONAI and the other libraries, about 460 MB in each worker after its warm-up run, plus what the run
holds); ``rss_ratio_run`` compares what each run adds to its process's resident size (peak minus the
resident size just before the call), i.e. the memory the prediction itself needs.

- full tissue (8k x 8k; quick: 2k x 2k), overlap 0.25 and 0.5, Gaussian, batch 4, window 512: MONAI loads
  the level into memory and runs ``sliding_window_inference``; ours predicts from the TIFF into an NGFF
  zarr with float32 probabilities (so they can be compared), labels and their pyramid. Reported: max abs
  difference of the probabilities, argmax agreement, speedup (MONAI load + inference, without argmax,
  over our whole run; ``*_with_argmax`` adds MONAI's ``argmax``), peak RSS ratio.
- 30 % tissue (same size): ours with the tissue mask, MONAI over everything; speedup; difference on tissue.
- a big slide (50k x 50k, 35 % tissue; quick: 4k x 4k): ours alone, labels only; peak RSS and MPix/s
  (slide area / time, and predicted-block area / time).
- a 1 x 1 convolution "null model" on the full-tissue slide: our MPix/s over the speed of reading and
  decoding the same level block by block.
- the pipeline's share: the UNet over the full-tissue slide (labels only, overlap 0.25) against the same
  model's forward passes alone (``WindowRunner``, same threads, batch and input layout) over as many
  windows: ``pipeline_vs_model`` = forward-only seconds / end-to-end seconds (1.0: the pipeline adds nothing);
  with more than one thread the forward passes alone are also timed in that many streams of one thread, and
  the faster way counts.
- ``--streams N|auto``: our predictions with model streams (``predict(streams=...)``; the CLI's default is auto).
- ``predict_region`` of a 1024 x 1024 view (the live preview), best of 3.

Usage: ``python benchmarks/bench_tiled_predict.py [--quick] [--threads 2]``. The last line is
``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WINDOW = (512, 512)
BATCH = 4


# ---------------------------------------------------------------------------------------------- worker side
def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _model(kind: str):
    import torch

    from napari_medseg.models import ModelConfig, build_model

    torch.manual_seed(0)
    if kind == "null":
        return torch.nn.Conv2d(3, 2, 1).eval()
    cfg = ModelConfig(in_channels=3, out_channels=2, channels=(8, 16, 32), num_res_units=0, norm="batch")
    return build_model(cfg).eval()


def _open(slide: str):
    from napari_medseg.io.reader import open_image

    return open_image(slide)


def _serve(kind: str, threads: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from napari_medseg.inference import predict_region, run_predict
    from napari_medseg.inference.modelrun import state_hash
    from napari_medseg.inference.tiling import importance_map

    importance_map((8, 8))  # import MONAI's data utilities before any timing
    models = {k: _model(k) for k in ("unet", "null")}
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        res: dict = {"op": op}
        try:
            if op == "hash":
                res["hash"] = state_hash(models["unet"])
            elif op == "predict":
                src = _open(cmd["slide"])
                rss0 = _status_mb("VmRSS")
                _reset_peak()
                t = time.perf_counter()
                r = run_predict(src, models[cmd.get("model", "unet")], cmd["out"], window=WINDOW, overlap=cmd["overlap"],
                                batch_size=BATCH, blend="gaussian", tissue_mask=cmd["tissue"],
                                write_probs=cmd.get("probs"), device="cpu", streams=cmd.get("streams", 1))
                sec = time.perf_counter() - t
                area = float(np.prod(src.shape))
                res.update(seconds=sec, peak_rss_mb=_status_mb("VmHWM"), rss_before_mb=rss0,
                           slide_mpix_s=area / 1e6 / sec, blocks=r.blocks_done, blocks_skipped=r.blocks_skipped,
                           windows=r.windows_computed, stats=r.stats, shape=list(src.shape),
                           predicted_mpix=r.blocks_done / max(1, r.blocks_total + r.blocks_skipped) * area / 1e6)
                res["predicted_mpix_s"] = res["predicted_mpix"] / sec
            elif op == "read":
                src = _open(cmd["slide"])
                lvl = src.levels[0]
                h = src.shape[0]
                step = 1024
                t = time.perf_counter()
                s = 0
                for y in range(0, h, step):
                    a = lvl[y:y + step].compute(scheduler="threads")
                    s += int(a[0, 0, 0])
                sec = time.perf_counter() - t
                res.update(seconds=sec, mpix_s=float(np.prod(src.shape)) / 1e6 / sec)
            elif op == "region":
                from napari_medseg.models import NormConfig

                src = _open(cmd["slide"])
                ts = []
                for i in range(3):
                    y0 = 512 + 256 * i
                    r = predict_region(models["unet"], src, 0, (slice(y0, y0 + 1024), slice(1024, 2048)),
                                       NormConfig.uint8(3))
                    ts.append(r.seconds)
                res.update(seconds_best=min(ts), seconds=ts)
            elif op == "forward":  # the model alone over as many windows, as WindowRunner feeds it
                from napari_medseg.inference.modelrun import WindowRunner

                runner = WindowRunner(models["unet"], torch.device("cpu"), batch_size=BATCH)
                gen = torch.Generator().manual_seed(0)
                batch = torch.rand(BATCH, 3, *WINDOW, generator=gen)
                runner(batch)  # warm-up
                n = -(-int(cmd["windows"]) // BATCH)
                t = time.perf_counter()
                for _ in range(n):
                    runner(batch)
                res.update(seconds=time.perf_counter() - t, windows=n * BATCH)
                if threads > 1:  # the same batches in ``threads`` streams of one thread: the faster one counts
                    from concurrent.futures import ThreadPoolExecutor

                    torch.set_num_threads(1)
                    try:
                        with ThreadPoolExecutor(threads) as pool:
                            list(pool.map(runner, [batch] * threads))  # warm-up
                            t = time.perf_counter()
                            list(pool.map(runner, [batch] * n))
                        streamed = time.perf_counter() - t
                    finally:
                        torch.set_num_threads(threads)
                    res.update(seconds_one_stream=res["seconds"], seconds_streams=streamed,
                               seconds=min(res["seconds"], streamed))
            elif op == "monai":
                res.update(_monai(cmd, models["unet"]))
            else:
                res["error"] = f"unknown op {op}"
        except Exception as e:  # report, keep serving
            import traceback

            traceback.print_exc()
            res["error"] = f"{type(e).__name__}: {e}"
        out.write(json.dumps(res) + "\n")
        out.flush()


def _monai(cmd: dict, model) -> dict:
    import numpy as np
    import torch
    import zarr
    from monai.inferers import sliding_window_inference

    src = _open(cmd["slide"])
    rss0 = _status_mb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    img = src.levels[0].compute(scheduler="threads")  # (Y, X, C) uint8, the whole level in memory
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float().div_(255.0)
    del img
    t1 = time.perf_counter()
    with torch.inference_mode():
        probs = sliding_window_inference(x, WINDOW, BATCH, lambda t: torch.softmax(model(t), 1),
                                         overlap=cmd["overlap"], mode="gaussian", sigma_scale=0.125)
    t2 = time.perf_counter()
    peak_infer = _status_mb("VmHWM")
    labels = torch.argmax(probs, dim=1)
    t3 = time.perf_counter()
    res = {"seconds_load": t1 - t0, "seconds_infer": t2 - t1, "seconds_argmax": t3 - t2,
           "seconds": t2 - t0, "seconds_with_argmax": t3 - t0, "peak_rss_mb": peak_infer,
           "peak_rss_with_argmax_mb": _status_mb("VmHWM"), "rss_before_mb": rss0}
    cmp = cmd.get("compare")
    if cmp:  # not timed: compare with our float32 probabilities and labels, row strip by row strip
        p = probs[0].numpy()
        lab = labels[0].numpy()
        ours_p = zarr.open_array(str(Path(cmp) / "probs" / "0"), mode="r")
        ours_l = zarr.open_array(str(Path(cmp) / "labels" / "prediction" / "0"), mode="r")
        tissue = None
        if cmd.get("on_tissue"):
            from napari_medseg.inference import open_prediction

            tm = [s for s in open_prediction(cmp) if s.name.endswith("tissue mask")][0]
            tissue = np.asarray(tm.levels[0]).astype(bool)
            f = int(round(tm.pixel_size[0] / src.pixel_size[0]))
        diff, agree, n = 0.0, 0, 0
        for y in range(0, p.shape[1], 1024):
            a = np.asarray(ours_p[:, y:y + 1024])
            b = p[:, y:y + 1024]
            la = np.asarray(ours_l[y:y + 1024])
            lb = lab[y:y + 1024]
            if tissue is not None:
                rows = np.arange(y, y + a.shape[1]) // f
                m = tissue[np.clip(rows, 0, tissue.shape[0] - 1)][:, np.clip(np.arange(a.shape[2]) // f, 0,
                                                                            tissue.shape[1] - 1)]
                d = np.abs(a - b)[:, m]
                diff = max(diff, float(d.max()) if d.size else 0.0)
                agree += int((la == lb)[m].sum())
                n += int(m.sum())
            else:
                diff = max(diff, float(np.abs(a - b).max()))
                agree += int((la == lb).sum())
                n += la.size
        res.update(max_abs_diff=diff, argmax_agree=agree / max(1, n), compared_px=n)
    return res


# ---------------------------------------------------------------------------------------------- parent side
class Worker:
    def __init__(self, kind: str, threads: int, predict_defaults: dict | None = None) -> None:
        self.predict_defaults = predict_defaults or {}  # added to each "predict" command (e.g. streams)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.p = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--threads", str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **cmd) -> dict:
        assert self.p.stdin and self.p.stdout
        if cmd.get("op") == "predict":
            cmd = self.predict_defaults | cmd
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died during {cmd}")
        res = json.loads(line)
        if "error" in res:
            raise RuntimeError(f"{cmd['op']} failed: {res['error']}")
        return res

    def close(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        self.p.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small slides, one overlap (under a minute)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in both workers (default 2)")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--big", type=int, default=50000, help="side of the big slide (default 50000)")
    ap.add_argument("--streams", default="1", help="model streams of our predictions ('auto' as the CLI's "
                    "default: one per torch thread; default 1)")
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve, args.threads)
        return
    from _synthetic import CACHE_DIR, make_pyramidal_tiff

    t_start = time.perf_counter()
    n = 2048 if args.quick else 8192
    big = 4096 if args.quick else args.big
    overlaps = [0.25] if args.quick else [0.25, 0.5]
    full = str(make_pyramidal_tiff(CACHE_DIR, n, n, 1.0, seed=1))
    t30 = str(make_pyramidal_tiff(CACHE_DIR, n, n, 0.3, seed=2))
    bigp = str(make_pyramidal_tiff(CACHE_DIR, big, big, 0.35, seed=0))
    warm = str(make_pyramidal_tiff(CACHE_DIR, 1024, 1024, 1.0, seed=1))
    tmp = Path(tempfile.mkdtemp(prefix="bench_tiled_"))
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    streams = args.streams if args.streams == "auto" else int(args.streams)
    ours, monai = Worker("ours", args.threads, {"streams": streams}), Worker("monai", args.threads)
    out: dict = {"quick": args.quick, "threads": args.threads, "image": n, "big_slide": big,
                 "machine": f"{os.cpu_count()} CPUs, shared (timings noisy)"}
    try:
        assert ours.ask(op="hash")["hash"] == monai.ask(op="hash")["hash"], "models differ"
        # untimed warm-up of both (first calls into torch kernels, codecs, zarr, thread pools)
        ours.ask(op="predict", slide=warm, out=str(tmp / "warm.zarr"), overlap=0.25, tissue="auto", probs="float32")
        monai.ask(op="monai", slide=warm, overlap=0.25)
        for ov in overlaps:
            o = ours.ask(op="predict", slide=full, out=str(tmp / f"full{ov}.zarr"), overlap=ov, tissue=False,
                         probs="float32")
            m = monai.ask(op="monai", slide=full, overlap=ov, compare=str(tmp / f"full{ov}.zarr"))
            shutil.rmtree(tmp / f"full{ov}.zarr", ignore_errors=True)
            tag = f"{ov:g}"
            out[f"full_{tag}"] = {"ours_s": round(o["seconds"], 2), "monai_s": round(m["seconds"], 2),
                                  "monai_infer_s": round(m["seconds_infer"], 2),
                                  "monai_argmax_s": round(m["seconds_argmax"], 2),
                                  "ours_peak_rss_mb": round(o["peak_rss_mb"]), "monai_peak_rss_mb": round(m["peak_rss_mb"]),
                                  "max_abs_diff": m["max_abs_diff"], "argmax_agree": m["argmax_agree"],
                                  "speedup": round(m["seconds"] / o["seconds"], 3),
                                  "speedup_with_argmax": round(m["seconds_with_argmax"] / o["seconds"], 3),
                                  "rss_ratio": round(o["peak_rss_mb"] / m["peak_rss_mb"], 3),
                                  "ours_run_mb": round(o["peak_rss_mb"] - o["rss_before_mb"]),
                                  "monai_run_mb": round(m["peak_rss_mb"] - m["rss_before_mb"]),
                                  "rss_ratio_run": round((o["peak_rss_mb"] - o["rss_before_mb"])
                                                         / max(1.0, m["peak_rss_mb"] - m["rss_before_mb"]), 3),
                                  "ours_stats": {k: o["stats"].get(k) for k in ("model_s", "blend_s", "wait_read_s",
                                                                                "decode_ratio", "windows")}}
            log(f"full tissue, overlap {ov}: {out[f'full_{tag}']}")
        o = ours.ask(op="predict", slide=t30, out=str(tmp / "t30.zarr"), overlap=0.25, tissue="auto", probs="float32")
        m = monai.ask(op="monai", slide=t30, overlap=0.25, compare=str(tmp / "t30.zarr"), on_tissue=True)
        shutil.rmtree(tmp / "t30.zarr", ignore_errors=True)
        out["tissue30"] = {"ours_s": round(o["seconds"], 2), "monai_s": round(m["seconds"], 2),
                           "speedup": round(m["seconds"] / o["seconds"], 3),
                           "blocks": o["blocks"], "blocks_skipped": o["blocks_skipped"],
                           "windows": o["windows"], "max_abs_diff_on_tissue": m["max_abs_diff"],
                           "argmax_agree_on_tissue": m["argmax_agree"]}
        log(f"30% tissue: {out['tissue30']}")
        o = ours.ask(op="predict", slide=bigp, out=str(tmp / "big.zarr"), overlap=0.25, tissue="auto", probs=None)
        shutil.rmtree(tmp / "big.zarr", ignore_errors=True)
        out["big"] = {"shape": o["shape"], "seconds": round(o["seconds"], 1), "peak_rss_mb": round(o["peak_rss_mb"]),
                      "slide_mpix_s": round(o["slide_mpix_s"], 2), "predicted_mpix_s": round(o["predicted_mpix_s"], 2),
                      "blocks": o["blocks"], "blocks_skipped": o["blocks_skipped"],
                      "decode_ratio": o["stats"].get("decode_ratio"), "model_s": o["stats"].get("model_s")}
        log(f"big slide: {out['big']}")
        r = ours.ask(op="read", slide=full)
        o = ours.ask(op="predict", slide=full, out=str(tmp / "null.zarr"), overlap=0.25, tissue=False, probs=None,
                     model="null")
        shutil.rmtree(tmp / "null.zarr", ignore_errors=True)
        out["null"] = {"read_mpix_s": round(r["mpix_s"], 1), "ours_mpix_s": round(o["slide_mpix_s"], 1),
                       "ratio": round(o["slide_mpix_s"] / r["mpix_s"], 3), "ours_stats": o["stats"]}
        log(f"null model: {out['null']}")
        # the pipeline's share: the UNet end to end (labels only, as a user runs it) against its forward
        # passes alone over the same number of windows, same threads and batch
        o = ours.ask(op="predict", slide=full, out=str(tmp / "labels.zarr"), overlap=0.25, tissue=False, probs=None)
        shutil.rmtree(tmp / "labels.zarr", ignore_errors=True)
        f = ours.ask(op="forward", windows=o["windows"])
        out["pipeline"] = {"end_to_end_s": round(o["seconds"], 2), "forward_only_s": round(f["seconds"], 2),
                           "windows": o["windows"], "ratio": round(f["seconds"] / o["seconds"], 3),
                           "ours_stats": {k: o["stats"].get(k) for k in ("model_s", "blend_s", "wait_read_s")}}
        log(f"pipeline vs model: {out['pipeline']}")
        rg = ours.ask(op="region", slide=full)
        out["region_1024_s"] = round(rg["seconds_best"], 3)
    finally:
        ours.close()
        monai.close()
        shutil.rmtree(tmp, ignore_errors=True)
    f25 = out["full_0.25"]
    worst_diff = max(out[f"full_{ov:g}"]["max_abs_diff"] for ov in overlaps)
    worst_agree = min(out[f"full_{ov:g}"]["argmax_agree"] for ov in overlaps)
    worst_speed = min(out[f"full_{ov:g}"]["speedup"] for ov in overlaps)
    worst_rss = max(out[f"full_{ov:g}"]["rss_ratio"] for ov in overlaps)
    worst_rss_run = max(out[f"full_{ov:g}"]["rss_ratio_run"] for ov in overlaps)
    result = {"max_abs_diff": worst_diff, "argmax_agree": worst_agree, "speedup_full": worst_speed,
              "speedup_tissue30": out["tissue30"]["speedup"], "rss_ratio": worst_rss,
              "rss_ratio_run": worst_rss_run,
              "big_slide_rss_mb": out["big"]["peak_rss_mb"], "big_slide_mpix_s": out["big"]["slide_mpix_s"],
              "null_vs_read": out["null"]["ratio"], "pipeline_vs_model": out["pipeline"]["ratio"],
              "speedup_full_with_argmax": f25["speedup_with_argmax"],
              "region_1024_s": out["region_1024_s"], "quick": args.quick, "image": n, "big_slide": big,
              "threads": args.threads, "streams": streams, "seconds": round(time.perf_counter() - t_start, 1)}
    print(json.dumps(out, indent=1), file=sys.stderr)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
