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


def box_index(source: ImageSource, level: int, box: Sequence[tuple[int, int]]
              ) -> tuple[tuple[slice, ...], list[tuple[int, int]]]:
    """The index of ``box`` (clipped to the image) into ``source.levels[level]``, and the clipped box."""
    shape = source.level_shape(level)
    if len(box) != len(shape):
        raise ValueError(f"box {tuple(box)} needs one [start, stop) per spatial axis {source.spatial_axes!r}")
    valid = []
    for (a, b), s in zip(box, shape):
        lo = min(max(int(a), 0), s)
        valid.append((lo, max(lo, min(int(b), s))))
    spatial = iter(valid)
    return tuple(slice(*next(spatial)) if ax in SPATIAL_AXES else slice(None) for ax in source.axes), valid


def channels_to(source: ImageSource, a: Any, channels_last: bool) -> Any:
    """Pixels indexed from ``source`` (its axes) as ``(C, *spatial)``, or ``(*spatial, C)`` with
    ``channels_last``; C = 1 for an image without channels."""
    c = source.channel_axis
    if c is None:
        return a[..., None] if channels_last else a[None]
    return np.moveaxis(a, c, -1 if channels_last else 0)


def read_box(source: ImageSource, level: int, box: Sequence[tuple[int, int]], *, pad: float | None = 0,
             channels_last: bool = False) -> np.ndarray:
    """The pixels of ``box`` (``[start, stop)`` per spatial axis of ``level``) in the source dtype, as
    ``(C, *spatial)``, or ``(*spatial, C)`` with ``channels_last`` (C = 1 for an image without channels).

    Where the box reaches outside the image it is filled with ``pad``; with ``pad=None`` the box is clipped
    to the image instead. The one box reader of the engines: the tiled predictor's tile reads, the live
    preview's region (the tile reader computes many boxes at once through ``box_index`` and ``channels_to``)."""
    from napari_medseg.core.compute import materialize

    idx, valid = box_index(source, level, box)
    a = channels_to(source, materialize(source.levels[level][idx]), channels_last)
    if pad is None:
        return a
    pads = []
    for (s, e), (lo, hi) in zip(box, valid):
        before = min(int(e) - int(s), max(0, -int(s)))
        pads.append((before, int(e) - int(s) - before - (hi - lo)))
    if any(p != (0, 0) for p in pads):
        pads = pads + [(0, 0)] if channels_last else [(0, 0)] + pads
        a = np.pad(a, pads, constant_values=pad)
    return a


def strided_sample(source: ImageSource, max_elems: int = 1 << 21) -> np.ndarray:
    """Pixels ``(C, N)`` of the whole image: its smallest level, strided to at most about ``max_elems`` pixels
    (for statistics such as normalisation percentiles; float32)."""
    from napari_medseg.core.compute import materialize

    lvl = len(source.levels) - 1
    n = int(np.prod(source.level_shape(lvl)))
    step = max(1, int(np.ceil((n / max_elems) ** (1 / source.spatial_dims))))
    idx = tuple(slice(None) if a == "C" else slice(None, None, step) for a in source.axes)
    a = channels_to(source, np.asarray(materialize(source.levels[lvl][idx])), channels_last=False)
    return a.reshape(a.shape[0], -1).astype(np.float32, copy=False)
