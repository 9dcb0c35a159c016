"""Model registry: ``build_model(ModelConfig) -> nn.Module``.

Every model maps ``(N, in_channels, *spatial)`` to logits ``(N, out_channels, *spatial)`` of the same
spatial size. ``required_multiple(cfg)`` says which spatial sizes a model takes (``check_input_size``
raises an error that names the sizes that would work).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.base import PRESET_SIZES, ModelEntry, SizeRule
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.fusion import ENTRIES as FUSION_MODELS
from napari_medseg.models.light_family import ENTRIES as LIGHT_MODELS
from napari_medseg.models.nnformer import ENTRIES as NNFORMER_MODELS
from napari_medseg.models.swin_family import ENTRIES as SWIN_MODELS
from napari_medseg.models.transformer_family import ENTRIES as TRANSFORMER_MODELS
from napari_medseg.models.unet_family import ENTRIES as UNET_MODELS

_REGISTRY: dict[str, ModelEntry] = {**UNET_MODELS, **SWIN_MODELS, **LIGHT_MODELS}
_REGISTRY.update(FUSION_MODELS)  # late-fusion multimodal U-Net (models/fusion.py)
_REGISTRY.update(TRANSFORMER_MODELS)  # transunet, unetr (models/transformer_family.py)
_REGISTRY.update(NNFORMER_MODELS)  # nnFormer-style hybrid (models/nnformer.py)


def register(name: str, entry: ModelEntry) -> None:
    """Add (or replace) a model under ``name``: its builder and the sizes it takes (``ModelEntry``)."""
    _REGISTRY[name] = entry


def preset(name: str, size: str = "small", **kw: Any) -> ModelConfig:
    """A named starting point: ``preset("swin_unet", "base", in_channels=3, out_channels=4)``.

    ``size`` is ``"small"`` (trains on a CPU in minutes on 256 x 256 patches; mostly the defaults) or
    ``"base"`` (the papers' widths, for a GPU); each family sets its own (``ModelEntry.presets``). Keyword
    arguments override any field.
    """
    if size not in PRESET_SIZES:
        raise MedsegError(f"unknown preset size {size!r}; choose one of {', '.join(PRESET_SIZES)}")
    if name not in _REGISTRY:
        raise MedsegError(f"unknown model {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return ModelConfig(name=name, **{**_REGISTRY[name].presets.get(size, {}), **kw})


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def _entry(cfg: ModelConfig) -> ModelEntry:
    if cfg.name not in _REGISTRY:
        raise MedsegError(f"unknown model {cfg.name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    e = _REGISTRY[cfg.name]
    if cfg.spatial_dims not in e.dims:
        raise MedsegError(f"model {cfg.name!r} is available for spatial_dims {list(e.dims)}, not {cfg.spatial_dims}")
    return e


def _rule(rule: SizeRule, cfg: ModelConfig) -> int:
    return int(rule(cfg) if callable(rule) else rule)


def required_multiple(cfg: ModelConfig) -> int:
    """The factor every spatial size must divide by (e.g. 16 for a 5-level U-Net, 32 for the Swin models)."""
    return _rule(_entry(cfg).multiple, cfg)


def min_input_size(cfg: ModelConfig) -> int:
    """The smallest spatial size per axis (a multiple of ``required_multiple``) the model trains on."""
    e = _entry(cfg)
    m = _rule(e.multiple, cfg)
    return 2 * m if e.min_size is None else _rule(e.min_size, cfg)


def valid_size(cfg: ModelConfig, size: int) -> int:
    """The nearest size at or above ``size`` that ``cfg`` accepts (a multiple, at least the minimum)."""
    m = required_multiple(cfg)
    return max(min_input_size(cfg), -(-int(size) // m) * m)


def check_input_size(cfg: ModelConfig, size: tuple[int, ...]) -> None:
    """Raise ``MedsegError`` naming valid sizes if ``size`` (spatial, e.g. ZYX or YX) does not suit ``cfg``."""
    m = required_multiple(cfg)
    lo = min_input_size(cfg)
    bad = [int(s) for s in size if s % m or s < lo]
    if bad:
        sugg = sorted({c for s in bad for c in (s // m * m, -(-s // m) * m) if c >= lo} or {lo})
        raise MedsegError(
            f"{cfg.name} needs spatial sizes that are multiples of {m} and at least {lo}; got {tuple(size)}. "
            f"Try {' or '.join(str(s) for s in sugg)}."
        )


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model ``cfg`` names: ``(N, in_channels, *spatial) -> (N, out_channels, *spatial)`` logits."""
    return _entry(cfg).builder(cfg)



def build_model_from_dict(**config: Any) -> nn.Module:
    """``build_model`` from the fields of a ``ModelConfig`` as keyword arguments: the architecture callable a
    napari-medseg bioimage.io package names (``from napari_medseg.models import build_model_from_dict``)."""
    return build_model(ModelConfig.from_dict(config))
