"""``ModelConfig``: a frozen dataclass with a JSON round trip (checked field by field), stored beside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from napari_medseg.core.config_values import coerce, kind_of
from napari_medseg.core.errors import MedsegError

ACTIVATIONS = ("prelu", "relu")


@dataclass(frozen=True)
class ModelConfig:
    """What ``build_model`` needs. ``out_channels`` counts background (channel 0) and every class."""

    name: str = "unet"
    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 2
    # U-Net family: feature widths per level (len - 1 downsamplings).
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_units: int = 2
    # Swin family: embedding width and depths/heads per stage.
    feature_size: int = 24
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    # 8 (not the papers' 7): with power-of-two patches (256, 512; 64, 128 in 3D) no stage needs padding.
    window_size: int = 8
    dropout: float = 0.0
    norm: str = "instance"
    # U-Net: "prelu" (MONAI's default) or "relu", the quantisation-friendly choice: ONNX Runtime fuses ReLU
    # into the convolution and quantises around it, while PReLU stays a separate float op (docs/deployment.md)
    act: str = "prelu"

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise MedsegError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.in_channels < 1 or self.out_channels < 2:
            raise MedsegError(
                f"need in_channels >= 1 and out_channels >= 2 (background + a class), got "
                f"{self.in_channels} and {self.out_channels}"
            )
        if self.act not in ACTIVATIONS:
            raise MedsegError(f"act must be one of {', '.join(ACTIVATIONS)}, got {self.act!r}")
        for f in ("channels", "depths", "num_heads"):
            object.__setattr__(self, f, tuple(int(v) for v in getattr(self, f)))

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise MedsegError("a model config must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise MedsegError(f"unknown model config keys {unknown}; valid keys are {sorted(known)}")
        return cls(**{k: coerce("model config", k, v, kind_of(known[k].default)) for k, v in d.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, s: str) -> ModelConfig:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise MedsegError(f"model config is not valid JSON: {e}") from e
        return cls.from_dict(d)


# Per-model overrides of the defaults (the defaults are "small" except swin_unetr's). See docs/models.md.
