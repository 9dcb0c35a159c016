"""npe2 single-layer writers for Labels layers: NGFF zarr labels group and TIFF.

Both take the physical pixel size from the layer's ``scale`` (and unit from its ``units``), write level 0
of a multiscale layer, and return the written path. Errors a user can cause (wrong dtype, a zarr whose
image has another shape) raise a ``MedsegError`` whose message napari shows.
"""

from __future__ import annotations

import logging
from typing import Any

from napari_medseg.io.writers import write_labels_ngff
from napari_medseg.io.writers import write_labels_tiff as _write_tiff

logger = logging.getLogger(__name__)


def _level0(data: Any, meta: dict[str, Any]) -> Any:
    if meta.get("multiscale") or isinstance(data, (list, tuple)):
        return data[0]
    return data


def _scale_unit(meta: dict[str, Any], ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    scale = meta.get("scale")
    px = tuple(float(s) for s in scale[-ndim:]) if scale is not None else None
    unit = None
    units = meta.get("units")
    if units:
        names = {str(u) for u in list(units)[-ndim:]}
        if len(names) == 1:
            unit = names.pop()
    if unit is None:
        unit = ((meta.get("metadata") or {}).get("napari_medseg") or {}).get("unit")
    if unit in ("pixel", "px") and px is not None and all(s == 1.0 for s in px):
        return None, None
    return px, unit


def _colors(meta: dict[str, Any]) -> dict[int, tuple[float, float, float, float]] | None:
    cmap = meta.get("colormap")
    d = getattr(cmap, "color_dict", None)
    if d is None and isinstance(cmap, dict):
        d = cmap
    if not d:
        return None
    return {int(k): tuple(float(c) for c in v) for k, v in d.items() if k is not None}


def write_labels_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """Save a Labels layer as ``labels/<layer name>`` in an NGFF zarr (existing image zarr or new)."""
    level0 = _level0(data, meta)
    px, unit = _scale_unit(meta, level0.ndim)
    out = write_labels_ngff(path, level0, pixel_size=px, unit=unit, colors=_colors(meta),
                            name=str(meta.get("name") or "labels"))
    return [str(out)]


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Save a Labels layer as a tiled, compressed TIFF with resolution tags (OME-TIFF for 3D)."""
    level0 = _level0(data, meta)
    px, unit = _scale_unit(meta, level0.ndim)
    return [str(_write_tiff(path, level0, pixel_size=px, unit=unit))]
