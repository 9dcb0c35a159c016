"""Tissue masks: find the tissue on a low-resolution level so that background blocks and windows are skipped.

``compute_tissue_mask`` thresholds a low-resolution view of the slide (a pyramid level near
``target_pixel_size`` microns, further reduced strip by strip if the pyramid is too shallow, so level 0
is never read whole) and cleans the result with scikit-image:

- ``otsu_saturation`` (RGB brightfield, the default): Otsu on HSV saturation; glass is grey, stain is not.
  The threshold is capped at ``max_threshold`` so that a slide that is all tissue stays all tissue.
- ``otsu_intensity`` (grey brightfield): Otsu on intensity, tissue darker than glass.
- ``otsu_fluorescence`` (grey fluorescence): Otsu on intensity, tissue brighter.

then removes objects and holes smaller than ``min_size`` mask pixels and dilates by ``dilate`` pixels.
The mask is shown to the user as a labels layer (``TissueMask.to_source()``) and saved with the output.
Axes: the mask is ``YX`` at its own ``level``/``downsample``; ``any_tissue`` answers for boxes in pixels
of any pyramid level via an integral image, and ``pixels`` gives the mask at a box's pixels (nearest
upsampling): the predictor writes nothing (0) outside it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.core.source import ImageSource

log = logging.getLogger(__name__)
METHODS = ("otsu_saturation", "otsu_intensity", "otsu_fluorescence")


@dataclass
class TissueMask:
    """``mask`` (bool, YX) at ``downsample`` (per axis, relative to level 0) of the source; ``scale`` is its
    pixel size in the source's unit and ``level`` the pyramid level it was read from."""

    mask: np.ndarray
    level: int
    downsample: tuple[float, float]
    scale: tuple[float, float]
    method: str = "otsu_saturation"
    threshold: float | None = None
    source_shape: tuple[int, ...] = ()
    _integral: np.ndarray | None = field(default=None, repr=False)

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _ii(self) -> np.ndarray:
        if self._integral is None:
            ii = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.int64)
            ii[1:, 1:] = np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int64), axis=1)
            self._integral = ii
        return self._integral

    def any_tissue(self, box: Sequence[tuple[int, int]], level_downsample: Sequence[float]) -> bool:
        """True if the YX ``box`` (pixels of a level with ``level_downsample`` relative to level 0) holds
        any tissue. Rounded outwards, so a window that touches tissue is never skipped."""
        (y0, y1), (x0, x1) = box[-2:]
        fy = level_downsample[-2] / self.downsample[0]
        fx = level_downsample[-1] / self.downsample[1]
        h, w = self.mask.shape
        a0, a1 = max(0, math.floor(y0 * fy)), min(h, math.ceil(y1 * fy))
        b0, b1 = max(0, math.floor(x0 * fx)), min(w, math.ceil(x1 * fx))
        if a1 <= a0 or b1 <= b0:
            return False
        ii = self._ii()
        return bool(ii[a1, b1] - ii[a0, b1] - ii[a1, b0] + ii[a0, b0] > 0)

    def pixels(self, box: Sequence[tuple[int, int]], level_downsample: Sequence[float]) -> np.ndarray | None:
        """The mask at the pixels of the YX ``box`` (pixels of a level with ``level_downsample``), as a bool
        array of the box's shape: nearest upsampling (each pixel takes the mask cell holding its centre;
        pixels past the mask's extent are not tissue). ``None`` when the whole box is tissue. Costs one
        gather of the box's size; the mask is never upsampled beyond the box.

        Consistent with ``any_tissue``: every window (and block) holding a pixel marked here is computed,
        so on these pixels the blend is complete (MONAI's)."""
        (y0, y1), (x0, x1) = box[-2:]
        fy = level_downsample[-2] / self.downsample[0]
        fx = level_downsample[-1] / self.downsample[1]
        h, w = self.mask.shape
        iy = np.floor((np.arange(y0, y1, dtype=np.float64) + 0.5) * fy).astype(np.int64)
        ix = np.floor((np.arange(x0, x1, dtype=np.float64) + 0.5) * fx).astype(np.int64)
        vy, vx = iy < h, ix < w
        if len(iy) and len(ix) and vy.all() and vx.all() and self.mask[iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1].all():
            return None
        out = self.mask[np.minimum(iy, h - 1)[:, None], np.minimum(ix, w - 1)[None, :]]
        out &= vy[:, None] & vx[None, :]
        return out

    def to_source(self, name: str = "tissue mask", unit: str = "micrometer") -> ImageSource:
        """The mask as a labels ``ImageSource`` (1 = tissue) placed over the slide by ``scale``."""
        return ImageSource(levels=[self.mask.astype(np.uint8)], axes="YX", pixel_size=self.scale, unit=unit,
                           name=name, kind="labels",
                           metadata={"method": self.method, "threshold": self.threshold, "colors": {1: (0.0, 0.8, 0.3, 0.35)}})

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "level": self.level, "downsample": list(self.downsample),
                "threshold": self.threshold, "fraction": round(self.fraction, 4), "shape": list(self.mask.shape)}


