"""``TrainConfig``: every setting of a training run, a frozen dataclass with a validated JSON round trip.

The widgets and ``napari-medseg train`` build the same object; the checkpoint stores it (``meta["train_config"]``)
so a run can be repeated. Sizes are in pixels of the pyramid level trained at (``level``, or the level whose
pixel size is closest below ``pixel_size``), spatial order ``YX`` / ``ZYX``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from napari_medseg.core.config_values import coerce, kind_of
from napari_medseg.core.errors import MedsegError
from napari_medseg.models.config import ModelConfig

# The default network: a small residual U-Net that trains in minutes on a CPU.
DEFAULT_MODEL = ModelConfig(name="unet", channels=(16, 32, 64, 128), num_res_units=1)
DEFAULT_PATCH = {2: 256, 3: 64}

CHOICES: dict[str, tuple[Any, ...]] = {
    "loss": ("ce_dice", "focal_dice", "ce"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "norm": ("auto", "percentile", "range", "ct_window"),
    "lr_schedule": ("cosine", "constant", "poly"),
    "optimizer": ("adamw", "sgd"),
    "eval_model": ("student", "ema"),
    "consistency_on": ("unpainted", "unlabelled", "all"),
    "semi": ("none", "pseudo_label", "mean_teacher", "auto"),
    "pl_teacher": ("ema", "self"),
    "freeze": ("none", "encoder"),
    "kd_mode": ("pixel", "channel"),
    "domain_adapt": ("none", "output", "dann"),
    "boundary_loss": ("none", "boundary", "hausdorff"),
}
# semi="auto" trains with pseudo-labels while the paint spans at most AUTO_SEMI_MAX_PATCHES training patches
# and leaves most pixels around it unpainted (painted share at most AUTO_SEMI_MAX_SHARE; ``sampler.paint_extent``),
# labels only otherwise. Set between the settings of benchmarks/bench_semisup.py at equal time: scribbles in 10
# windows (18 patches, share 0.03) gained +4.3 / +3.9 Dice with pseudo-labels; 5 % scribbles on every ISBI image
# (80 patches) lost 1.3, scribbles over every MoNuSeg image (300-320) 0.3-0.65, and the left atrium's 8 fully
# labelled volumes (27-29 patches, share 0.81: nothing unpainted around the labels) lost 7.4 (3 seeds).
AUTO_SEMI_MAX_PATCHES = 40.0
AUTO_SEMI_MAX_SHARE = 0.5
# ... and beyond that bound, for 2D strokes (share at most AUTO_SEMI_MAX_SHARE), the gated CRF loss at this weight:
# on 1 % scribbles over every MoNuSeg image it gained +1.14 Dice (last weights) / +0.90 (weight average) at 300 s,
# 9 of 9 seeds over three runs, for 3 % of a step (weight 3: +0.52); at 600 s +1.28 / +1.30; at 100 s +0.68 / 0.00. Not in 3D,
# where it was not measured.
AUTO_CRF_WEIGHT = 1.0
# the separation weight (training/contact.py) a run with object classes takes when contact_weight is unset: on
# MoNuSeg with full labels, 600 s on 2 CPU threads, it raised the held-out AJI from 0.490 to 0.529 (+0.039 in each
# of 3 paired seeds; the dense images 0.33 -> 0.43) at the same Dice, for ~17 ms of a ~260 ms step (benchmarks/RESULTS.md,
# "separation weights"); 0 keeps it off
AUTO_CONTACT_WEIGHT = 10.0
# keys of older configs (checkpoints' ``train_config``) -> what they became; see ``TrainConfig.from_dict``
LEGACY_KEYS = ("mean_teacher", "rampup_steps")

# field -> (kind, nullable), see core/config_values.py; filled in below the class
_KINDS: dict[str, tuple[str, bool]] = {}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (see ``docs/training.md`` for each one's meaning)."""

    model: ModelConfig = DEFAULT_MODEL
    patch_size: tuple[int, ...] | None = None  # YX or ZYX; None: 256 (2D) or 64 (3D) per axis
    batch_size: int = 8  # labelled patches per step (a semi-supervised method adds unlabelled ones)
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9, as in the UA-MT paper)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 20
    steps: int = 500
    time_budget_s: float | None = None
    # semi-supervised learning from the unpainted pixels: "none", "pseudo_label", "mean_teacher" or "auto"
    # (pseudo-labels while the paint is localised, ``AUTO_SEMI_MAX_PATCHES``; the CLI's and the Train widget's
    # default). The engine's default stays "none": an API call trains exactly what it names.
    semi: str = "none"
    unlabelled_ratio: float = 0.0  # unlabelled windows *added* per labelled patch when semi is on (0: the
    # unpainted pixels of the painted patches are the unlabelled data; 0.25 scored lower at equal time)
    ema_decay: float = 0.99  # the weight EMA: the teacher, and what eval_model="ema" predicts with
    ema_warmup: bool = True  # decay min(ema_decay, 1 - 1/(step + 1)): the EMA follows closely at first
    pl_teacher: str = "ema"  # pseudo-labels from the weight EMA, or from the student itself ("self")
    pl_threshold: float = 0.9  # top-class probability a pseudo-label needs
    pl_weight: float = 1.0
    pl_start: float = 0.2  # fraction of the run before pseudo-labels count; full weight at pl_full
    pl_full: float = 0.4
    pl_cutmix: float = 0.5  # probability per patch of a CutMix box from another patch of the batch
    pl_class_balance: bool = True  # average the pseudo-label loss per pseudo-class
    # gated CRF loss (training/gated_crf.py): neighbouring pixels that look alike get the same class, over every
    # pixel of the patch; 0 = off, None = not set (off, unless semi="auto" adds it: resolve_semi). Scribbles lie
    # inside objects: this says where the objects end.
    crf_weight: float | None = None
    crf_radius: int = 5  # pixels (at the training level) within which pairs count
    crf_sigma_xy: float = 6.0  # pixels
    crf_sigma_rgb: float = 0.4  # standard deviations of the image's intensities
    consistency_weight: float = 0.1  # Mean Teacher, as UA-MT / SSL4MIS
    rampup: float = 1.0  # fraction of the run over which the consistency weight ramps up (sigmoid)
    consistency_on: str = "unpainted"  # "unpainted" pixels of every patch, "unlabelled" patches, or "all"
    teacher_noise: float = 0.0  # Gaussian noise std on the teacher's input (0: the weak view is the geometry)
    uncertainty_mask: bool = False
    uncertainty_threshold: float = 0.75  # normalised entropy; ramps up to 1.0 over the whole run
    uncertainty_samples: int = 4
    loss: str = "ce_dice"
    focal_gamma: float = 2.0
    level: int = 0
    pixel_size: float | None = None  # train at the pyramid level with this in-plane pixel size (overrides level)
    norm: str = "auto"
    ct_window: tuple[float, float] = (40.0, 400.0)  # centre, width in HU
    augment: bool = True
    elastic: bool = True
    # H&E stain augmentation (training/stain.py): each patch's haematoxylin / eosin / DAB amounts scaled by
    # 1 +- s and shifted by +- s; RGB images only; 0 = off (what it gave: docs/training.md)
    stain_jitter: float = 0.0
    device: str = "auto"
    threads: int | None = None
    amp: bool = True
    channels_last: bool = True
    val_fraction: float = 0.1
    val_every: int = 100
    # also validate early, at val_first, 2 x, 4 x ... steps before val_every (0: off), while a validation costs at
    # most half the training time since the last one: the Dice is a curve from the first minutes of a run
    val_first: int = 10
    max_val_patches: int = 64
    eval_model: str = "ema"  # predict with the weight average ("ema": +0.3 / +0.8 Dice over the last weights in
    # 100 s runs, level at 300 s; benchmarks/RESULTS.md, issue 15) or the "student" (the last weights)
    seed: int = 0
    checkpoint_dir: str | None = None
    # the final model (best, else last) goes into the model library (sharing.library) as model_name ("": the
    # class names and the date); a failure to add it is a warning, never a failed run
    library: bool = True
    model_name: str = ""
    num_workers: int = 2
    prefetch: int = 4
    # the training craft (training/finetune.py; docs/training.md "Memory and fine-tuning controls"); the defaults
    # train as before these existed
    grad_checkpoint: bool = False  # recompute the blocks' activations in the backward pass: less memory, 1.3-1.5x time
    accumulate: int = 1  # micro-batches of batch_size per optimiser step (the schedule counts optimiser steps)
    clip_grad: float = 0.0  # max global gradient norm (0: off), on the unscaled gradients under AMP
    freeze: str = "none"  # "encoder": the encoder's weights do not train (finetune.encoder_modules, per model)
    unfreeze_at: float = 0.0  # with freeze "encoder": the share of the run after which it learns too (0: never)
    freeze_bn: bool = False  # batch/instance norm: running statistics in eval mode for good, affine frozen
    bn_reestimate: int = 0  # with freeze_bn: first re-estimate the running statistics over this many batches
    encoder_lr_scale: float = 1.0  # the encoder's learning rate = lr x this (layer-wise learning rate)
    label_smoothing: float = 0.0  # of the cross-entropy on painted pixels
    class_weights: tuple[float, ...] | None = None  # per class, background first, for the cross-entropy/focal term
    # knowledge distillation (training/distill.py): a trained model (checkpoint or package of ours) teaches this
    # run's model on every pixel of its patches, beside the painted labels; None = off
    distill_from: str | None = None
    kd_weight: float = 3.0  # 3 beat 1 in 3 of 3 seeds (benchmarks/RESULTS.md, "Distilling on the images")
    kd_temperature: float = 2.0
    kd_mode: str = "pixel"  # "pixel" (logit KD) or "channel" (channel-wise distillation for dense prediction)
    # domain adaptation (training/domain.py) towards the target-domain images (TrainingItem(domain="target")):
    # "output" (a discriminator on the softmax maps) or "dann" (on the bottleneck features); "none" = off
    domain_adapt: str = "none"
    da_weight: float = 0.1  # weight of the domain loss (the network gets it reversed, times the DANN ramp)
    da_rampup: float = 1.0  # fraction of the run over which the reversal ramps 2/(1+exp(-10p))-1 up to 1
    da_target_ratio: float = 1.0  # target-domain windows per labelled patch in each batch
    # boundary-aware loss (training/boundary.py) on patches painted in full: "boundary" (Kervadec) or
    # "hausdorff" (distance-transform Hausdorff), weight ramped up over boundary_rampup of the run; "none" = off
    boundary_loss: str = "none"
    boundary_weight: float = 0.5
    boundary_rampup: float = 0.5
    deep_supervision: bool = False  # the loss on every output head (models with heads: unetpp)
    # separation weights (training/contact.py): the cross-entropy weighs 1 + contact_weight on the painted pixels
    # that have two objects within contact_radius px (the gaps between close nuclei). None (auto): AUTO_CONTACT_WEIGHT
    # when the data have object classes (and the loss is not focal), else off; 0 = off
    contact_weight: float | None = None
    contact_radius: int = 5

    def __post_init__(self) -> None:
        if self.eval_model == "teacher":  # older name of the same weights
            object.__setattr__(self, "eval_model", "ema")
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        if not isinstance(self.model, ModelConfig):
            raise MedsegError(f"'model' must be a ModelConfig, got {type(self.model).__name__}")
        object.__setattr__(self, "class_weights", _weights(self.class_weights))
        for f in dataclasses.fields(self):
            if f.name in ("model", "class_weights"):
                continue
            kind, nullable = _KINDS[f.name]
            object.__setattr__(self, f.name, coerce("training config", f.name, getattr(self, f.name), kind, nullable))
        for f in dataclasses.fields(self):  # NaN and inf pass range checks: refuse them here
            v = getattr(self, f.name)
            vals = v if isinstance(v, tuple) else (v,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in vals):
                raise MedsegError(f"{f.name} must be a finite number, got {v}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise MedsegError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        if self.patch_size is not None and (len(self.patch_size) not in (1, 2, 3)
                                            or any(p < 1 for p in self.patch_size)):
            raise MedsegError(f"patch_size must be 1-3 positive integers (YX or ZYX), got {self.patch_size}")
        positive = ("batch_size", "steps", "val_every", "max_val_patches", "prefetch", "uncertainty_samples",
                    "crf_radius", "accumulate")
        for name in positive:
            if getattr(self, name) < 1:
                raise MedsegError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "ema_decay", "val_fraction", "consistency_weight", "unlabelled_ratio", "weight_decay",
                     "warmup_steps", "rampup", "level", "num_workers", "pl_weight", "teacher_noise", "val_first",
                     "crf_weight", "clip_grad", "bn_reestimate"):
            if (getattr(self, name) or 0) < 0:
                raise MedsegError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise MedsegError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("pl_threshold", "pl_start", "pl_full", "pl_cutmix", "rampup"):
            if not 0 <= getattr(self, name) <= 1:
                raise MedsegError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.semi == "mean_teacher" and self.consistency_on == "unlabelled" and self.unlabelled_ratio <= 0:
            raise MedsegError("consistency_on 'unlabelled' needs unlabelled windows: set unlabelled_ratio above 0 "
                              "(e.g. 1.0), or use consistency_on 'unpainted'")
        if self.pl_full < self.pl_start:
            raise MedsegError(f"pl_full ({self.pl_full}) must not come before pl_start ({self.pl_start})")
        if not 0 <= self.val_fraction < 1:
            raise MedsegError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise MedsegError(f"time_budget_s must be positive (or null for none), got {self.time_budget_s}")
        if self.threads is not None and self.threads < 1:
            raise MedsegError(f"threads must be at least 1 (or null for torch's default), got {self.threads}")
        for name in ("crf_sigma_xy", "crf_sigma_rgb"):
            if getattr(self, name) <= 0:
                raise MedsegError(f"{name} must be positive, got {getattr(self, name)}")
        self._check_craft()
        self._check_domain()
        if self.pixel_size is not None and self.pixel_size <= 0:
            raise MedsegError(f"pixel_size must be positive, got {self.pixel_size}")
        if self.model_name:
            from napari_medseg.sharing.library import check_name

            try:
                check_name(self.model_name)
            except MedsegError as e:
                raise MedsegError(f"model_name: {e}") from None

    def _check_craft(self) -> None:
        """The training-craft settings (finetune.py) that only make sense together."""
        if self.accumulate > 1024:
            raise MedsegError(f"accumulate must be at most 1024 micro-batches, got {self.accumulate}")
        if not 0 < self.encoder_lr_scale <= 100:
            raise MedsegError(f"encoder_lr_scale must be above 0 and at most 100, got {self.encoder_lr_scale} "
                              "(freeze 'encoder' stops the encoder learning)")
        if not 0 <= self.unfreeze_at < 1:
            raise MedsegError(f"unfreeze_at is a share of the run in [0, 1) (0: never), got {self.unfreeze_at}")
        if self.unfreeze_at > 0 and self.freeze != "encoder":
            raise MedsegError(f"unfreeze_at ({self.unfreeze_at}) unfreezes a frozen encoder: it needs freeze "
                              "'encoder'")
        if self.freeze == "encoder" and self.encoder_lr_scale != 1.0 and self.unfreeze_at == 0:
            raise MedsegError(f"encoder_lr_scale ({self.encoder_lr_scale}) does nothing with freeze 'encoder': "
                              "the frozen encoder has no learning rate; choose one of the two (or unfreeze it "
                              "later in the run with unfreeze_at, when it learns at lr x encoder_lr_scale)")
        if not 0 <= self.stain_jitter <= 0.5:
            raise MedsegError(f"stain_jitter must be in [0, 0.5] (0.05: light, 0.2: strong), got {self.stain_jitter}")
        if self.stain_jitter > 0 and not self.augment:
            raise MedsegError("stain_jitter is an augmentation: it needs augment on")
        if not 0 <= self.label_smoothing < 1:
            raise MedsegError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing > 0 and self.loss == "focal_dice":
            raise MedsegError("label_smoothing smooths the cross-entropy: use loss 'ce_dice' or 'ce' with it, not "
                              "'focal_dice'")
        if self.kd_weight < 0 or self.kd_temperature <= 0:
            raise MedsegError(f"kd_weight must be >= 0 and kd_temperature > 0, got {self.kd_weight} and "
                              f"{self.kd_temperature}")
        if self.distill_from is not None and not str(self.distill_from).strip():
            raise MedsegError("distill_from is empty: give the teacher's checkpoint or package (or null for none)")
        if self.distill_from is not None and self.semi not in ("none", "auto"):
            raise MedsegError(f"distillation (distill_from) learns the unpainted pixels from the teacher: it does not "
                              f"combine with semi {self.semi!r}; choose one of the two")
        if self.bn_reestimate > 0 and not self.freeze_bn:
            raise MedsegError(f"bn_reestimate ({self.bn_reestimate} batches) needs freeze_bn: training in train "
                              "mode would replace the re-estimated statistics at once")

    def _check_domain(self) -> None:
        """Domain adaptation's settings (training/domain.py)."""
        if self.da_weight < 0 or not 0 <= self.da_rampup <= 1:
            raise MedsegError(f"da_weight must be >= 0 and da_rampup in [0, 1], got {self.da_weight} and "
                              f"{self.da_rampup}")
        if not 0 < self.da_target_ratio <= 8:
            raise MedsegError(f"da_target_ratio must be above 0 and at most 8 target windows per labelled patch, "
                              f"got {self.da_target_ratio}")
        if self.domain_adapt != "none" and self.semi == "pseudo_label":
            raise MedsegError(f"domain_adapt {self.domain_adapt!r} does not combine with semi 'pseudo_label' (its "
                              "CutMix mixes the domains); use semi 'none' or 'mean_teacher'")
        if self.boundary_weight < 0 or not 0 <= self.boundary_rampup <= 1:
            raise MedsegError(f"boundary_weight must be >= 0 and boundary_rampup in [0, 1], got "
                              f"{self.boundary_weight} and {self.boundary_rampup}")
        if self.contact_weight is not None and not (self.contact_weight >= 0 and math.isfinite(self.contact_weight)) \
                or self.contact_radius < 1:
            raise MedsegError(f"contact_weight must be a finite number >= 0 and contact_radius at least 1 pixel, got "
                              f"{self.contact_weight} and {self.contact_radius}")
        if self.contact_weight and self.loss == "focal_dice":
            raise MedsegError("contact_weight weighs the cross-entropy per pixel; the focal loss takes no pixel "
                              "weights: use loss 'ce_dice' or 'ce', or contact_weight 0")

    def contact_for(self, has_objects: bool) -> float:
        """The separation weight this run uses: ``contact_weight`` when set, else (auto) ``AUTO_CONTACT_WEIGHT``
        for data with object classes and a cross-entropy loss, 0 otherwise."""
        if self.contact_weight is not None:
            return float(self.contact_weight)
        return AUTO_CONTACT_WEIGHT if has_objects and self.loss != "focal_dice" else 0.0

    # -- derived -----------------------------------------------------------------------------------
    def patch_for(self, spatial_dims: int) -> tuple[int, ...]:
        """The patch size as a ``spatial_dims`` tuple (an int-like single value is repeated)."""
        p = self.patch_size or (DEFAULT_PATCH[spatial_dims],)
        if len(p) == 1:
            return tuple(p) * spatial_dims
        if len(p) != spatial_dims:
            raise MedsegError(f"patch_size {p} has {len(p)} axes but the model is {spatial_dims}D; "
                              f"give {spatial_dims} sizes or a single one")
        return tuple(p)

    @property
    def keeps_ema(self) -> bool:
        """Whether the run keeps a weight EMA (a teacher, or the weights to predict with)."""
        return self.semi == "mean_teacher" or self.eval_model == "ema" or (
            self.semi == "pseudo_label" and self.pl_teacher == "ema")

    def resolve_semi(self, paint_extent: float, paint_share: float = 0.0,
                     spatial_dims: int = 2) -> tuple[TrainConfig, str]:
        """``semi="auto"`` made concrete for paint that spans ``paint_extent`` training patches and covers
        ``paint_share`` of their pixels (``sampler.paint_extent``): pseudo-labels for few patches with most pixels
        unpainted (``AUTO_SEMI_MAX_PATCHES``, ``AUTO_SEMI_MAX_SHARE``); strokes spread wider train on labels with
        the gated CRF loss (``AUTO_CRF_WEIGHT``, 2D models only; a ``crf_weight`` that is set is kept, and
        0 keeps it off); labels only otherwise (and with distillation or domain adaptation, which bring their own
        use of the unpainted pixels). Returns the config and a sentence saying why; other settings come back
        unchanged, with an empty sentence."""
        if self.semi != "auto":
            return self, ""
        if self.distill_from is not None or self.domain_adapt != "none":
            return self.replace(semi="none"), "auto: none (distillation or domain adaptation uses the unpainted pixels)"
        where = f"the paint spans {paint_extent:.0f} training patches and covers {100 * paint_share:.0f} % of them"
        if paint_share > AUTO_SEMI_MAX_SHARE:
            return self.replace(semi="none"), (f"auto: labels only ({where}: too little is unpainted around it "
                                               "for pseudo-labels to add anything)")
        if paint_extent <= AUTO_SEMI_MAX_PATCHES:
            return self.replace(semi="pseudo_label"), (
                f"auto: pseudo-labels ({where}, at most {AUTO_SEMI_MAX_PATCHES:.0f}: the unpainted pixels around "
                "the strokes add what the paint does not show)")
        wide = f"{where}, more than {AUTO_SEMI_MAX_PATCHES:.0f}: pseudo-labels did not pay on paint this widespread"
        if spatial_dims == 2 and self.crf_weight != 0:
            weight = AUTO_CRF_WEIGHT if self.crf_weight is None else self.crf_weight
            return self.replace(semi="none", crf_weight=weight), (
                f"auto: labels + boundary regulariser (gated CRF, weight {weight:g}: {wide}; the unpainted pixels "
                "place the edges the strokes stop short of)")
        off = "; the gated CRF set to 0" if spatial_dims == 2 else ""
        return self.replace(semi="none"), f"auto: labels only ({wide}{off})"

    def split_batch(self) -> tuple[int, int]:
        """(labelled, unlabelled) patches per step: ``batch_size`` labelled ones, plus, with a semi-supervised
        method or distillation, ``unlabelled_ratio`` as many windows from anywhere (the labelled signal is never
        halved)."""
        if self.semi == "none" and self.distill_from is None:
            return self.batch_size, 0
        return self.batch_size, int(round(self.batch_size * self.unlabelled_ratio))

    def replace(self, **kw: Any) -> TrainConfig:
        return dataclasses.replace(self, **kw)

    # -- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if isinstance(v, ModelConfig) else list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        if not isinstance(d, dict):
            raise MedsegError("a training config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)} | set(LEGACY_KEYS)
        unknown = sorted(set(d) - known)
        if unknown:
            import difflib

            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(str(k), known, 1)) else
                     repr(k) for k in unknown]
            raise MedsegError(f"unknown training config keys: {', '.join(hints)}; the valid keys and their meaning "
                              "are in docs/training.md")
        kw = _upgrade(dict(d))
        if "model" in kw:
            kw["model"] = ModelConfig.from_dict(kw["model"]) if isinstance(kw["model"], dict) else kw["model"]
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, s: str) -> TrainConfig:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise MedsegError(f"training config is not valid JSON: {e}") from e
        return cls.from_dict(d)


