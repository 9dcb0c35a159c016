"""Deployment paths side by side: the same model through torch fp32, torch bfloat16, ONNX Runtime fp32 and ONNX
Runtime INT8 (plus flip TTA), on the real tiled predictor, CPU, 2 threads, one process.

The model is ISBI-ref (``_reference.isbi_ref``: the default UNet trained on ISBI 2012, cached). The "slide" is
a mosaic of the 10 held-out images (2 x 5 tiles of 512 px, repeated ``--repeat`` times down), written as a
tiled TIFF and predicted end to end with ``napari_medseg.inference.predict`` (window 256, batch 4, no tissue
mask: EM has no background), each path ``--rounds`` times in alternation; the fastest round counts. Dice of
the membrane class per held-out image (percent, mean over the images), HD95 through MONAI.

- ``ort_max_abs_diff``: the largest |probability difference| between torch and ONNX Runtime fp32 on 16 windows
  of the mosaic (normalised exactly as in prediction): the issue's 1e-4 gate.
- ``ort_label_agree``: fraction of mosaic pixels whose label is the same with both (gate 0.9999).
- ``int8_speedup``: INT8 MPix/s over the faster of torch fp32 and ORT fp32 (gate 1.5); ``int8_dice_drop``: Dice
  fp32 - Dice INT8 in points (gate 1.0); ``int8_size_ratio``: INT8 file / fp32 file (gate 0.35);
  ``int8_model_speedup``: the same ratio for the model alone (a tight loop over one batch of 4 windows), which
  shows how much of the whole path the pipeline around the model takes.
- ``bf16_speedup`` / ``bf16_model_speedup`` / ``bf16_dice_drop``: ``precision="bf16"`` (bfloat16 autocast on the
  CPU) against the fastest float32 path, whole path and model alone, and its Dice change; ``bf16_native``: whether
  this CPU computes bfloat16 natively (AMX / AVX512-BF16; elsewhere it is emulated and slow).
- The same keys with ``_relu``: a second reference trained with ``act="relu"``, the quantisation-friendly
  activation (MONAI's default PReLU stays a float op in ONNX Runtime's INT8 graph); ``--no-relu`` skips it.
- ``tta_dice_gain`` / ``tta_hd95_change`` / ``tta_cost``: flip TTA's Dice gain in points, HD95 change in px and
  time ratio; ``tta_dihedral_*`` the same for the 8 rotations x mirrors, ``tta_multiscale_*`` for the window at
  0.75 / 1 / 1.25 of its size; ``--only-tta`` runs only torch fp32 and these (no conversion).
- ``crf_*`` (``_crf_bench.py``): the CRF refinement of an under-trained (``--under-steps``) and the converged
  model: Dice and HD95 before and after, its cost, and ``crf_border_agree`` (tiled vs whole at block borders);
  ``--only-crf`` runs only these, ``--no-crf`` skips them.
- ``kd_*`` (``_kd_bench.py``): a light student distilled from ISBI-ref against the same student trained on the
  labels alone; ``--only-kd`` runs only these, ``--no-kd`` skips them.

``--quick``: a 2-image mosaic, one round (smoke test). Last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def mosaic(pairs, cols: int, repeat: int) -> tuple[np.ndarray, np.ndarray, list[tuple[slice, slice]]]:
    """Images and masks tiled ``cols`` wide (``repeat`` copies down); the boxes of the first copy."""
    imgs = [np.asarray(p.image.levels[0]) for p in pairs]
    h, w = imgs[0].shape[:2]
    rows = math.ceil(len(imgs) / cols)
    img = np.zeros((rows * h, cols * w), imgs[0].dtype)
    msk = np.zeros((rows * h, cols * w), np.uint8)
    boxes = []
    for i, (a, p) in enumerate(zip(imgs, pairs)):
        r, c = divmod(i, cols)
        box = (slice(r * h, (r + 1) * h), slice(c * w, (c + 1) * w))
        img[box], msk[box] = a, p.mask
        boxes.append(box)
    return np.concatenate([img] * repeat), np.concatenate([msk] * repeat), boxes


def scores(labels: np.ndarray, mask: np.ndarray, boxes) -> tuple[float, float]:
    """Mean Dice (percent) and HD95 (px) of class 1 over the held-out images."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    dices, hds = [], []
    for b in boxes:
        p, g = labels[b] == 1, mask[b] == 1
        dices.append(200.0 * (p & g).sum() / max(1, p.sum() + g.sum()))
        t = lambda a: torch.from_numpy(np.stack([~a, a]))[None].float()  # noqa: E731
        hds.append(float(compute_hausdorff_distance(t(p), t(g), percentile=95)[0, 0]))
    return float(np.mean(dices)), float(np.nanmean(hds))


