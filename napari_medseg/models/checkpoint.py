"""Checkpoints: atomic, self-describing, loaded safely.

A checkpoint ``NAME.pt`` is a ``torch.save`` of a dict of tensors and plain values only: the weights,
optionally the Mean Teacher's weights and the optimizer state (for resuming), and the model config, the
class schema, the normalisation and run metadata as JSON strings. ``NAME.json`` beside it repeats the
JSON for people and tools. Writing goes to a temporary file in the same folder, is fsynced and then
renamed over the old file, so a crash never leaves a half-written checkpoint. Loading uses
``torch.load(weights_only=True)``: a file that holds pickled code is refused and nothing in it runs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.files import atomic_write
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.normalization import NormConfig

log = logging.getLogger(__name__)
FORMAT = "napari-medseg-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    classes: ClassSchema = field(default_factory=ClassSchema)
    norm: NormConfig = field(default_factory=NormConfig)
    meta: dict[str, Any] = field(default_factory=dict)
    teacher_state_dict: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "model_config": self.model_config.to_dict(),
                "classes": self.classes.to_dict(), "norm": self.norm.to_dict(), "meta": self.meta}


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0o666 less the umask), read without changing
    the process umask (``os.umask`` is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes the file owner-only (0600); a checkpoint is shared like any file
    atomic_write(path, write, durable=True, mode=_file_mode())
    _remove_stale_temps(path)


#: A temporary file of a checkpoint older than this was left by a writer that died (SIGKILL, power loss).
STALE_TEMP_S = 600.0


def _remove_stale_temps(path: Path) -> None:
    """Delete ``.NAME.*.tmp`` files beside ``path`` left by a killed writer (a live writer's file is fresh),
    so repeated crashes do not pile up hidden copies of a model."""
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
                log.info("removed %s, left by an interrupted checkpoint write", tmp)


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically to ``path`` (``.pt``) and its description to ``path.with_suffix('.json')``.

    Raises ``MedsegError`` (the earlier file left intact) if the disk is full or not writable.
    """
    path = Path(path)
    if path.suffix != ".pt":
        path = path.with_suffix(".pt")
    desc = ckpt.describe()
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "description": json.dumps(desc),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
    }
    if ckpt.teacher_state_dict is not None:
        payload["teacher_state_dict"] = {k: v.detach().cpu() for k, v in ckpt.teacher_state_dict.items()}
    if ckpt.optimizer_state is not None:
        payload["optimizer_state"] = ckpt.optimizer_state
    try:
        _atomic_write(path, lambda f: torch.save(payload, f))
        _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(desc, indent=1).encode()))
    except OSError as e:
        raise MedsegError(f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint is intact. "
                          "Free disk space or choose another folder.") from e
    log.info("saved checkpoint %s", path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a napari-medseg checkpoint safely (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for files holding code, RuntimeError for garbage
        raise MedsegError(
            f"{path} is not a safe napari-medseg checkpoint: it could not be loaded as tensors only "
            f"({type(e).__name__}). Nothing in it was run."
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MedsegError(f"{path} is not a napari-medseg checkpoint (no '{FORMAT}' marker); "
                          "to start from a plain state dict use load_state_dict_report().")
    try:
        desc = json.loads(payload["description"])
        return Checkpoint(
            model_config=ModelConfig.from_dict(desc["model_config"]),
            classes=ClassSchema.from_dict(desc["classes"]),
            norm=NormConfig.from_dict(desc["norm"]),
            meta=dict(desc.get("meta", {})),
            state_dict=payload["state_dict"],
            teacher_state_dict=payload.get("teacher_state_dict"),
            optimizer_state=payload.get("optimizer_state"),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise MedsegError(f"{path}: checkpoint description is damaged ({e})") from e


@dataclass
class LoadReport:
    matched: list[str]
    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]

    def summary(self) -> str:
        return (f"{len(self.matched)} matched, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.shape_mismatch)} with another shape")


def load_state_dict_report(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = False) -> LoadReport:
    """Load what fits of ``state_dict`` into ``model`` and report matched, missing and unexpected keys.

    With ``strict=True`` any missing, unexpected or mis-shaped key raises ``MedsegError`` naming them.
    """
    own = model.state_dict()
    matched = [k for k, v in state_dict.items() if k in own and own[k].shape == v.shape]
    shape_mismatch = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in state_dict if k not in own]
    missing = [k for k in own if k not in state_dict]
    report = LoadReport(matched, missing, unexpected, shape_mismatch)
    if strict and (missing or unexpected or shape_mismatch):
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
        raise MedsegError(
            f"checkpoint does not fit this model ({report.summary()}); e.g. missing: {few(missing)}; "
            f"unexpected: {few(unexpected)}; other shape: {few(shape_mismatch)}. Is it another architecture?"
        )
    model.load_state_dict({k: state_dict[k] for k in matched}, strict=False)
    return report


def _check_config_fits(ckpt: Checkpoint, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose model config does not describe its own weights, before building the model:
    the config is built on the ``meta`` device (no memory), so a description claiming an absurd model
    allocates nothing."""
    from napari_medseg.models.registry import build_model

    try:
        with torch.device("meta"):
            probe = build_model(ckpt.model_config)
    except MedsegError:
        raise
    except Exception as e:  # a builder that cannot run on "meta": the strict load below still checks
        log.debug("meta-device probe of %s failed: %s", path, e)
        return
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise MedsegError(
            f"{path}: its model description does not match its weights ({len(diff)} tensors differ, e.g. "
            f"{', '.join(diff[:3])}); the file is damaged or was not written by napari-medseg.")


def predicts_with_average(ckpt: Checkpoint) -> bool:
    """Whether the checkpoint's run chose to predict with its weight average (``eval_model="ema"``)."""
    return ckpt.teacher_state_dict is not None and ckpt.meta.get("predict_with") in ("ema", "teacher")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", teacher: bool | None = None
               ) -> tuple[nn.Module, Checkpoint]:
    """Build the model a checkpoint describes and load its weights: the weight average (``teacher_state_dict``)
    when ``teacher`` is true, or when it is None and the run chose to predict with it; else the student."""
    from napari_medseg.models.registry import build_model

    ckpt = load_checkpoint(path)
    _check_config_fits(ckpt, path)
    model = build_model(ckpt.model_config)
    if teacher is None:
        teacher = predicts_with_average(ckpt)
    sd = ckpt.teacher_state_dict if (teacher and ckpt.teacher_state_dict is not None) else ckpt.state_dict
    load_state_dict_report(model, sd, strict=True)
    return model.to(device).eval(), ckpt
