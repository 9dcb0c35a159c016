"""Does the Dask path scale? The same slides predicted by 1 and by 2 local Dask workers (one torch thread
each), beside the plain predictor in this process with 1 and 2 torch threads (issue 17).

The inputs are ``--slides`` copies of one synthetic H&E-like JPEG pyramidal TIFF (``_synthetic``, full tissue,
``--size`` px square) and the model the seeded UNet of ``bench_tiled_predict`` (8/16/32 channels, batch norm),
saved as a checkpoint that every worker opens; window 512, batch 4, overlap 0.25, Gaussian blending, labels
only. Each way runs ``--rounds`` times in alternation (the best round counts); a Dask way's time includes
starting its local cluster and the workers' imports, as a user's run does (``startup_s`` is reported apart).

Last line: ``RESULT {"mpix_s_dask_1", "mpix_s_dask_2", "dask_efficiency_2", "mpix_s_local_1", "mpix_s_local_2",
"local_efficiency_2", ...}`` where efficiency = MPix/s with 2 / (2 x MPix/s with 1): 1.0 is perfect scaling; on a
2-core machine the second worker competes with the first for the same cores, so ~0.5-0.9 is what to expect.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _checkpoint(folder: Path) -> Path:
    import torch

    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.models import Checkpoint, ModelConfig, build_model, save_checkpoint
    from napari_medseg.models.normalization import NormConfig

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=3, out_channels=2, channels=(8, 16, 32), num_res_units=0, norm="batch")
    net = build_model(cfg).eval()
    path = folder / "unet.pt"
    save_checkpoint(path, Checkpoint(cfg, net.state_dict(), ClassSchema(names=("background", "tissue")),
                                     NormConfig.uint8(3)))
    return path


def _dask(slides: list[Path], ckpt: Path, out: Path, workers: int) -> tuple[float, float]:
    from napari_medseg.core.events import drive
    from napari_medseg.inference.distributed import make_client, predict_many

    t0 = time.perf_counter()
    client = make_client(workers=workers, threads_per_worker=1)
    try:
        client.wait_for_workers(workers)
        start = time.perf_counter() - t0
        outs = [out / f"{i}.zarr" for i in range(len(slides))]
        drive(predict_many(slides, str(ckpt), outs, client=client, window=(512, 512), batch_size=4,
                           tissue_mask=False, write_probs=None, overwrite=True, resume=False), lambda ev: None)
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
    return time.perf_counter() - t0, start


def _local(slides: list[Path], ckpt: Path, out: Path, threads: int) -> float:
    import torch

    from napari_medseg.inference.predictor import run_predict

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for i, s in enumerate(slides):
        run_predict(s, str(ckpt), out / f"{i}.zarr", window=(512, 512), batch_size=4, tissue_mask=False,
                    overwrite=True, resume=False, device="cpu")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 slides of 2048 px, one round")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    from _synthetic import CACHE_DIR, make_pyramidal_tiff

    size, n, rounds = (2048, 2, 1) if a.quick else (a.size, a.slides, a.rounds)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    src = make_pyramidal_tiff(CACHE_DIR, size, size, 1.0)
    slides = []
    for i in range(n):  # separate files: each worker opens its own
        slides.append(tmp / f"slide{i}.tif")
        shutil.copy(src, slides[-1])
    ckpt = _checkpoint(tmp)
    mpix = n * size * size / 1e6
    best: dict[str, float] = {}
    startup: dict[str, float] = {}
    ways = ["local_1", "local_2", "dask_1", "dask_2"]
    for r in range(rounds):
        for way in ways if r % 2 == 0 else ways[::-1]:
            out = tmp / f"out-{way}-{r}"
            out.mkdir()
            kind, k = way.split("_")
            if kind == "local":
                dt = _local(slides, ckpt, out, int(k))
            else:
                dt, st = _dask(slides, ckpt, out, int(k))
                startup[way] = round(min(startup.get(way, st), st), 2)
            best[way] = min(best.get(way, float("inf")), dt)
            print(f"round {r}: {way}: {dt:.1f} s ({mpix / dt:.2f} MPix/s)", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    rate = {w: round(mpix / t, 3) for w, t in best.items()}
    res = {f"mpix_s_{w}": v for w, v in rate.items()}
    res["dask_efficiency_2"] = round(rate["dask_2"] / (2 * rate["dask_1"]), 3)
    res["local_efficiency_2"] = round(rate["local_2"] / (2 * rate["local_1"]), 3)
    res.update({"startup_s": startup, "slides": n, "size": size, "mpix": round(mpix, 1), "rounds": rounds,
                "quick": a.quick})
    shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
