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

from ..io.errors import MedsegError
from ..models.config import ModelConfig

# The default network: a small residual U-Net that trains in minutes on a CPU.
DEFAULT_MODEL = ModelConfig(name="unet", channels=(16, 32, 64, 128), num_res_units=1)
DEFAULT_PATCH = {2: 256, 3: 64}

CHOICES: dict[str, tuple[Any, ...]] = {
    "loss": ("ce_dice", "focal_dice", "ce"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "norm": ("auto", "percentile", "range", "ct_window"),
    "lr_schedule": ("cosine", "constant", "poly"),
    "optimizer": ("adamw", "sgd"),
    "eval_model": ("student", "teacher"),
    "consistency_on": ("all", "unlabelled"),
}

# field -> (kind, nullable); kinds: int, float, bool, str, ints, floats2, model
_KINDS: dict[str, tuple[str, bool]] = {}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (see ``docs/training.md`` for each one's meaning)."""

    model: ModelConfig = DEFAULT_MODEL
    patch_size: tuple[int, ...] | None = None  # YX or ZYX; None: 256 (2D) or 64 (3D) per axis
    batch_size: int = 8  # patches per step (labelled + unlabelled with Mean Teacher)
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9, as in the UA-MT paper)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 20
    steps: int = 500
    time_budget_s: float | None = None
    mean_teacher: bool = True
    consistency_weight: float = 1.0
    rampup_steps: int = 200
    ema_decay: float = 0.99
    ema_warmup: bool = False  # decay min(ema_decay, 1 - 1/(step + 1)): the teacher follows closely at first
    consistency_on: str = "all"  # "all" patches of the batch, or only the "unlabelled" ones
    uncertainty_mask: bool = False
    uncertainty_threshold: float = 0.75  # normalised entropy; ramps up to 1.0 with the consistency weight
    uncertainty_samples: int = 4
    unlabelled_ratio: float = 1.0  # unlabelled patches per labelled patch in a Mean Teacher batch
    loss: str = "ce_dice"
    focal_gamma: float = 2.0
    level: int = 0
    pixel_size: float | None = None  # train at the pyramid level with this in-plane pixel size (overrides level)
    norm: str = "auto"
    ct_window: tuple[float, float] = (40.0, 400.0)  # centre, width in HU
    augment: bool = True
    elastic: bool = True
    device: str = "auto"
    threads: int | None = None
    amp: bool = True
    channels_last: bool = True
    val_fraction: float = 0.1
    val_every: int = 100
    max_val_patches: int = 64
    eval_model: str = "student"
    seed: int = 0
    checkpoint_dir: str | None = None
    num_workers: int = 2
    prefetch: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        if not isinstance(self.model, ModelConfig):
            raise MedsegError(f"'model' must be a ModelConfig, got {type(self.model).__name__}")
        for f in dataclasses.fields(self):
            if f.name == "model":
                continue
            kind, nullable = _KINDS[f.name]
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), kind, nullable))
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
        positive = ("batch_size", "steps", "val_every", "max_val_patches", "prefetch", "uncertainty_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise MedsegError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "ema_decay", "val_fraction", "consistency_weight", "unlabelled_ratio", "weight_decay",
                     "warmup_steps", "rampup_steps", "level", "num_workers"):
            if getattr(self, name) < 0:
                raise MedsegError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise MedsegError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.val_fraction < 1:
            raise MedsegError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise MedsegError(f"time_budget_s must be positive (or null for none), got {self.time_budget_s}")
        if self.threads is not None and self.threads < 1:
            raise MedsegError(f"threads must be at least 1 (or null for torch's default), got {self.threads}")
        if self.pixel_size is not None and self.pixel_size <= 0:
            raise MedsegError(f"pixel_size must be positive, got {self.pixel_size}")

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

    def split_batch(self) -> tuple[int, int]:
        """(labelled, unlabelled) patches per step for this batch size."""
        if not self.mean_teacher:
            return self.batch_size, 0
        n_u = int(round(self.batch_size * self.unlabelled_ratio / (1.0 + self.unlabelled_ratio)))
        n_u = min(n_u, self.batch_size - 1)
        return self.batch_size - n_u, n_u

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            import difflib

            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(str(k), known, 1)) else
                     repr(k) for k in unknown]
            raise MedsegError(f"unknown training config keys: {', '.join(hints)}; the valid keys and their meaning "
                              "are in docs/training.md")
        kw = dict(d)
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


def _coerce(name: str, v: Any, kind: str, nullable: bool) -> Any:
    if v is None:
        if nullable:
            return None
        raise MedsegError(f"training config {name!r} must not be null")
    bad = MedsegError(f"training config {name!r} must be {_KIND_WORDS[kind]}, got {v!r}")
    if kind == "bool":
        if not isinstance(v, bool):
            raise bad
        return v
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad
        return int(v)
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad
        return float(v)
    if kind == "str":
        if not isinstance(v, str):
            raise bad
        return v
    if kind == "ints":
        if isinstance(v, int) and not isinstance(v, bool):
            return (int(v),)
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(i, int) and not isinstance(i, bool)
                                                                 for i in v):
            raise bad
        return tuple(int(i) for i in v)
    if kind == "floats2":
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(
                isinstance(i, (int, float)) and not isinstance(i, bool) for i in v):
            raise bad
        return (float(v[0]), float(v[1]))
    raise AssertionError(kind)  # pragma: no cover


_KIND_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
               "ints": "a list of integers", "floats2": "a list of two numbers"}

_KINDS.update({
    "patch_size": ("ints", True), "time_budget_s": ("float", True), "pixel_size": ("float", True),
    "threads": ("int", True), "checkpoint_dir": ("str", True), "ct_window": ("floats2", False),
})
for _f in dataclasses.fields(TrainConfig):
    if _f.name in _KINDS or _f.name == "model":
        continue
    _d = _f.default
    _KINDS[_f.name] = ("bool" if isinstance(_d, bool) else "int" if isinstance(_d, int) else
                       "float" if isinstance(_d, float) else "str", False)

__all__ = ["CHOICES", "DEFAULT_MODEL", "DEFAULT_PATCH", "TrainConfig", "field"]
