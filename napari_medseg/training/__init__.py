"""Pure training engine: configs, patch sampling, augmentation, losses, Mean Teacher, the loop.

``train(cfg, data, ...)`` is a generator of typed events (``events.py``); ``run_training`` drives it to the
end. No Qt, napari or magicgui here.
"""

from .config import TrainConfig
from .data import TrainingData, TrainingItem
from .events import (
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
from .loop import run_training, train
from .mean_teacher import teacher_uncertainty

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
