"""Where the time of a tiled prediction goes on this machine: each stage alone, then the whole run by thread.

The slide and model of ``bench_tiled_predict.py`` (the 8k full-tissue JPEG slide, the seeded 8/16/32 UNet,
window 512, overlap 0.25, batch 4, labels only, torch on ``--threads``). Measured, wall and CPU seconds:

- ``read``: the level read and decoded block row by block row (dask, threaded), as the bench's read speed;
- ``model_1s`` / ``model_Ns``: the model's forward passes alone over the run's 441 windows (``WindowRunner``,
  channels-last batches as the engine feeds them) on ``--threads`` threads and on one;
- ``write``: the output store's work for the 36 finished blocks (argmax, block-level pyramid, compression and
  files, ``OutputStore.block_parts`` and its writes) on model-like probabilities, one torch thread;
- ``run``: the whole prediction (``run_predict``, one model stream and ``streams="auto"``), its process CPU
  and the CPU of each of its threads (model / main, torch's worker, writer, zarr's I/O threads that also
  decode the JPEG tiles).

From these: ``cpu_floor_s`` = (model CPU on ``--threads`` threads + read CPU + write CPU) / cores, the least
wall time any schedule of the same work on this machine could take before the engine's own work (stacking,
normalising, blending) is counted; ``bound_pipeline_vs_model`` = the model's forward time / that floor, the
highest ``pipeline_vs_model`` (bench_tiled_predict.py) such a machine allows.

Usage: ``python benchmarks/profile_tiled.py [--threads 2] [--rounds 2]``; the last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _threads_cpu() -> dict[str, tuple[str, float]]:
    """CPU seconds of each live thread of this process (Linux /proc), named by Python where it knows the
    thread ("MainThread", "medseg-write_0", ...), else "native" (torch's OpenMP workers, zarr's I/O threads)."""
    import threading

    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            name = names.get(tid, "native")
            st = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[tid] = (name, (int(st[11]) + int(st[12])) / tick)
        except OSError:
            pass
    return out


def _timed(fn) -> tuple[float, float]:
    c, t = time.process_time(), time.perf_counter()
    fn()
    return round(time.perf_counter() - t, 3), round(time.process_time() - c, 3)


def _write_blocks(store, probs, boxes) -> None:
    """The output store's work for each block: argmax, pyramid, compression, chunk files, journal entry."""
    for i, box in enumerate(boxes):
        p = probs[:, :box[0][1] - box[0][0], :box[1][1] - box[1][0]]
        store._write_block(f"profile-{i}", store.block_parts(box, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="each measure this many times; the fastest counts")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import bench_tiled_predict as btp
    from _synthetic import CACHE_DIR, make_pyramidal_tiff

    from napari_medseg.inference import run_predict
    from napari_medseg.inference.modelrun import WindowRunner
    from napari_medseg.inference.output import OutputStore
    from napari_medseg.io.reader import open_image

    slide = make_pyramidal_tiff(CACHE_DIR, 8192, 8192, 1.0, seed=1)
    src = open_image(slide)
    model = btp._model("unet")
    tmp = Path(tempfile.mkdtemp(prefix="profile-tiled-"))
    best: dict[str, tuple[float, float]] = {}

    def keep(key: str, wc: tuple[float, float]) -> None:
        if key not in best or wc[0] < best[key][0]:
            best[key] = wc

    lvl = src.levels[0]
    h = src.shape[0]
    runs: dict[str, dict] = {}
    for _ in range(args.rounds):
        keep("read", _timed(lambda: [lvl[y:y + 1024].compute(scheduler="threads") for y in range(0, h, 1024)]))
        runner = WindowRunner(model, torch.device("cpu"), batch_size=btp.BATCH)
        batch = torch.rand(btp.BATCH, *btp.WINDOW, 3).permute(0, 3, 1, 2)  # channels-last, as the engine's
        for n in (args.threads, 1):
            torch.set_num_threads(n)
            runner(batch)
            keep(f"model_{n}t", _timed(lambda r=runner, b=batch: [r(b) for _ in range(-(-441 // btp.BATCH))]))
        torch.set_num_threads(args.threads)
        for streams in (1, "auto"):
            out = tmp / "run.zarr"
            shutil.rmtree(out, ignore_errors=True)
            before, c0, t0 = _threads_cpu(), time.process_time(), time.perf_counter()
            r = run_predict(src, model, out, window=btp.WINDOW, overlap=0.25, batch_size=btp.BATCH,
                            blend="gaussian", tissue_mask=False, device="cpu", streams=streams)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            per = {}
            for tid, (name, c) in _threads_cpu().items():
                d = c - before.get(tid, (name, 0.0))[1]
                if d > 0.01:
                    per[f"{name}:{tid}"] = round(d, 2)
            key = f"run_streams_{streams}"
            if key not in runs or wall < runs[key]["wall_s"]:
                runs[key] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "threads_cpu_s": per,
                             "model_s": round(r.stats["model_s"], 2), "blend_s": round(r.stats["blend_s"], 2)}
        # the writer's share, on the probabilities of a smooth random field (zero-cost model)
        torch.set_num_threads(1)
        store = OutputStore.open(tmp / "run.zarr")
        lay = store.layout
        p1 = torch.nn.functional.avg_pool2d(torch.rand(1, 1, *lay.block), 9, 1, 4)[0]
        probs = torch.cat([1 - p1, p1])
        boxes = [((y, min(y + lay.block[0], h)), (x, min(x + lay.block[1], h)))
                 for y in range(0, h, lay.block[0]) for x in range(0, h, lay.block[1])]

        keep("write", _timed(lambda st=store, pr=probs, bx=boxes: _write_blocks(st, pr, bx)))
        torch.set_num_threads(args.threads)
    shutil.rmtree(tmp, ignore_errors=True)
    cores = min(args.threads, os.cpu_count() or 1)
    model_wall, model_cpu = best[f"model_{args.threads}t"]
    floor = (model_cpu + best["read"][1] + best["write"][1]) / cores
    for k, v in best.items():
        print(f"{k:12s} wall {v[0]:6.2f} s  cpu {v[1]:6.2f} s", file=sys.stderr)
    for k, v in runs.items():
        print(f"{k}: {v}", file=sys.stderr)
    result = {"read_s": best["read"], "model_s": best[f"model_{args.threads}t"], "model_1thread_s": best["model_1t"],
              "write_s": best["write"], "run_1stream": runs["run_streams_1"], "run_auto": runs["run_streams_auto"],
              "cpu_floor_s": round(floor, 2), "bound_pipeline_vs_model": round(model_wall / floor, 3),
              "pipeline_vs_model_1stream": round(model_wall / runs["run_streams_1"]["wall_s"], 3),
              "pipeline_vs_model_auto": round(model_wall / runs["run_streams_auto"]["wall_s"], 3),
              "threads": args.threads, "cores": os.cpu_count()}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
