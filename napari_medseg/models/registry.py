"""Model registry: ``build_model(ModelConfig) -> nn.Module``.

Every model maps ``(N, in_channels, *spatial)`` to logits ``(N, out_channels, *spatial)`` of the same
spatial size. ``required_multiple(cfg)`` says which spatial sizes a model takes (``check_input_size``
raises an error that names the sizes that would work).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..io.errors import MedsegError
from .config import ModelConfig

Builder = Callable[[ModelConfig], nn.Module]
_REGISTRY: dict[str, tuple[Builder, int, tuple[int, ...]]] = {}


def register(name: str, multiple: int | Callable[[ModelConfig], int], dims: tuple[int, ...] = (2, 3)):
    """Register a builder under ``name``; ``multiple`` is the factor every spatial size must divide by."""

    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = (fn, multiple, dims)  # type: ignore[assignment]
        return fn

    return deco


def available_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _entry(cfg: ModelConfig):
    _load_builtin()
    if cfg.name not in _REGISTRY:
        raise MedsegError(f"unknown model {cfg.name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    fn, multiple, dims = _REGISTRY[cfg.name]
    if cfg.spatial_dims not in dims:
        raise MedsegError(f"model {cfg.name!r} is available for spatial_dims {list(dims)}, not {cfg.spatial_dims}")
    return fn, multiple


def required_multiple(cfg: ModelConfig) -> int:
    _, multiple = _entry(cfg)
    return int(multiple(cfg) if callable(multiple) else multiple)


def check_input_size(cfg: ModelConfig, size: tuple[int, ...]) -> None:
    """Raise ``MedsegError`` naming valid sizes if ``size`` (spatial) does not suit ``cfg``."""
    m = required_multiple(cfg)
    bad = [s for s in size if s % m]
    if bad:
        sugg = sorted({max(m, round(s / m) * m) for s in size})
        raise MedsegError(
            f"{cfg.name} needs spatial sizes that are multiples of {m}; got {tuple(size)}. "
            f"Try {' or '.join(str(s) for s in sugg)}."
        )


def build_model(cfg: ModelConfig) -> nn.Module:
    fn, _ = _entry(cfg)
    return fn(cfg)


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import unet_family  # noqa: F401  (registers unet, attention_unet, unetpp)
        try:
            from . import swin_family  # noqa: F401  (registers swin_unetr, swin_unet)
        except ImportError:  # pragma: no cover - optional until implemented
            pass
