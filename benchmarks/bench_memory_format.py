"""Forward passes of each 2D model on the CPU with an NCHW input and with a channels-last (NHWC) input.

Why: ``WindowRunner`` hands a 2D model its input channels-last on the CPU (the weights stay as built).
This measures that choice: each model family (``small`` preset, instance and batch norm), batches of
``--batch`` RGB windows of ``--window`` px, the two layouts interleaved ``--repeats`` times after a
warm-up, median seconds per batch; the outputs of the two are compared (max abs difference of the
softmax). A 1 x 1 convolution (the tiled benchmark's "null model") is measured too.

Usage: ``python benchmarks/bench_memory_format.py [--threads 2] [--repeats 5]``. The last line is
``RESULT {json}``: per model ``nchw_s``, ``nhwc_s``, ``speedup`` (nchw / nhwc) and ``max_diff``; and
``worst_speedup`` / ``median_speedup`` over the models.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _models():
    import torch

    from napari_medseg.models import available_models, build_model, preset

    torch.manual_seed(0)
    yield "null (1x1 conv)", torch.nn.Conv2d(3, 2, 1).eval()
    for name in available_models():
        for norm in ("instance", "batch"):
            torch.manual_seed(0)
            cfg = preset(name, "small", spatial_dims=2, in_channels=3, out_channels=3, norm=norm)
            yield f"{name} ({norm})", build_model(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 3, args.window, args.window, generator=torch.Generator().manual_seed(0))
    layouts = {"nchw": x.contiguous(), "nhwc": x.contiguous(memory_format=torch.channels_last)}
    res = {}
    for name, m in _models():
        times: dict[str, list[float]] = {k: [] for k in layouts}
        with torch.inference_mode():
            outs = {k: torch.softmax(m(v).float(), 1) for k, v in layouts.items()}  # warm-up, and the outputs
            for _ in range(args.repeats):
                for k, v in layouts.items():
                    t = time.perf_counter()
                    m(v)
                    times[k].append(time.perf_counter() - t)
        a, b = statistics.median(times["nchw"]), statistics.median(times["nhwc"])
        res[name] = {"nchw_s": round(a, 4), "nhwc_s": round(b, 4), "speedup": round(a / b, 3),
                     "spread_nchw_s": round(max(times["nchw"]) - min(times["nchw"]), 4),
                     "spread_nhwc_s": round(max(times["nhwc"]) - min(times["nhwc"]), 4),
                     "max_diff": float((outs["nchw"] - outs["nhwc"]).abs().max())}
        print(f"{name:28s} NCHW {a * 1000:7.1f} ms  NHWC {b * 1000:7.1f} ms  speedup {a / b:5.2f}x  "
              f"max diff {res[name]['max_diff']:.1e}", flush=True)
    sp = [r["speedup"] for r in res.values()]
    print("RESULT " + json.dumps({"threads": args.threads, "batch": args.batch, "window": args.window,
                                  "repeats": args.repeats, "models": res, "worst_speedup": min(sp),
                                  "median_speedup": statistics.median(sp)}))


if __name__ == "__main__":
    main()
