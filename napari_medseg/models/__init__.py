"""Pure models: ``build_model(ModelConfig)``, normalisation and checkpoints. No Qt, napari or magicgui.

Public API (imported lazily, so ``import napari_medseg.models`` and its configs stay light: torch is
imported by the first name that needs it, e.g. ``build_model``):

- ``ModelConfig`` (``config.py``); ``NormConfig`` (``normalization.py``);
- ``available_models``, ``build_model``, ``build_model_from_dict``, ``check_input_size``, ``min_input_size``, ``required_multiple``,
  ``valid_size``, ``preset`` (``registry.py``);
- ``Checkpoint``, ``load_checkpoint``, ``load_model``, ``load_state_dict_report``, ``save_checkpoint``
  (``checkpoint.py``).
"""

from __future__ import annotations

from napari_medseg.core.lazy_exports import lazy_exports

_EXPORTS = {
    "ModelConfig": "config",
    "NormConfig": "normalization",
    "available_models": "registry", "build_model": "registry", "check_input_size": "registry",
    "min_input_size": "registry", "build_model_from_dict": "registry", "required_multiple": "registry", "valid_size": "registry", "preset": "registry",
    "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "load_model": "checkpoint",
    "load_state_dict_report": "checkpoint", "save_checkpoint": "checkpoint",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