def _reduce(arr: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f x f`` cells of a YX or YXC array (edges: partial cells averaged over what exists)."""
    if f == 1:
        return arr.astype(np.float32)
    from skimage.measure import block_reduce

    bs = (f, f) + ((1,) if arr.ndim == 3 else ())
    return block_reduce(arr.astype(np.float32), bs, np.mean)


def low_resolution(source: ImageSource, target_downsample: float = 32.0, max_side: int = 8192,
                   strip: int = 2048) -> tuple[np.ndarray, int, tuple[float, float]]:
    """A low-resolution YX or YXC float32 view of a 2D slide: the coarsest level with downsample <=
    ``target_downsample``, reduced further by an integer factor strip by strip. Returns (array, level,
    downsample per axis relative to level 0)."""
    from napari_medseg.core.compute import materialize

    if source.spatial_dims != 2:
        raise MedsegError("tissue masks are for 2D slides; predict volumes with tissue_mask off")
    level = 0
    for i in range(len(source.levels)):
        if max(source.level_downsample(i)) <= target_downsample * 1.0001:
            level = i
    ds = source.level_downsample(level)
    shape = source.level_shape(level)
    f = max(1, int(target_downsample // max(ds)))
    while -(-max(shape) // f) > max_side:
        f *= 2
    arr = source.levels[level]
    c_ax = source.channel_axis
    row_bytes = int(np.prod(arr.shape)) // max(1, shape[0]) * np.dtype(arr.dtype).itemsize
    strip = min(strip, max(1, (32 << 20) // max(1, row_bytes)))  # about 32 MB of source per read
    strip = max(f, (strip // f) * f)
    parts = []
    for y0 in range(0, shape[0], strip):
        sl: list[Any] = [slice(None)] * arr.ndim
        sl[source.axes.index("Y")] = slice(y0, min(y0 + strip, shape[0]))
        part = materialize(arr[tuple(sl)])
        if c_ax is not None and c_ax != part.ndim - 1:
            part = np.moveaxis(part, c_ax, -1)
        parts.append(_reduce(part, f))
    low = np.concatenate(parts, axis=0)
    return low, level, (ds[0] * shape[0] / low.shape[0], ds[1] * shape[1] / low.shape[1])


def _saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb[..., :3].astype(np.float32)
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)


def compute_tissue_mask(source: ImageSource, *, level: int | None = None, method: str = "auto",
                        min_size: int = 64, target_pixel_size: float = 16.0, max_threshold: float = 0.12,
                        min_threshold: float = 0.02, dilate: int = 1) -> TissueMask:
    """The tissue mask of a 2D slide, computed at about ``target_pixel_size`` (in the source's unit per
    pixel) or from ``level`` if given. ``method="auto"`` picks saturation for RGB, intensity otherwise."""
    from scipy import ndimage
    from skimage import filters, morphology

    if source.spatial_dims != 2:
        raise MedsegError("tissue masks are for 2D slides; predict volumes with tissue_mask off")
    if method == "auto":
        method = "otsu_saturation" if source.rgb or source.n_channels >= 3 else (
            "otsu_fluorescence" if source.modality == "fluorescence" else "otsu_intensity")
    if method not in METHODS:
        raise MedsegError(f"unknown tissue-mask method {method!r}; choose one of {', '.join(METHODS)} or 'auto'")
    if level is not None:
        if not 0 <= level < len(source.levels):
            raise MedsegError(f"level {level} does not exist; the image has levels 0..{len(source.levels) - 1}")
        target_ds = max(source.level_downsample(level))
    else:
        target_ds = max(1.0, target_pixel_size / max(source.pixel_size))
    try:
        low, lvl, ds = low_resolution(source, target_ds)
    except MedsegError:
        raise
    except Exception as e:
        raise UnreadableInputError(f"{source.path or source.name}: the low-resolution level could not be read for the "
                                   f"tissue mask ({type(e).__name__}: {e}); repair the image or predict with "
                                   "the tissue mask off") from e
    if method == "otsu_saturation":
        if low.ndim != 3 or low.shape[-1] < 3:
            raise MedsegError("saturation masks need an RGB slide; use method='otsu_intensity' for grey slides")
        feat = _saturation(low)
        lo_cap, hi_cap = min_threshold, max_threshold
    else:
        g = low.mean(axis=-1) if low.ndim == 3 else low
        rng = float(np.ptp(g)) or 1.0
        feat = (g - g.min()) / rng if method == "otsu_fluorescence" else (g.max() - g) / rng
        lo_cap, hi_cap = min_threshold, 1.0
    if float(np.ptp(feat)) < 1e-6:
        thr = float(feat.flat[0]) if feat.size else 0.0
        mask = np.full(feat.shape, thr > hi_cap, dtype=bool)
    else:
        thr = float(filters.threshold_otsu(feat))
        thr = float(min(max(thr, lo_cap), hi_cap))
        mask = feat > thr
    if min_size > 0 and mask.any():
        mask = morphology.remove_small_objects(mask, max_size=min_size) if _has_max_size() else \
            morphology.remove_small_objects(mask, min_size=min_size)
        mask = morphology.remove_small_holes(mask, max_size=min_size) if _has_max_size() else \
            morphology.remove_small_holes(mask, area_threshold=min_size)
    if dilate > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, morphology.disk(dilate))
    scale = (source.pixel_size[0] * ds[0], source.pixel_size[1] * ds[1])
    tm = TissueMask(mask=np.ascontiguousarray(mask), level=lvl, downsample=ds, scale=scale, method=method,
                    threshold=thr, source_shape=source.shape)
    log.info("tissue mask: %s at level %d (downsample %.1f): %.1f%% tissue", method, lvl, ds[0], 100 * tm.fraction)
    return tm


def _has_max_size() -> bool:
    """scikit-image >= 0.26 renamed ``min_size``/``area_threshold`` to ``max_size``."""
    import inspect

    from skimage import morphology

    return "max_size" in inspect.signature(morphology.remove_small_objects).parameters