def run_path(slide: Path, model, out: Path, backend: str, tta: bool | str = False,
             precision: str = "auto", streams: int | str = 1) -> tuple[np.ndarray, float, float]:
    import zarr

    from napari_medseg.inference.predictor import run_predict

    t = time.perf_counter()
    res = run_predict(slide, model, out, window=(256, 256), batch_size=4, tissue_mask=False, overwrite=True,
                      resume=False, backend=backend, tta=tta, device="cpu", precision=precision, streams=streams)
    dt = time.perf_counter() - t
    lab = np.asarray(zarr.open_group(out, mode="r")["labels"]["prediction"]["0"])
    return lab, dt, res.mpix_s


TTA_ROWS = (("flip", "flips"), ("dihedral", "dihedral"), ("multiscale", "multiscale"))


def tta_keys(by: dict[str, dict], skip: bool) -> dict[str, float]:
    """Each TTA row's Dice gain (points), HD95 change (px) and time ratio against torch fp32 without it."""
    out: dict[str, float] = {}
    if skip:
        return out
    base = by["torch fp32 (prelu)"]
    for name, _ in TTA_ROWS:
        row = by[f"torch fp32 + {name} TTA (prelu)"]
        key = "tta" if name == "flip" else f"tta_{name}"
        out[f"{key}_dice_gain"] = round(row["dice"] - base["dice"], 2)
        out[f"{key}_hd95_change"] = round(row["hd95"] - base["hd95"], 2)
        out[f"{key}_cost"] = round(row["seconds"] / base["seconds"], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="copies of the 10-image mosaic stacked down")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--only-tta", action="store_true", help="only torch fp32 and its TTA rows")
    ap.add_argument("--no-relu", action="store_true", help="skip the ReLU (quantisation-friendly) reference")
    ap.add_argument("--no-crf", action="store_true", help="skip the CRF rows")
    ap.add_argument("--only-crf", action="store_true", help="only the CRF rows (_crf_bench.py)")
    ap.add_argument("--under-steps", type=int, default=100, help="training steps of the under-trained model (CRF)")
    ap.add_argument("--no-kd", action="store_true", help="skip the distillation rows")
    ap.add_argument("--only-kd", action="store_true", help="only the distillation rows (_kd_bench.py)")
    ap.add_argument("--kd-steps", type=int, default=600, help="training steps of each student")
    ap.add_argument("--kd-seeds", default="0,1,2")
    ap.add_argument("--kd-mode", choices=("pixel", "channel"), default="pixel", help="the distillation loss")
    ap.add_argument("--kd-weight", type=float, default=None,
                    help="weight of the distillation loss (default: TrainConfig's, 3 since 2026-12-05; 1 before)")
    ap.add_argument("--kd-unlabelled", type=float, default=1.0, metavar="R",
                    help="the distilled student also learns from the held-out images, unlabelled: R x its batch "
                    "from anywhere in the images (see _kd_bench.py); 1, as napari-medseg distil; 0: labelled only")
    args = ap.parse_args()
    import tifffile
    import torch

    torch.set_num_threads(args.threads)
    from _reference import DATA, isbi_ref

    if not (DATA / "isbi2012_em").is_dir():
        print("SKIP: ../shared/data/isbi2012_em is absent")
        print("RESULT " + json.dumps({"skipped": True}))
        return 0
    from napari_medseg.inference.backends import backend_model, calibration_batches
    from napari_medseg.io.reader import open_image
    from napari_medseg.models import load_model
    from napari_medseg.sharing import open_model_file

    t0 = time.perf_counter()
    refs = {"prelu": isbi_ref(args.threads)}
    if args.only_tta:
        args.no_kd = args.no_crf = args.no_relu = True
    if not args.no_relu:
        refs["relu"] = isbi_ref(args.threads, act="relu")
    for act, ref in refs.items():
        how = f"trained in {ref.seconds:.0f} s" if ref.seconds else "cached"
        print(f"reference model ({act}): {ref.checkpoint} ({how})")
    ref = refs["prelu"]
    pairs = ref.test[:2] if args.quick else ref.test
    img, msk, boxes = mosaic(pairs, 2 if args.quick else 5, 1 if args.quick else args.repeat)
    tmp = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    slide = tmp / "mosaic.tif"
    tifffile.imwrite(slide, img, tile=(256, 256))
    mpix = img.size / 1e6
    print(f"mosaic {img.shape} ({mpix:.1f} MPix), {len(pairs)} held-out images scored")
    src = open_image(slide)
    if args.only_kd or not (args.no_kd or args.only_crf):
        from _kd_bench import kd_rows

        kd = kd_rows(ref, slide, msk, boxes, tmp, scores, run_path, steps=20 if args.quick else args.kd_steps,
                     seeds=[0] if args.quick else [int(x) for x in args.kd_seeds.split(",")], threads=args.threads,
                     kd_mode=args.kd_mode, unlabelled=args.kd_unlabelled, kd_weight=args.kd_weight)
        if args.only_kd:
            print("RESULT " + json.dumps(kd | {"total_s": round(time.perf_counter() - t0, 1)}))
            return 0
    if args.only_crf or not (args.no_crf or args.only_kd):
        from _crf_bench import crf_rows

        under = isbi_ref(args.threads, steps=args.under_steps).checkpoint
        crf = crf_rows(slide, src, {"under": under, "converged": ref.checkpoint}, msk, boxes, tmp, scores)
        if args.only_crf:
            print("RESULT " + json.dumps(crf | {"total_s": round(time.perf_counter() - t0, 1)}))
            return 0

    # per model: the converted files (made once; their making is timed, not counted in throughput), and the
    # model alone in a tight loop over one batch of 4 windows (what the pipeline around it costs: issue 17)
    files: dict[str, dict[str, Path]] = {act: {"torch": r.checkpoint} for act, r in refs.items()}
    model_ms: dict[str, float] = {}
    made: dict[str, float] = {}
    worst = 0.0
    for act, r in ({} if args.only_tta else refs).items():
        t = time.perf_counter()
        fp32 = backend_model(str(r.checkpoint), "onnxruntime", window=(256, 256), folder=tmp / "deploy")
        made[f"export_s_{act}"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        int8 = backend_model(str(r.checkpoint), "onnxruntime-int8", source=src, window=(256, 256),
                             folder=tmp / "deploy")
        made[f"quantize_s_{act}"] = round(time.perf_counter() - t, 1)
        files[act] = {"torch": r.checkpoint, "torch-bf16": r.checkpoint, "onnxruntime": Path(fp32),
                      "onnxruntime-int8": Path(int8)}
        net, ck = load_model(r.checkpoint)
        mods = {"torch": net, "torch-bf16": BF16(net), "onnxruntime": open_model_file(fp32).module,
                "onnxruntime-int8": open_model_file(int8).module}
        batches = [torch.from_numpy(b) for b in calibration_batches(src, 0, ck.norm, (256, 256), 16, seed=1)]
        with torch.inference_mode():
            for x in batches:  # probabilities: torch vs ORT fp32 on the same normalised windows
                a = torch.softmax(net(x), 1)
                worst = max(worst, float((a - torch.softmax(mods["onnxruntime"](x), 1)).abs().max()))
            for kind, m in mods.items():
                model_ms[f"{kind} {act}"] = round(1000 * tight_loop(m, batches[0]), 1)
    print("model alone, ms per batch of 4 x 256^2:", model_ms)

    kinds = (("torch fp32", "torch"),) if args.only_tta else (
        ("torch fp32", "torch"), ("torch bf16", "torch-bf16"), ("ORT fp32", "onnxruntime"),
        ("ORT INT8", "onnxruntime-int8"))
    paths = [(f"{label} ({act})", kind, False, act) for act in refs for label, kind in kinds]
    if not args.no_tta:
        paths += [(f"torch fp32 + {m} TTA (prelu)", "torch", mode, "prelu")
                  for m, mode in TTA_ROWS]
    best: dict[str, float] = {}
    labels: dict[str, np.ndarray] = {}
    for r in range(1 if args.quick else args.rounds):
        order = paths if r % 2 == 0 else paths[::-1]  # alternate, so drift in machine load hits all paths
        for name, kind, tta, act in order:
            # the converted files are passed as the model (the predictor opens ONNX like any model)
            lab, dt, _ = run_path(slide, str(files[act][kind]), tmp / f"{r}-{kind}-{act}-{tta}.zarr", "torch", tta,
                                  precision="bf16" if kind == "torch-bf16" else "auto")
            best[name] = min(best.get(name, math.inf), dt)
            labels[name] = lab
            print(f"round {r}: {name}: {dt:.2f} s ({mpix / dt:.2f} MPix/s)")
    rows = []
    for name, kind, _, act in paths:
        d, hd = scores(labels[name], msk, boxes)
        rows.append({"path": name, "seconds": round(best[name], 2), "mpix_s": round(mpix / best[name], 3),
                     "dice": round(d, 2), "hd95": round(hd, 2),
                     "size_mb": round(Path(files[act][kind]).stat().st_size / 1e6, 2),
                     "model_ms": model_ms.get(f"{kind} {act}")})
    print("\n| path | MPix/s (whole mosaic) | model alone, ms / batch | Dice | HD95 (px) | model file (MB) |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['path']} | {row['mpix_s']} | {row['model_ms']} | {row['dice']} | {row['hd95']} | "
              f"{row['size_mb']} |")
    by = {r["path"]: r for r in rows}

    def gates(act: str) -> dict[str, float]:
        fastest = max(by[f"torch fp32 ({act})"]["mpix_s"], by[f"ORT fp32 ({act})"]["mpix_s"])
        fastest_ms = min(model_ms[f"torch {act}"], model_ms[f"onnxruntime {act}"])
        q, b = by[f"ORT INT8 ({act})"], by[f"torch bf16 ({act})"]
        return {"int8_speedup": round(q["mpix_s"] / fastest, 3),
                "bf16_speedup": round(b["mpix_s"] / fastest, 3),
                "bf16_model_speedup": round(fastest_ms / model_ms[f"torch-bf16 {act}"], 3),
                "bf16_dice_drop": round(by[f"torch fp32 ({act})"]["dice"] - b["dice"], 2),
                "int8_model_speedup": round(fastest_ms / model_ms[f"onnxruntime-int8 {act}"], 3),
                "int8_dice_drop": round(by[f"torch fp32 ({act})"]["dice"] - q["dice"], 2),
                "int8_size_ratio": round(files[act]["onnxruntime-int8"].stat().st_size
                                         / files[act]["onnxruntime"].stat().st_size, 3)}

    if args.only_tta:
        result = tta_keys(by, args.no_tta)
        print("RESULT " + json.dumps(result | {"rows": rows, "total_s": round(time.perf_counter() - t0, 1)}))
        return 0
    result = {"ort_max_abs_diff": worst,
              "ort_label_agree": float((labels["torch fp32 (prelu)"] == labels["ORT fp32 (prelu)"]).mean()),
              **gates("prelu"),
              "kd_param_ratio": None, "kd_dice_frac": None, "kd_speedup": None, "kd_gain_vs_plain": None,
              "crf_border_agree": None}
    if not args.no_kd:
        result.update(kd)
    if not args.no_crf:
        result.update(crf)
    if "relu" in refs:
        result.update({f"{k}_relu": v for k, v in gates("relu").items()})
    result.update(tta_keys(by, args.no_tta))
    from napari_medseg.models.devices import cpu_bf16_native

    result.update(made | {"bf16_native": cpu_bf16_native(), "rows": rows, "threads": args.threads,
                          "mpix": round(mpix, 2),
                          "total_s": round(time.perf_counter() - t0, 1)})
    print("RESULT " + json.dumps(result))
    return 0


class BF16:
    """A model under bfloat16 autocast on the CPU, as ``precision="bf16"`` runs it (for the tight loop)."""

    def __init__(self, net) -> None:
        self.net = net

    def __call__(self, x):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x).float()


def tight_loop(module, x, n: int = 8) -> float:
    """Seconds per call of ``module`` on ``x`` (best of 3 runs of ``n`` calls, after one warm-up)."""
    import torch

    with torch.inference_mode():
        module(x)
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(n):
                module(x)
            best = min(best, (time.perf_counter() - t) / n)
    return best


if __name__ == "__main__":
    raise SystemExit(main())
