"""The CRF rows of ``bench_deploy.py``: edge-aware refinement (``inference.crf``) of an under-trained and a
converged ISBI reference model on the held-out mosaic, and its tile consistency.

For each model: the mosaic is predicted with float16 probabilities (timed), scored (Dice, HD95), refined with
``inference.crf_pass.refine_prediction`` at the default settings (timed: ``crf_cost`` = refinement time /
prediction time) and scored again. Tile consistency: the same probabilities refined in blocks of ``block`` px
and as one block the size of the mosaic; ``crf_border_agree`` = fraction of equal labels within 8 px of a block
border (``crf_agree`` over all pixels).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np


def _labels(out: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(out), mode="r")["labels"]["prediction"]["0"])


def crf_rows(slide: Path, src: Any, models: dict[str, Path], msk: np.ndarray, boxes: list, tmp: Path,
             scores: Any, block: int = 256) -> dict[str, Any]:
    from napari_medseg.core.events import drive
    from napari_medseg.inference.crf import CRFConfig
    from napari_medseg.inference.crf_pass import refine_prediction
    from napari_medseg.inference.predictor import run_predict

    out: dict[str, Any] = {"crf_settings": CRFConfig().to_dict()}
    for name, ckpt in models.items():
        o = tmp / f"crf-{name}.zarr"
        t = time.perf_counter()
        run_predict(slide, str(ckpt), o, window=(256, 256), batch_size=4, tissue_mask=False, overwrite=True,
                    resume=False, write_probs="float16", device="cpu", block=(block, block))
        t_pred = time.perf_counter() - t
        d0, h0 = scores(_labels(o), msk, boxes)
        t = time.perf_counter()
        drive(refine_prediction(o, src, CRFConfig(), block=block))
        t_crf = time.perf_counter() - t
        tiled = _labels(o)
        d1, h1 = scores(tiled, msk, boxes)
        out.update({f"crf_{name}_dice": round(d0, 2), f"crf_{name}_dice_refined": round(d1, 2),
                    f"crf_{name}_dice_gain": round(d1 - d0, 2), f"crf_{name}_hd95": round(h0, 2),
                    f"crf_{name}_hd95_refined": round(h1, 2), f"crf_{name}_cost": round(t_crf / t_pred, 2)})
        print(f"  CRF, {name} model: Dice {d0:.2f} -> {d1:.2f}, HD95 {h0:.2f} -> {h1:.2f} px, refinement "
              f"{t_crf:.1f} s after {t_pred:.1f} s of prediction", flush=True)
        if name == "converged":
            whole = tmp / "crf-whole.zarr"
            shutil.copytree(o, whole)
            side = max(tiled.shape)
            big = -(-side // block) * block  # whole chunks: one block covers the mosaic
            drive(refine_prediction(whole, src, CRFConfig(), block=big))
            ref = _labels(whole)
            yy, xx = np.indices(tiled.shape)
            near = (np.minimum(yy % block, block - 1 - yy % block) < 8) | (np.minimum(xx % block, block - 1 - xx % block) < 8)
            out["crf_border_agree"] = round(float((tiled[near] == ref[near]).mean()), 6)
            out["crf_agree"] = round(float((tiled == ref).mean()), 6)
    return out
