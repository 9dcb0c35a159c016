"""Input normalisation, part of a model's contract: stored in every checkpoint, applied identically in
training, live preview and tiled prediction.

``NormConfig.apply`` works on torch tensors ``(N, C, *spatial)`` of any dtype on any device, so callers
can send uint8 to the GPU and normalise there. Values map ``low -> 0`` and ``high -> 1`` per channel, clipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medseg.core.errors import MedsegError

# Common CT windows (center, width) in Hounsfield units.
CT_WINDOWS = {"soft_tissue": (40.0, 400.0), "abdomen": (50.0, 350.0), "lung": (-600.0, 1500.0),
              "bone": (400.0, 1800.0), "brain": (40.0, 80.0)}


@dataclass(frozen=True)
class NormConfig:
    mode: str = "range"  # "range" (fixed low/high), "percentile" (resolved from data), "ct_window"
    low: tuple[float, ...] = (0.0,)
    high: tuple[float, ...] = (255.0,)

    def __post_init__(self) -> None:
        low, high = tuple(float(v) for v in self.low), tuple(float(v) for v in self.high)
        if len(low) != len(high) or not low:
            raise MedsegError(f"normalisation needs as many low as high values, got {low} and {high}")
        if not all(np.isfinite(v) for v in low + high):
            raise MedsegError("normalisation bounds must be finite numbers")
        if any(h <= lo for lo, h in zip(low, high)):
            raise MedsegError(f"normalisation needs high > low per channel, got {low} and {high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def ct_window(cls, center: float = 40.0, width: float = 400.0) -> NormConfig:
        return cls(mode="ct_window", low=(center - width / 2,), high=(center + width / 2,))

    @classmethod
    def uint8(cls, channels: int) -> NormConfig:
        return cls(mode="range", low=(0.0,) * channels, high=(255.0,) * channels)

    @classmethod
    def from_percentiles(cls, sample: np.ndarray, channel_axis: int | None, p_low: float = 0.5,
                         p_high: float = 99.5) -> NormConfig:
        """Per-channel percentiles of ``sample`` (e.g. a low-resolution level), ignoring NaN/inf."""
        a = np.asarray(sample, dtype=np.float32)
        chans = [a] if channel_axis is None else [np.take(a, i, axis=channel_axis) for i in range(a.shape[channel_axis])]
        low, high = [], []
        for c in chans:
            v = c[np.isfinite(c)]
            if v.size == 0:
                raise MedsegError("the image holds no finite values to normalise by")
            lo, hi = np.percentile(v, [p_low, p_high])
            if hi <= lo:
                hi = lo + 1.0
            low.append(float(lo))
            high.append(float(hi))
        return cls(mode="percentile", low=tuple(low), high=tuple(high))

    @property
    def channels(self) -> int:
        return len(self.low)

    def apply(self, x: Any) -> Any:
        """Normalise a torch tensor (N, C, *spatial) to float32 in [0, 1]; NaN and inf become 0."""
        import torch

        x = x.float()
        if x.shape[1] != self.channels and self.channels != 1:
            raise MedsegError(f"normalisation set for {self.channels} channels, input has {x.shape[1]}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        lo = torch.tensor(self.low, device=x.device, dtype=x.dtype).view(shape)
        hi = torch.tensor(self.high, device=x.device, dtype=x.dtype).view(shape)
        y = ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)
        return torch.nan_to_num_(y, nan=0.0, posinf=1.0, neginf=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormConfig:
        if not isinstance(d, dict):
            raise MedsegError("a normalisation config must be a mapping")
        try:
            return cls(mode=str(d.get("mode", "range")), low=tuple(d["low"]), high=tuple(d["high"]))
        except (KeyError, TypeError, ValueError) as e:
            raise MedsegError(f"invalid normalisation config {d!r}: {e}") from e

    def replace(self, **kw: Any) -> NormConfig:
        return dataclasses.replace(self, **kw)
