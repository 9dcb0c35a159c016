"""Pure models: ``build_model(ModelConfig)``, normalisation and checkpoints. No Qt, napari or magicgui."""

from napari_medseg.models.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_model,
    load_state_dict_report,
    save_checkpoint,
)
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.normalization import NormConfig
from napari_medseg.models.registry import (
    available_models,
    build_model,
    check_input_size,
    min_input_size,
    required_multiple,
    valid_size,
)

__all__ = [
    "Checkpoint",
    "ModelConfig",
    "NormConfig",
    "available_models",
    "build_model",
    "check_input_size",
    "load_checkpoint",
    "load_model",
    "load_state_dict_report",
    "min_input_size",
    "required_multiple",
    "save_checkpoint",
    "valid_size",
]
