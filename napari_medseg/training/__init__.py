"""Pure training engine: configs, patch sampling, augmentation, losses, Mean Teacher, the loop.

``train(cfg, data, ...)`` is a generator of typed events (``events.py``); ``run_training`` drives it to the
end. No Qt, napari or magicgui here.
"""

from napari_medseg.training.config import TrainConfig
from napari_medseg.training.data import TrainingData, TrainingItem
from napari_medseg.training.events import (
    CheckpointEvent,
    DoneEvent,
    PreviewEvent,
    StartEvent,
    StepEvent,
    TrainEvent,
    TrainResult,
    ValidationEvent,
    WarningEvent,
)
from napari_medseg.training.loop import run_training, train
from napari_medseg.training.mean_teacher import teacher_uncertainty

__all__ = [
    "CheckpointEvent",
    "DoneEvent",
    "PreviewEvent",
    "StartEvent",
    "StepEvent",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "TrainingData",
    "TrainingItem",
    "ValidationEvent",
    "WarningEvent",
    "run_training",
    "teacher_uncertainty",
    "train",
]
