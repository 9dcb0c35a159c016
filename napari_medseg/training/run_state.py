"""One training run's state and its step: optimiser, learning rate, augmentation, the weight EMA, the
semi-supervised term (pseudo-labels or Mean Teacher), validation and checkpoints. ``loop.train`` drives it.

Patches are ``(N, C, *P)``; labels ``(N, *P)`` label-store values (0 = not painted).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.checkpoint import Checkpoint, save_checkpoint
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.devices import DeviceSetup
from napari_medseg.models.normalization import NormConfig
from napari_medseg.training.augment import Augmenter
from napari_medseg.training.boundary import (
    BoundaryTerm,
    DeepSupervision,
    check_boundary_data,
    check_deep_supervision,
    forward_heads,
    ramp,
)
from napari_medseg.training.config import TrainConfig
from napari_medseg.training.contact import ContactWeights
from napari_medseg.training.data import TrainingData
from napari_medseg.training.distill import kd_loss
from napari_medseg.training.domain import DomainAdapter, check_domain_data, split_domains
from napari_medseg.training.ema import WeightEMA
from napari_medseg.training.events import ValidationEvent
from napari_medseg.training.finetune import make_optimizer, optimizer_step, set_lr, unfreeze_encoder
from napari_medseg.training.gated_crf import gated_crf_loss
from napari_medseg.training.losses import SparseSegLoss, consistency_loss, store_to_target
from napari_medseg.training.mean_teacher import MeanTeacher
from napari_medseg.training.metrics import confusion, dense_scores, dice_from_confusion, scores_from_confusion
from napari_medseg.training.object_sizes import painted_object_diameter
from napari_medseg.training.prefetch import to_tensors
from napari_medseg.training.pseudo_label import (
    PseudoLabels,
    apply_cutmix,
    cutmix_boxes,
    pl_weight,
    pseudo_label_loss,
    teacher_targets,
)
from napari_medseg.training.sampler import PatchSampler

log = logging.getLogger(__name__)

def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """The learning rate's multiplier at ``step`` (0-based) once ``progress`` of the run is done: a linear
    warm-up over ``warmup_steps`` steps, then the schedule over the run's progress, so that a run ended by its
    time budget anneals as fully as one ended by its step count."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    t = min(1.0, max(0.0, progress))
    if cfg.lr_schedule == "poly":
        return max(0.0, 1.0 - t) ** 0.9
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


