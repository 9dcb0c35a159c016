"""``ImageSource``: what every reader returns and every engine consumes.

An image is a list of lazy arrays, level 0 (full resolution) first, each level strictly smaller in every
spatial axis it is downsampled along. Axes are named:

- slides: ``"YXC"`` (RGB/RGBA or multichannel, channels last) or ``"YX"`` (grey);
- volumes: ``"ZYX"`` or ``"CZYX"`` (several co-registered sequences, channel first).

Volumes use one orientation everywhere: LPS+ voxel order with axes ZYX, i.e. Z runs inferior -> superior,
Y anterior -> posterior, X patient right -> patient left. Shown in napari (row 0 at the top, column 0 at
the left) an axial slice appears in the radiological convention: anterior up, patient's right on the
viewer's left. Readers of RAS formats (NIfTI) flip to this order lazily.

Physical pixel size is per *spatial* axis of level 0, in ``unit`` ("micrometer" for slides, "millimeter"
for volumes). Levels are typically dask arrays; anything sliceable with numpy semantics and exposing
``shape``/``dtype``/``ndim`` works. Nothing here reads pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPATIAL_AXES = "ZYX"


@dataclass
class ImageSource:
    levels: list[Any]
    axes: str
    pixel_size: tuple[float, ...]
    unit: str = "micrometer"
    name: str = "image"
    path: str | None = None
    modality: str = "unknown"  # brightfield | fluorescence | CT | MR | EM | unknown
    rgb: bool = False
    channel_names: tuple[str, ...] = ()
    contrast_limits: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: str = "image"  # "image" or "labels" (an NGFF labels group, a label store, a prediction)

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("an ImageSource needs at least one level")
        if len(self.axes) != self.levels[0].ndim:
            raise ValueError(f"axes {self.axes!r} do not match level 0 with {self.levels[0].ndim} dimensions")
        if len(self.pixel_size) != len(self.spatial_axes):
            raise ValueError(
                f"pixel_size {self.pixel_size} needs one value per spatial axis {self.spatial_axes!r}"
            )
        self.pixel_size = tuple(float(p) for p in self.pixel_size)
        prev = None
        for lvl in self.levels:
            sp = self._spatial_shape(lvl.shape)
            if prev is not None and (any(a > b for a, b in zip(sp, prev)) or sp == prev):
                raise ValueError(f"levels must shrink strictly: {prev} then {sp}")
            prev = sp

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def spatial_axes(self) -> str:
        return "".join(a for a in self.axes if a in SPATIAL_AXES)

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_axes)

    @property
    def channel_axis(self) -> int | None:
        return self.axes.index("C") if "C" in self.axes else None

    @property
    def n_channels(self) -> int:
        ax = self.channel_axis
        return 1 if ax is None else int(self.levels[0].shape[ax])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.levels[0].dtype)

    def _spatial_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(s) for s, a in zip(shape, self.axes) if a in SPATIAL_AXES)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of level 0 (e.g. ``(H, W)`` or ``(Z, Y, X)``)."""
        return self._spatial_shape(self.levels[0].shape)

    def level_shape(self, level: int) -> tuple[int, ...]:
        return self._spatial_shape(self.levels[level].shape)

    def level_downsample(self, level: int) -> tuple[float, ...]:
        """Factor per spatial axis between level 0 and ``level`` (>= 1)."""
        return tuple(a / b for a, b in zip(self.shape, self.level_shape(level)))

    def level_pixel_size(self, level: int) -> tuple[float, ...]:
        return tuple(p * f for p, f in zip(self.pixel_size, self.level_downsample(level)))

    def level_for_pixel_size(self, target: float) -> int:
        """The coarsest level whose (in-plane) pixel size is still <= ``target`` (level 0 if none)."""
        best = 0
        for i in range(len(self.levels)):
            if self.level_pixel_size(i)[-1] <= target * 1.0001:
                best = i
        return best

    # -- napari-facing description (pure: no napari import) -------------------------------------------
    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``viewer.add_image`` / a reader's LayerData tuple."""
        data = self.levels if len(self.levels) > 1 else self.levels[0]
        kw: dict[str, Any] = {
            "name": self.name,
            "multiscale": len(self.levels) > 1,
            "rgb": self.rgb,
            "scale": self.pixel_size,
            "units": self.unit,
            "metadata": {"napari_medseg": {"path": self.path, "axes": self.axes, "modality": self.modality,
                                           "unit": self.unit, **self.metadata}},
        }
        if self.channel_axis is not None and not self.rgb:
            kw["channel_axis"] = self.channel_axis
            if self.channel_names:
                kw["name"] = [f"{self.name} [{c}]" for c in self.channel_names]
        if self.kind == "labels":
            kw.pop("rgb")
            return {"data": data, **kw}
        if self.contrast_limits is not None and not self.rgb:
            kw["contrast_limits"] = list(self.contrast_limits)
        if self.modality in ("CT", "MR") or self.spatial_dims == 3:
            kw["colormap"] = "gray"
        return {"data": data, **kw}
