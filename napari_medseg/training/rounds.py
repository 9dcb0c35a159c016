"""Starting weights and checkpoints across annotate-train rounds.

``resolve_init`` accepts our checkpoint (path or ``Checkpoint``) or a compatible plain state dict (path or
dict) and returns what to load, refusing a checkpoint of another architecture with the mismatch named and a
file holding pickled code with nothing in it run (``torch.load(weights_only=True)``). The checkpoint written
after each validation records what ``inference`` needs to reproduce the input pipeline (normalisation,
classes, patch size, level and pixel size, axes) and what the next round reuses (round number, validation
seed and block size).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.checkpoint import FORMAT, Checkpoint, load_checkpoint
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.normalization import NormConfig

log = logging.getLogger(__name__)
# Architecture fields that must agree to continue from a checkpoint (out_channels may grow with new classes).
ARCH_FIELDS = ("name", "spatial_dims", "channels", "num_res_units", "act", "feature_size", "depths", "num_heads",
               "window_size", "norm")
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "network", "net", "student")


@dataclass
class InitWeights:
    label: str  # where the weights came from (for messages)
    state_dict: dict[str, torch.Tensor]
    checkpoint: Checkpoint | None = None  # set when it is one of ours
    teacher_state_dict: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def norm(self) -> NormConfig | None:
        return None if self.checkpoint is None else self.checkpoint.norm

    @property
    def round(self) -> int:
        return int(self.meta.get("round", 0) or 0)


def _plain_state_dict(obj: Any, label: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for k in NESTED_KEYS:
            if isinstance(obj.get(k), dict) and obj[k] and all(isinstance(v, torch.Tensor) for v in obj[k].values()):
                return obj[k]
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise MedsegError(f"{label} holds no model weights (a dict of tensors); give a napari-medseg checkpoint or "
                      "a state dict")


def resolve_init(init: str | os.PathLike | Checkpoint | dict | None) -> InitWeights | None:
    """Load starting weights safely; ``None`` for training from scratch."""
    if init is None:
        return None
    if isinstance(init, Checkpoint):
        return InitWeights("the given checkpoint", init.state_dict, init, init.teacher_state_dict, dict(init.meta))
    if isinstance(init, dict):
        return InitWeights("the given state dict", _plain_state_dict(init, "the given state dict"))
    path = Path(init)
    from napari_medseg.sharing.bioimageio_import import package_checkpoint
    from napari_medseg.sharing.package_files import model_file_kind

    kind = model_file_kind(path)
    if kind == "bioimageio":  # a package of one of our architectures (others are refused, naming why)
        ck = package_checkpoint(path)
        return InitWeights(str(path), ck.state_dict, ck, None, dict(ck.meta))
    if kind in ("onnx", "torchscript"):
        raise MedsegError(f"{path} is a{'n' if kind == 'onnx' else ''} {kind} file: it predicts, but its weights "
                          "cannot be trained further; start from a checkpoint or a bioimage.io package of a "
                          "napari-medseg architecture")
    try:
        ck = load_checkpoint(path)
        return InitWeights(str(path), ck.state_dict, ck, ck.teacher_state_dict, dict(ck.meta))
    except MedsegError as e:
        if FORMAT not in str(e):  # refused (pickled code), missing, or damaged: say so
            raise
    # not ours: a plain state dict, loaded tensors-only as well
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MedsegError(f"{path} could not be loaded as tensors only ({type(e).__name__}); nothing in it was "
                          "run. Give a napari-medseg checkpoint or a plain state dict.") from e
    return InitWeights(str(path), _plain_state_dict(obj, str(path)))


def adopt_architecture(init: InitWeights, model_cfg: ModelConfig) -> tuple[ModelConfig, str | None]:
    """``model_cfg`` with the architecture fields of the starting checkpoint when it holds the same
    architecture (name and dimensions): widths and depths a run starts from are the checkpoint's, whatever the
    form's defaults are (e.g. an older 'swin_unetr' trained before the small preset). Returns the config and a
    warning naming what was taken over (None when nothing differed)."""
    if init.checkpoint is None:
        return model_cfg, None
    theirs = init.checkpoint.model_config
    if theirs.name != model_cfg.name or theirs.spatial_dims != model_cfg.spatial_dims:
        return model_cfg, None
    diff = [f for f in ARCH_FIELDS if getattr(theirs, f) != getattr(model_cfg, f)]
    if not diff:
        return model_cfg, None
    new = model_cfg.replace(**{f: getattr(theirs, f) for f in diff})
    return new, (f"the architecture settings of {init.label} are used ("
                 + ", ".join(f"{f} {getattr(theirs, f)!r}" for f in diff) + ")")


def check_architecture(init: InitWeights, model_cfg: ModelConfig) -> None:
    """Refuse a napari-medseg checkpoint whose architecture differs from ``model_cfg``, naming the fields."""
    if init.checkpoint is None:
        return
    theirs = init.checkpoint.model_config
    diff = [f for f in ARCH_FIELDS if getattr(theirs, f) != getattr(model_cfg, f)]
    if diff:
        parts = ", ".join(f"{f} {getattr(theirs, f)!r} vs {getattr(model_cfg, f)!r}" for f in diff)
        raise MedsegError(
            f"{init.label} holds a {theirs.spatial_dims}D '{theirs.name}' model that does not match the chosen "
            f"{model_cfg.spatial_dims}D '{model_cfg.name}' ({parts}); choose the checkpoint's model settings "
            "or start without it")


def run_dir(checkpoint_dir: str | None) -> Path:
    """The folder for this run's checkpoints: the given one, else a new one in the user data folder's
    ``runs`` (``core.user_folders.runs_folder``; never the cache folder, which cleaning tools empty)."""
    if checkpoint_dir:
        return Path(checkpoint_dir)
    from napari_medseg.core.user_folders import runs_folder

    base = runs_folder()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path
