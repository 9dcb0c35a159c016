"""Input normalisation, part of a model's contract: stored in every checkpoint, applied identically in
training, live preview and tiled prediction.

``NormConfig.apply`` works on torch tensors ``(N, C, *spatial)`` of any dtype on any device, so callers
can send uint8 to the GPU and normalise there. Values map ``low -> 0`` and ``high -> 1`` per channel, clipped.

``mode="steps"`` holds a chain of bioimage.io preprocessing steps instead (``preprocessing.py``): the
normalisation of a model imported from a bioimage.io package. ``low``/``high`` then only carry the channel
count (zeros and ones); steps that need statistics of the image are resolved per image (``resolved``).
Every mode exports as such a chain (``to_steps``).
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
    steps: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.mode == "steps" or self.steps:
            from napari_medseg.models.preprocessing import check_steps

            if self.mode != "steps":
                raise MedsegError(f"preprocessing steps need mode 'steps', not {self.mode!r}")
            object.__setattr__(self, "steps", check_steps(self.steps))
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
    def from_steps(cls, steps: Any, channels: int | None = None) -> NormConfig:
        """A chain of bioimage.io preprocessing steps (mappings ``{"id", "kwargs"}``) as a normalisation."""
        from napari_medseg.models.preprocessing import check_steps, step_channels

        checked = check_steps(steps)
        n = int(channels) if channels else step_channels(checked)
        return cls(mode="steps", low=(0.0,) * n, high=(1.0,) * n, steps=checked)

    @property
    def needs_data(self) -> bool:
        """Whether statistics of the image (percentiles, mean/std) must be computed first (``resolved``)."""
        from napari_medseg.models.preprocessing import needs_data

        return bool(self.steps) and needs_data(self.steps)

    def resolved(self, sample: np.ndarray) -> NormConfig:
        """This normalisation with its data-dependent steps fixed from ``sample`` (C, *spatial) of the image."""
        if not self.needs_data:
            return self
        from napari_medseg.models.preprocessing import resolve_steps

        return dataclasses.replace(self, steps=resolve_steps(self.steps, sample))

    def to_steps(self) -> tuple[dict[str, Any], ...]:
        """This normalisation as bioimage.io preprocessing steps: per channel ``scale_linear`` mapping low to 0
        and high to 1, then ``clip`` to [0, 1] (exactly ``apply``)."""
        if self.mode == "steps":
            return self.steps
        gain = [1.0 / (h - lo) for lo, h in zip(self.low, self.high)]
        offset = [-lo * g for lo, g in zip(self.low, gain)]
        return ({"id": "scale_linear", "kwargs": {"gain": gain, "offset": offset, "axis": "channel"}},
                {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}})

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
        if self.mode == "steps":
            from napari_medseg.models.preprocessing import apply_steps

            return torch.nan_to_num_(apply_steps(x, self.steps), nan=0.0)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        lo = torch.tensor(self.low, device=x.device, dtype=x.dtype).view(shape)
        hi = torch.tensor(self.high, device=x.device, dtype=x.dtype).view(shape)
        y = ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)
        return torch.nan_to_num_(y, nan=0.0, posinf=1.0, neginf=0.0)

    def to_dict(self) -> dict[str, Any]:
        d = {"mode": self.mode, "low": list(self.low), "high": list(self.high)}
        return d | ({"steps": [dict(s) for s in self.steps]} if self.steps else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormConfig:
        if not isinstance(d, dict):
            raise MedsegError("a normalisation config must be a mapping")
        try:
            return cls(mode=str(d.get("mode", "range")), low=tuple(d["low"]), high=tuple(d["high"]),
                       steps=tuple(d.get("steps") or ()))
        except (KeyError, TypeError, ValueError) as e:
            raise MedsegError(f"invalid normalisation config {d!r}: {e}") from e

    def replace(self, **kw: Any) -> NormConfig:
        return dataclasses.replace(self, **kw)
