"""The distillation rows of ``bench_deploy.py``: a light student distilled from ISBI-ref against the same
student trained on the labels alone.

Teacher: ISBI-ref (``_reference.isbi_ref``: the default UNet, dense labels, 600 steps). Student:
``light_unet`` with widths ``STUDENT_CHANNELS`` (about 1/9 of the teacher's parameters). Both students train on
the teacher's 20 training images with their dense labels, the same steps, batch, patch and seed; the distilled
one adds ``kd_weight x`` logit distillation on every pixel of its patches (``training.distill``: the teacher
sees the student's view). Each is scored like the other paths (the held-out mosaic predicted end to end: Dice
and HD95 of the membrane class), and timed on it against the teacher (torch fp32, the faster of two rounds).

``--kd-mode channel`` distils channel-wise (Shu et al. 2021) instead of per pixel. ``--kd-unlabelled R`` (default
1, as ``napari-medseg distil``; 0 before 2026-12-05) gives the distilled student what a user has beside the
labels, the images to be predicted, unlabelled: the held-out
images join its training data without labels and ``unlabelled_ratio=R`` x its batch of windows is drawn from
anywhere in the images, where only the teacher speaks (the plain student cannot use them: it has no teacher).
Scoring stays on the held-out labels, which neither student sees.

Keys: ``kd_param_ratio`` (student / teacher parameters), ``kd_dice_frac`` (distilled student Dice / teacher
Dice, mean of seeds), ``kd_speedup`` (student MPix/s / teacher MPix/s on the mosaic, both with the predictor's
default model streams, as ``napari-medseg predict`` runs them; ``kd_speedup_1stream`` with one), ``kd_gain_vs_plain``
(distilled - plain Dice in points, mean of seeds; per seed in ``kd_gain_per_seed``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

STUDENT_CHANNELS = (6, 12, 24, 48)


def _params(ckpt: Path) -> int:
    from napari_medseg.models import build_model, load_checkpoint

    return sum(p.numel() for p in build_model(load_checkpoint(ckpt).model_config).parameters())


def kd_rows(ref: Any, slide: Path, msk: Any, boxes: list, tmp: Path, scores: Any, run_path: Any, *,
            steps: int, seeds: list[int], threads: int, kd_weight: float | None = None, kd_mode: str = "pixel",
            unlabelled: float = 1.0) -> dict[str, Any]:
    from napari_medseg.models import preset
    from napari_medseg.training import TrainConfig, run_training
    from napari_medseg.training.datasets import TrainingData, TrainingItem, make_training_data

    data = make_training_data(ref.train, sparse="dense")
    kd_data = data
    if unlabelled > 0:  # the images to predict, without their labels (nor their masks: nothing can leak)
        kd_data = TrainingData(list(data.items) + [TrainingItem(p.image, None, None, name=p.name) for p in ref.test],
                               data.classes)
    student = preset("light_unet", channels=STUDENT_CHANNELS, num_res_units=1)
    rows: list[dict[str, Any]] = []
    ckpts: dict[str, Path] = {}
    for seed in seeds:
        for kind in ("plain", "kd"):
            extra = {"distill_from": str(ref.checkpoint), "kd_mode": kd_mode, "unlabelled_ratio": unlabelled,
                     **({} if kd_weight is None else {"kd_weight": kd_weight})} if kind == "kd" else {}
            cfg = TrainConfig(model=student, patch_size=(256,), batch_size=8, steps=steps, seed=seed,
                              val_fraction=0.0, library=False, threads=threads,
                              checkpoint_dir=tempfile.mkdtemp(prefix=f"kd-{kind}-"), **extra)
            t = time.perf_counter()
            res = run_training(cfg, kd_data if kind == "kd" else data)
            train_s = time.perf_counter() - t
            ck = Path(res.last_checkpoint)
            lab, dt, _ = run_path(slide, str(ck), tmp / f"kd-{kind}-{seed}.zarr", "torch")
            d, hd = scores(lab, msk, boxes)
            rows.append({"seed": seed, "kind": kind, "dice": round(d, 2), "hd95": round(hd, 2),
                         "train_s": round(train_s, 1), "predict_s": round(dt, 2)})
            ckpts[kind] = ck
            print(f"  student {kind}, seed {seed}: Dice {d:.2f}, HD95 {hd:.2f} px ({train_s:.0f} s training)",
                  flush=True)
    # the teacher and a student on the same mosaic, alternately, the faster of two rounds: with one model stream
    # and with the predictor's default model streams ("auto", as napari-medseg predict runs)
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(2):
        for streams in (1, "auto"):
            for who, ck in (("teacher", ref.checkpoint), ("student", ckpts["kd"])):
                lab, dt, _ = run_path(slide, str(ck), tmp / f"kd-time-{who}-{r}-{streams}.zarr", "torch",
                                      streams=streams)
                times.setdefault((who, str(streams)), []).append(dt)
                if who == "teacher":
                    teacher_dice, teacher_hd = scores(lab, msk, boxes)
    by = {(r["seed"], r["kind"]): r for r in rows}
    gains = [by[(s, "kd")]["dice"] - by[(s, "plain")]["dice"] for s in seeds]
    kd_dice = statistics.mean(by[(s, "kd")]["dice"] for s in seeds)
    return {"kd_param_ratio": round(_params(ckpts["kd"]) / _params(ref.checkpoint), 4),
            "kd_dice_frac": round(kd_dice / teacher_dice, 4),
            "kd_speedup": round(min(times[("teacher", "auto")]) / min(times[("student", "auto")]), 3),
            "kd_speedup_1stream": round(min(times[("teacher", "1")]) / min(times[("student", "1")]), 3),
            "kd_gain_vs_plain": round(statistics.mean(gains), 2), "kd_gain_per_seed": [round(g, 2) for g in gains],
            "kd_teacher_dice": round(teacher_dice, 2), "kd_teacher_hd95": round(teacher_hd, 2),
            "kd_student_dice": round(kd_dice, 2),
            "kd_plain_dice": round(statistics.mean(by[(s, "plain")]["dice"] for s in seeds), 2),
            "kd_rows": rows, "kd_steps": steps, "kd_student": list(STUDENT_CHANNELS), "kd_mode": kd_mode,
            "kd_unlabelled": unlabelled, "kd_weight": TrainConfig().kd_weight if kd_weight is None else kd_weight}