def run_progress(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Fraction of the run done after ``step`` steps and ``elapsed_s`` seconds of training: steps or time
    budget, whichever is further, in [0, 1]. Learning rate, ramp-ups and thresholds all follow it."""
    p = step / cfg.steps
    if cfg.time_budget_s:
        p = max(p, elapsed_s / cfg.time_budget_s)
    return min(1.0, max(0.0, p))


class Run:
    """State of one run (kept out of the generator body to keep it readable)."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, setup: DeviceSetup, model_cfg: ModelConfig,
                 sampler: PatchSampler, norm: NormConfig, model: nn.Module, ema: WeightEMA | None,
                 out_dir: Path, round_: int) -> None:
        self.cfg, self.data, self.setup, self.model_cfg = cfg, data, setup, model_cfg
        self.sampler, self.norm, self.model, self.ema = sampler, norm, model, ema
        self.mt = None
        if cfg.semi == "mean_teacher":
            assert ema is not None
            self.mt = MeanTeacher(ema, cfg.consistency_weight, cfg.rampup, cfg.uncertainty_mask,
                                  cfg.uncertainty_threshold, cfg.uncertainty_samples, cfg.teacher_noise)
        self.out_dir, self.round = out_dir, round_
        self.dims = model_cfg.spatial_dims
        self.mf = setup.memory_format(self.dims)
        self.dev = setup.device
        # frozen weights (finetune.prepare_model) are left out; the encoder gets its own group with encoder_lr_scale
        self.opt: torch.optim.Optimizer = make_optimizer(model, cfg)
        self.unfrozen_at: int | None = None  # the step after which a frozen encoder learns too (cfg.unfreeze_at)
        self.lr_now = cfg.lr * lr_factor(cfg, 0, 0.0)
        self.grad_norm: float | None = None  # before clipping, at the last update (with clip_grad)
        self.scaler = torch.amp.GradScaler(self.dev.type) if setup.use_scaler else None
        self.loss_fn = SparseSegLoss(cfg.loss, cfg.focal_gamma, label_smoothing=cfg.label_smoothing,
                                     class_weights=cfg.class_weights)
        self.aug = Augmenter(self.dims, self.dev, seed=cfg.seed, elastic=cfg.elastic, enabled=cfg.augment,
                             stain=cfg.stain_jitter)
        self.mix_gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self.n_l, self.n_u = cfg.split_batch()
        self.last_val: dict[str, Any] = {}
        self.best_val = -math.inf
        self.parent: str | None = None  # what the run started from (a library name or a file), for the meta
        self.kd: Any = None  # distill.Teacher when cfg.distill_from is set (the loop loads it)
        # domain adaptation (training/domain.py): target windows per step; the discriminator joins self.opt
        da = cfg.domain_adapt != "none" and check_domain_data(cfg.domain_adapt, data.items) > 0
        self.n_t = max(1, int(round(self.n_l * cfg.da_target_ratio))) if da else 0
        self.da = DomainAdapter(cfg.domain_adapt, model, self.opt, self.dims, cfg.da_rampup, cfg.lr) if da else None
        self.boundary = None  # boundary losses and deep supervision (boundary.py)
        if cfg.boundary_loss != "none":
            check_boundary_data(cfg.boundary_loss, data.items)
            self.boundary = BoundaryTerm(cfg.boundary_loss)
        if cfg.deep_supervision:
            check_deep_supervision(model, model_cfg.name)
        self.deep = DeepSupervision(self.loss_fn) if cfg.deep_supervision else None
        objects = () if data is None else data.classes.object_values  # (tests build a Run without data)
        contact = cfg.contact_for(bool(objects))  # separation weights: auto = on with object classes
        self.contact = ContactWeights([v + 1 for v in objects], contact, cfg.contact_radius) if contact else None

    def images(self) -> list[str]:
        """The training images, as paths where they have one (else their names), for the checkpoint's meta."""
        return [str(it.image.path or it.key) for it in self.data.items]

    def make_batch(self, index: int) -> dict[str, torch.Tensor]:
        extra = (self.n_t,) if self.n_t else ()
        return to_tensors(self.sampler.batch(index, self.n_l, self.n_u, *extra), pin=self.dev.type == "cuda")

    def teacher(self) -> nn.Module:
        """The network that gives pseudo-labels (the EMA, or the student itself)."""
        return self.ema.module if (self.ema is not None and self.cfg.pl_teacher == "ema") else self.model

    def step(self, batches: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor], step: int, progress: float
             ) -> tuple[float, float, float, float, float | None]:
        """One optimiser step over ``batches`` (``cfg.accumulate`` micro-batches, or one batch): each one's
        loss / N is back-propagated (gradients add up), then the (unscaled, clipped) update. Returns the mean
        (total, supervised, semi-supervised) losses, the semi-supervised weight and the pseudo-label ratio; a
        non-finite loss in any micro-batch skips the whole update."""
        batches = batches if isinstance(batches, list) else [batches]
        n = len(batches)
        self.opt.zero_grad(set_to_none=True)
        sums = [0.0, 0.0, 0.0]
        w, ratios = 0.0, []
        for batch in batches:
            total, sup, cons, w, ratio = self._losses(batch, progress)
            t, s, c = torch.stack([total.detach(), sup.detach(), cons.detach()]).float().tolist()
            if not math.isfinite(t):  # skip the update: one bad batch must not ruin the weights
                self.opt.zero_grad(set_to_none=True)
                return t, s, c, w, ratio
            sums = [a + b / n for a, b in zip(sums, (t, s, c))]
            ratios += [] if ratio is None else [ratio]
            loss = total / n if n > 1 else total
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            del total, sup, cons, loss
        self.lr_now = self.cfg.lr * lr_factor(self.cfg, step, progress)
        if self.cfg.unfreeze_at > 0 and self.unfrozen_at is None and progress >= self.cfg.unfreeze_at:
            n_unfrozen = unfreeze_encoder(self.model, self.opt, self.cfg.lr, self.cfg.encoder_lr_scale,
                                          keep_norms_frozen=self.cfg.freeze_bn)
            self.unfrozen_at = step
            log.info("step %d (%.0f %% of the run): the encoder learns from now on (%d tensors)", step,
                     100 * progress, n_unfrozen)
        set_lr(self.opt, self.lr_now)
        self.grad_norm = optimizer_step(self.opt, self.scaler, self.cfg.clip_grad)
        if self.ema is not None:
            self.ema.update(self.model, step)
        return sums[0], sums[1], sums[2], w, (sum(ratios) / len(ratios) if ratios else None)

    def _losses(self, batch: dict[str, torch.Tensor], progress: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float | None]:
        """The forward pass of one (micro-)batch: (total, supervised, semi-supervised) losses as tensors, the
        semi-supervised weight and the pseudo-label ratio."""
        dev = self.dev
        x = batch["x_l"].to(dev, non_blocking=True)
        y = batch["y_l"].to(dev, non_blocking=True)
        n_l = x.shape[0]
        if "x_u" in batch:
            xu = batch["x_u"].to(dev, non_blocking=True)
            x = torch.cat([x, xu])
            y = torch.cat([y, torch.zeros((xu.shape[0], *y.shape[1:]), dtype=y.dtype, device=dev)])
        x, y, n_t = split_domains(batch, x, y, dev)  # target-domain windows last (domain adaptation)
        x = self.norm.apply(x)
        xg, yg = self.aug.geometric(x, y)
        w, ratio = 0.0, None
        cons = torch.zeros((), device=dev)
        if self.cfg.semi == "pseudo_label":
            w = pl_weight(progress, self.cfg.pl_weight, self.cfg.pl_start, self.cfg.pl_full)
            pl = None
            if w > 0:
                teacher = self.teacher()
                was = teacher.training
                teacher.eval()
                try:
                    with self.setup.autocast():
                        pl = teacher_targets(teacher, xg.contiguous(memory_format=self.mf))
                finally:
                    teacher.train(was)
            xs = self.aug.photometric(xg, "strong")
            if self.cfg.pl_cutmix > 0 and xs.shape[0] > 1:
                box = cutmix_boxes(tuple(yg.shape), self.cfg.pl_cutmix, self.mix_gen, dev)
                if pl is not None:
                    xs, yg, pl.label, pl.conf = apply_cutmix(box, xs, yg, pl.label, pl.conf)
                else:
                    xs, yg = apply_cutmix(box, xs, yg)
            with self.setup.autocast():
                logits, heads = forward_heads(self.model, xs.contiguous(memory_format=self.mf), self.deep is not None)
            sup = self._sup(logits, heads, yg)  # unlabelled patches hold no paint: ignored there
            if pl is not None:
                cons, ratio = pseudo_label_loss(logits, yg, pl, self.cfg.pl_threshold, self.cfg.pl_class_balance)
        else:
            xs = self.aug.photometric(xg, "strong").contiguous(memory_format=self.mf)
            with self.setup.autocast():
                logits, heads = forward_heads(self.model, xs, self.deep is not None)
            sup = self._sup(logits[:n_l], None if heads is None else [h[:n_l] for h in heads], yg[:n_l])
            if self.kd is not None:  # distillation: the teacher sees the student's view, every pixel counts
                with self.setup.autocast():
                    t_logits = self.kd.logits(xs)
                w = self.cfg.kd_weight
                cons = kd_loss(logits, t_logits, self.cfg.kd_temperature, self.cfg.kd_mode)
            if self.mt is not None:
                on = self.cfg.consistency_on
                first = n_l if on == "unlabelled" else 0
                if xg.shape[0] > first:
                    with self.setup.autocast():
                        probs, mask = self.mt.targets(xg[first:].contiguous(memory_format=self.mf), progress)
                    if on == "unpainted":
                        unpainted = yg[first:] == 0
                        mask = unpainted if mask is None else (mask & unpainted)
                    w = self.mt.cons_weight(progress)
                    cons = consistency_loss(logits[first:], probs, mask)
        total = sup + w * cons
        if self.boundary is not None:
            total = total + self.cfg.boundary_weight * ramp(progress, self.cfg.boundary_rampup) * self.boundary(
                logits[:n_l], yg[:n_l])
        if self.da is not None and n_t:
            total = total + self.cfg.da_weight * self.da.loss(logits, n_l, n_t, progress)
        if self.cfg.crf_weight:  # on the view the student saw (strong view, CutMix boxes included)
            crf = gated_crf_loss(torch.softmax(logits.float(), 1), xs, radius=self.cfg.crf_radius,
                                 sigma_xy=self.cfg.crf_sigma_xy, sigma_rgb=self.cfg.crf_sigma_rgb)
            total = total + self.cfg.crf_weight * crf
        return total, sup, cons, w, ratio

    def _sup(self, logits: torch.Tensor, heads: list[torch.Tensor] | None, y: torch.Tensor) -> torch.Tensor:
        """The painted-pixel loss: of the output, or of every head (deep supervision)."""
        weights = () if self.contact is None else (self.contact(y),)  # separation weights (contact.py)
        return self.loss_fn(logits, y, *weights) if heads is None else self.deep(heads, y, *weights)

    def halve_batch(self) -> str:
        total = self.n_l + self.n_u
        if total <= 1:
            raise MedsegError("out of memory even with one patch per step; choose a smaller patch size or model, "
                              "or train on the CPU")
        new = max(1, total // 2)
        n_u = int(round(new * self.n_u / total)) if self.n_u else 0
        n_u = min(n_u, new - 1)
        old = (self.n_l, self.n_u)
        self.n_l, self.n_u = new - n_u, n_u
        self.n_t = (self.n_t + 1) // 2
        return (f"out of memory with {total} patches per step ({old[0]} labelled + {old[1]} unlabelled); "
                f"continuing with {new} ({self.n_l} + {self.n_u})")

    def eval_model(self) -> nn.Module:
        return self.ema.module if (self.ema is not None and self.cfg.eval_model == "ema") else self.model

    def validate(self, step: int, stop: threading.Event | None) -> ValidationEvent | None:
        patches = self.sampler.validation_patches()
        if not patches:
            return None
        model = self.eval_model()
        teacher = self.teacher() if self.cfg.semi == "pseudo_label" else None
        nets = [m for m in (model, teacher) if m is not None]
        was = [m.training for m in nets]
        for m in nets:
            m.eval()
        k = self.model_cfg.out_channels
        conf = torch.zeros(k, k, dtype=torch.long)
        pl_hit = pl_n = pl_painted = 0
        dense: list[tuple[list[float], list[float]]] = []
        bs = max(1, self.n_l + self.n_u)
        try:
            with torch.inference_mode(), self.setup.autocast():
                for i in range(0, len(patches), bs):
                    if stop is not None and stop.is_set():
                        return None
                    chunk = patches[i:i + bs]
                    x = torch.from_numpy(np.stack([p.image for p in chunk])).to(self.dev)
                    x = self.norm.apply(x).contiguous(memory_format=self.mf)
                    out = model(x)
                    pred = out.argmax(1).cpu()
                    for p, pr in zip(chunk, pred):
                        conf += confusion(pr, torch.from_numpy(p.labels), k)
                        if p.dense is not None:
                            dense.append(dense_scores(pr.numpy(), p.dense, k, p.spacing))
                    if teacher is not None:  # the pseudo-labels' precision on held-out paint
                        # the same network as the one scored (pl_teacher "self" with the student): no second pass
                        pl = (PseudoLabels(*reversed(torch.softmax(out.float(), 1).max(1))) if teacher is model
                              else teacher_targets(teacher, x))
                        target = store_to_target(torch.from_numpy(np.stack([p.labels for p in chunk])))[:, 0]
                        painted = target >= 0
                        sure = painted & (pl.conf.cpu() >= self.cfg.pl_threshold)
                        pl_hit += int((pl.label.cpu()[sure] == target[sure]).sum())
                        pl_n += int(sure.sum())
                        pl_painted += int(painted.sum())
        finally:
            for m, w in zip(nets, was):
                m.train(w)
        names = self.data.classes.names
        dice = dict(zip(names, dice_from_confusion(conf)))
        fg = [v for n, v in list(dice.items())[1:] if not math.isnan(v)]
        mean = float(sum(fg) / len(fg)) if fg else float(dice[names[0]])
        hd95 = dense_dice = dense_more = None
        if dense:
            def avg(key: str, c: int) -> float:
                vals = [d[key][c] for d in dense if not math.isnan(d[key][c])]
                return float(sum(vals) / len(vals)) if vals else math.nan

            dense_dice = {n: avg("dice", c) for c, n in enumerate(names[1:])}
            hd95 = {n: avg("hd95", c) for c, n in enumerate(names[1:])}
            dense_more = {key: {n: avg(key, c) for c, n in enumerate(names[1:])}
                          for key in ("iou", "sensitivity", "specificity", "surface_dice")}
        painted = scores_from_confusion(conf)
        scores = {key: dict(zip(names[1:], painted[key][1:])) for key in ("iou", "sensitivity", "specificity")}
        precision = pl_hit / pl_n if pl_n else None
        coverage = pl_n / pl_painted if (teacher is not None and pl_painted) else None
        ev = ValidationEvent(step, dice, mean, hd95, dense_dice, int(conf.sum()), precision, coverage, scores,
                             dense_more)
        fg_iou = [v for v in scores["iou"].values() if not math.isnan(v)]
        self.last_val = {"val_dice": dice, "mean_dice": mean, "hd95": hd95, "val_step": step,
                         **({"mean_iou": float(sum(fg_iou) / len(fg_iou))} if fg_iou else {})}
        return ev

    def object_diameter(self) -> float | None:
        """The painted objects' median diameter at the training level (``object_sizes``), measured once."""
        if not hasattr(self, "_object_diameter"):
            s = self.sampler
            self._object_diameter = None if self.data is None else painted_object_diameter(
                [s.views[i] for i in s.labelled_items], self.data.classes)
        return self._object_diameter

    def save(self, kind: str, step: int) -> str:
        cfg, s = self.cfg, self.sampler
        v0 = s.views[s.labelled_items[0]]
        src = v0.item.image
        predict_with = "ema" if (self.ema is not None and cfg.eval_model == "ema") else "student"
        meta = {
            "round": self.round, "step": step, "kind": kind, "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "patch_size": list(cfg.patch_for(self.dims)), "spatial_dims": self.dims, "slice_wise": s.squeeze,
            "level": v0.level, "pixel_size": list(v0.spacing), "level0_pixel_size": list(src.pixel_size),
            "unit": src.unit, "axes": src.axes, "modality": src.modality, "rgb": src.rgb,
            "semi": cfg.semi, "predict_with": predict_with,
            "val_seed": s.val_seed, "val_block": list(s.val_block), "n_val_pixels_blocks": s.n_val_blocks,
            "train_config": cfg.to_dict(), "images": self.images(), "parent": self.parent, **self.last_val,
            "object_diameter_px": self.object_diameter(),
        }
        ck = Checkpoint(model_config=self.model_cfg, state_dict=self.model.state_dict(), classes=self.data.classes,
                        norm=self.norm, meta=meta,
                        teacher_state_dict=None if self.ema is None else self.ema.module.state_dict())
        return str(save_checkpoint(self.out_dir / f"{kind}.pt", ck))