def _weights(v: Any) -> tuple[float, ...] | None:
    """``class_weights`` as stored: None, or a tuple of at least two finite non-negative numbers, not all 0."""
    if v is None:
        return None
    if isinstance(v, str):  # "1,2,3" from a settings file or a hand-written config
        try:
            v = [float(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise MedsegError(f"training config 'class_weights' must be a list of numbers, got {v!r}") from None
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in v):
        raise MedsegError(f"training config 'class_weights' must be a list of numbers (one per class, background "
                          f"first) or null, got {v!r}")
    w = tuple(float(x) for x in v)
    if len(w) < 2 or any(not math.isfinite(x) or x < 0 for x in w) or not any(w):
        raise MedsegError(f"class_weights must be at least two finite, non-negative numbers (one per class, "
                          f"background first), not all 0; got {list(v)}")
    return w


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """An older config's keys in today's terms (checkpoints keep the config they were trained with)."""
    if "mean_teacher" in d:
        mt = d.pop("mean_teacher")
        if not isinstance(mt, bool):
            raise MedsegError(f"training config 'mean_teacher' must be true or false, got {mt!r}")
        d.setdefault("semi", "mean_teacher" if mt else "none")
    if "rampup_steps" in d:
        r = d.pop("rampup_steps")
        steps = d.get("steps", TrainConfig.steps)
        if isinstance(r, int) and not isinstance(r, bool) and isinstance(steps, int) and steps > 0:
            d.setdefault("rampup", min(1.0, max(0.0, r / steps)))
    return d


_KINDS.update({
    "patch_size": ("int_or_ints", True), "time_budget_s": ("float", True), "pixel_size": ("float", True),
    "threads": ("int", True), "checkpoint_dir": ("str", True), "ct_window": ("floats2", False),
    "class_weights": ("floats", True),  # checked by _weights
    "distill_from": ("str", True), "crf_weight": ("float", True),  # null: unset ("auto" may add it)
    "contact_weight": ("float", True),  # null: auto (on with object classes)
})
for _f in dataclasses.fields(TrainConfig):
    if _f.name in _KINDS or _f.name == "model":
        continue
    _KINDS[_f.name] = (kind_of(_f.default), False)

__all__ = ["CHOICES", "LEGACY_KEYS", "DEFAULT_MODEL", "DEFAULT_PATCH", "TrainConfig", "field"]
