"""What a model family declares about each of its models (``ModelEntry``); the families export their entries
and ``registry`` merges them, so no family imports the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from napari_medseg.models.config import ModelConfig

Builder = Callable[[ModelConfig], nn.Module]
SizeRule = int | Callable[[ModelConfig], int]


@dataclass(frozen=True)
class ModelEntry:
    """How to build a model and which inputs it takes.

    ``multiple`` is the factor every spatial size must divide by; ``min_size`` the smallest size per axis
    the model trains on (default ``2 * multiple``: the coarsest feature map then has more than one pixel,
    which instance normalisation needs in training); ``dims`` the spatial dimensions it is built for;
    ``presets`` the fields each named size sets (``"small"``: trains on a CPU in minutes on 256 x 256
    patches; ``"base"``: the papers' widths, for a GPU), used by ``registry.preset``.
    """

    builder: Builder
    multiple: SizeRule
    dims: tuple[int, ...] = (2, 3)
    min_size: SizeRule | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


PRESET_SIZES = ("small", "base")
