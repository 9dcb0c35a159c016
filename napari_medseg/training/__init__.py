"""Pure training engine: configs, patch sampling, augmentation, losses, Mean Teacher, the loop.

``train(cfg, data, ...)`` is a generator of typed events (``events.py``); ``run_training`` drives it to the
end. No Qt, napari or magicgui here.

Public API (imported lazily, so ``import napari_medseg.training`` and its event classes stay light: torch is
imported by the first name that needs it, e.g. ``train``):

- ``TrainConfig`` (``config.py``); ``TrainingData``, ``TrainingItem`` (``data.py``);
- ``train``, ``run_training`` (``loop.py``); ``teacher_uncertainty`` (``mean_teacher.py``);
- events (``events.py``): ``TrainEvent``, ``StartEvent``, ``StepEvent``, ``ValidationEvent``,
  ``CheckpointEvent``, ``WarningEvent``, ``PreviewEvent``, ``DoneEvent``, and ``TrainResult``.
"""

from __future__ import annotations

from napari_medseg.core.lazy_exports import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "TrainingData": "data", "TrainingItem": "data",
    "run_training": "loop", "train": "loop",
    "teacher_uncertainty": "mean_teacher",
    "TrainEvent": "events", "StartEvent": "events", "StepEvent": "events", "ValidationEvent": "events",
    "CheckpointEvent": "events", "WarningEvent": "events", "PreviewEvent": "events", "DoneEvent": "events",
    "TrainResult": "events",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
