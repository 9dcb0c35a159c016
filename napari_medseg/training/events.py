"""Typed events yielded by ``training.train`` (the GUI and the CLI consume the same ones)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class TrainEvent:
    """Base class of every event ``train`` yields."""


@dataclass
class StartEvent(TrainEvent):
    device: str
    model_summary: str
    n_labelled: int  # items with painted pixels
    n_unlabelled: int  # items without paint (used for the consistency term only)
    init_report: str | None = None  # LoadReport.summary() of the starting weights, or None from scratch
    n_params: int = 0
    patch_size: tuple[int, ...] = ()
    batch: tuple[int, int] = (0, 0)  # (labelled, unlabelled) patches per step
    n_val_patches: int = 0
    round: int = 1
    amp: str = "off"  # "bf16", "fp16" or "off"
    norm: Any = None  # the NormConfig every input goes through (for live previews of the same pipeline)
    semi: str = "none"  # the semi-supervised method this run uses ("auto" resolved)
    semi_reason: str = ""  # why, when it was chosen by semi="auto"
    crf_weight: float = 0.0  # the gated CRF loss's weight this run uses (0: off; "auto" may have set it)
    contact_weight: float = 0.0  # the separation weight between close objects this run uses (0: off)


@dataclass
class StepEvent(TrainEvent):
    step: int
    loss: float
    loss_sup: float
    loss_cons: float  # the semi-supervised term (pseudo-label CE or Mean Teacher consistency) or, when
    # distilling, the distillation term; 0 without
    cons_weight: float  # its weight at this step
    lr: float
    batch_size: int
    step_time_s: float  # wall time of the whole step, data wait included
    data_wait_s: float  # time the step waited for the loader
    progress: float = 0.0  # fraction of the run done (steps or time budget, whichever is further)
    pl_mask_ratio: float | None = None  # pseudo-labels: share of unpainted pixels confident enough to count
    grad_norm: float | None = None  # global gradient norm before clipping (with clip_grad; None without)


@dataclass
class ValidationEvent(TrainEvent):
    step: int
    dice_per_class: dict[str, float]  # on the held-out painted pixels (classes without such pixels: NaN)
    mean_dice: float  # over the foreground classes that have held-out pixels (background if none)
    hd95: dict[str, float] | None = None  # per class, where dense masks exist (in physical units)
    dense_dice: dict[str, float] | None = None  # per class against dense masks, where they exist
    n_pixels: int = 0  # held-out painted pixels scored
    pl_precision: float | None = None  # pseudo-labels: accuracy of the teacher's confident pixels on held-out paint
    pl_coverage: float | None = None  # pseudo-labels: share of the held-out painted pixels that were confident
    # IoU, sensitivity and specificity per foreground class on the held-out painted pixels (NaN: no such pixels)
    scores: dict[str, dict[str, float]] | None = None
    # the same and surface Dice (1 pixel of tolerance) against dense masks, where they exist
    dense_scores: dict[str, dict[str, float]] | None = None

    def summary(self) -> str:
        """One line for a log or a status: Dice, IoU, sensitivity, specificity (dense masks: HD95, surface Dice)
        of the foreground classes, means over the classes scored."""
        def mean(d: dict[str, float] | None) -> float:
            vals = [v for v in (d or {}).values() if v == v]
            return sum(vals) / len(vals) if vals else float("nan")

        parts = [f"Dice {self.mean_dice:.3f}"]
        for key, name in (("iou", "IoU"), ("sensitivity", "sensitivity"), ("specificity", "specificity")):
            v = mean((self.scores or {}).get(key))
            if v == v:
                parts.append(f"{name} {v:.3f}")
        if self.dense_scores:
            dense = [f"Dice {mean(self.dense_dice):.3f}", f"IoU {mean(self.dense_scores.get('iou')):.3f}",
                     f"surface Dice {mean(self.dense_scores.get('surface_dice')):.3f}"]
            hd = mean(self.hd95)
            if hd == hd:
                dense.append(f"HD95 {hd:.3g}")
            parts.append("dense masks: " + ", ".join(dense))
        return ", ".join(parts)


@dataclass
class CheckpointEvent(TrainEvent):
    path: str
    kind: Literal["last", "best"]
    step: int


@dataclass
class WarningEvent(TrainEvent):
    message: str


@dataclass
class PreviewEvent(TrainEvent):
    step: int
    payload: Any


@dataclass
class DoneEvent(TrainEvent):
    reason: Literal["steps", "time", "stopped"]
    last_checkpoint: str | None
    best_checkpoint: str | None
    steps: int
    library_name: str | None = None  # the model's name in the model library (TrainConfig.library), if added
    library_path: str | None = None  # its entry folder there


@dataclass
class TrainResult:
    """The generator's return value (``StopIteration.value``; ``run_training`` returns it directly)."""

    reason: str
    steps: int
    last_checkpoint: str | None
    best_checkpoint: str | None
    best_dice: float | None
    model: Any = None  # the student nn.Module (eval mode, on the training device)
    teacher: Any = None  # the Mean Teacher's nn.Module, or None
    norm: Any = None  # the NormConfig used
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per StepEvent/ValidationEvent
    elapsed_s: float = 0.0
    library_name: str | None = None  # the model's name in the model library, if it was added
    library_path: str | None = None
