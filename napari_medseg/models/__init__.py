"""Pure models: ``build_model(ModelConfig)``, normalisation and checkpoints. No Qt, napari or magicgui."""

from .checkpoint import Checkpoint, load_checkpoint, load_model, load_state_dict_report, save_checkpoint
from .config import ModelConfig
from .normalization import NormConfig
from .registry import (
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
