"""Stack separate co-registered files (T1/T2/FLAIR, CT+PET, CT+MRI) as the channels of one image.

``open_stack([t1.nii.gz, t2.nii.gz, flair.nii.gz])`` opens each file lazily (``open_image``) and returns one
``CZYX`` (volumes) or ``CYX`` (2D images) ``ImageSource`` whose channel ``k`` is file ``k`` (a 4D file
contributes all its channels). Nothing is read beyond what each reader reads at open time: the channels are
a lazy ``dask.array.concatenate`` of the files' dask arrays, so a training patch or a prediction tile reads
only its own window from every file.

The files must describe the same voxel grid; nothing is resampled. ``check_geometry`` refuses, with a
``MedsegError`` naming the file and the difference:

- a different spatial shape or axes;
- a voxel spacing that differs by more than ``GEOMETRY_TOL_MM`` (1e-3 mm) on any axis;
- an orientation/position (``metadata["affine_ras"]`` of NIfTI/DICOM) that puts any corner of the grid more
  than ``GEOMETRY_TOL_MM`` away from where the first file puts it (this covers origin, direction and spacing);
- a file with an affine stacked with one without.

Co-register (and resample) the files first (e.g. with ANTs, elastix or SimpleITK) when they differ.

Channel names are the ``names`` given or the files' names (``t1``, ``t2``...; ``name:channel`` for a 4D
file); each channel's contrast and modality are kept in ``metadata["channel_contrast_limits"]`` and
``metadata["channel_modalities"]``. ``stack_arrays`` does the same check and stacking for in-memory arrays
(the napari "Stack channels" widget uses it on open image layers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource

logger = logging.getLogger(__name__)

#: largest allowed difference in mm between the files' spacings or grid corners
GEOMETRY_TOL_MM = 1e-3


def split_paths(text: str | Sequence[str]) -> list[str]:
    """``"a.nii.gz,b.nii.gz"`` (or a list whose items may hold commas) -> ``["a.nii.gz", "b.nii.gz"]``."""
    items = [text] if isinstance(text, (str, os.PathLike)) else list(text)
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def _corners(shape: Sequence[int]) -> np.ndarray:
    """Homogeneous voxel coordinates (4 x 8) of the grid's corner voxel centres."""
    ends = [(0, max(0, int(n) - 1)) for n in shape]
    pts = np.array(np.meshgrid(*ends, indexing="ij")).reshape(len(shape), -1).astype(float)
    return np.vstack([pts, np.ones((1, pts.shape[1]))])


def corner_distance_mm(a: Any, b: Any, shape: Sequence[int]) -> float:
    """The largest distance (mm) between where affines ``a`` and ``b`` put the corners of a grid of ``shape``."""
    c = _corners(shape)
    pa, pb = np.asarray(a, float) @ c, np.asarray(b, float) @ c
    return float(np.sqrt(((pa[:3] - pb[:3]) ** 2).sum(axis=0)).max())


def check_geometry(items: Sequence[tuple[str, tuple[int, ...], tuple[float, ...], Any]],
                   tol: float = GEOMETRY_TOL_MM) -> None:
    """Refuse (``MedsegError``) entries that do not share the first one's grid.

    ``items``: ``(name, spatial_shape, spacing, affine or None)`` per file/layer; spacing in mm."""
    if not items:
        raise MedsegError("stacking needs at least one image")
    name0, shape0, sp0, aff0 = items[0]
    for name, shape, sp, aff in items[1:]:
        if tuple(shape) != tuple(shape0):
            raise MedsegError(f"{name}: its grid is {tuple(shape)} voxels but {name0} has {tuple(shape0)}; the "
                              "channels of one image must have the same shape. Resample it onto the first file "
                              "(co-registration) before stacking.")
        d_sp = max(abs(float(a) - float(b)) for a, b in zip(sp, sp0))
        if d_sp > tol:
            raise MedsegError(f"{name}: its voxel spacing {tuple(round(float(s), 6) for s in sp)} mm differs from "
                              f"{name0}'s {tuple(round(float(s), 6) for s in sp0)} mm by {d_sp:.4g} mm (more "
                              f"than {tol:g} mm); resample it onto the first file before stacking.")
        if (aff is None) != (aff0 is None):
            has, lacks = (name, name0) if aff0 is None else (name0, name)
            raise MedsegError(f"{lacks}: has no position/orientation (affine) while {has} has one, so their "
                              "alignment cannot be checked; stack files of the same kind (all NIfTI/DICOM).")
        if aff is not None:
            d = corner_distance_mm(aff, aff0, shape0)
            if d > tol:
                raise MedsegError(f"{name}: its position/orientation differs from {name0}'s: the grid corners are "
                                  f"up to {d:.4g} mm apart (more than {tol:g} mm); co-register and resample it "
                                  "onto the first file before stacking.")


def _channels_first(src: ImageSource) -> tuple[da.Array, list[str]]:
    """Level 0 of ``src`` as a dask array with a leading channel axis, and its channels' names."""
    if src.rgb:
        raise MedsegError(f"{src.path or src.name}: an RGB image cannot be stacked as channels of a volume; stack "
                          "single-channel (grey) images.")
    extra = [a for a in src.axes if a not in "CZYX"]
    if extra:
        raise MedsegError(f"{src.path or src.name}: axes {src.axes!r} (with {''.join(extra)}) cannot be stacked; "
                          "stack images with axes YX, ZYX, CYX or CZYX.")
    arr = src.levels[0]
    arr = arr if isinstance(arr, da.Array) else da.from_array(arr, chunks="auto")
    if src.channel_axis is None:
        return arr[None], [src.name]
    arr = da.moveaxis(arr, src.channel_axis, 0)
    cn = list(src.channel_names) or [str(i) for i in range(arr.shape[0])]
    return arr, [f"{src.name}:{c}" for c in cn]


def stack_sources(sources: Sequence[ImageSource], names: Sequence[str] | None = None) -> ImageSource:
    """One lazy ``C(Z)YX`` ``ImageSource`` from ``sources`` of the same grid (``check_geometry``)."""
    if not sources:
        raise MedsegError("open_stack needs at least one file")
    items = []
    for s in sources:
        if s.spatial_axes not in ("YX", "ZYX"):
            raise MedsegError(f"{s.path or s.name}: spatial axes {s.spatial_axes!r} cannot be stacked (YX or ZYX)")
        items.append((s.path or s.name, s.shape, s.pixel_size, s.metadata.get("affine_ras")))
    if len({s.spatial_axes for s in sources}) > 1:
        raise MedsegError(f"cannot stack 2D and 3D images together: {', '.join(f'{n} {s.spatial_axes}' for (n, *_), s in zip(items, sources))}")
    check_geometry(items)
    arrays, chan_names, limits, modalities = [], [], [], []
    for s in sources:
        a, cn = _channels_first(s)
        arrays.append(a)
        chan_names += cn
        limits += [list(s.contrast_limits) if s.contrast_limits else None] * len(cn)
        modalities += [s.modality] * len(cn)
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(chan_names):
            raise MedsegError(f"{len(names)} channel names given ({', '.join(names)}) for {len(chan_names)} channels "
                              f"({', '.join(chan_names)}); give one name per channel")
        chan_names = names
    dtype = np.result_type(*[a.dtype for a in arrays])
    stacked = da.concatenate([a.astype(dtype) for a in arrays], axis=0)
    first = sources[0]
    axes = "C" + first.spatial_axes
    levels = [stacked]
    if first.spatial_axes == "ZYX":
        from napari_medseg.io.volume import lower_levels

        levels = lower_levels(stacked, first.pixel_size, 1)
    finite = [lim for lim in limits if lim is not None]
    paths = [s.path for s in sources]
    logger.info("stacked %d file(s) as %s %s: channels %s", len(sources), axes, tuple(stacked.shape), chan_names)
    return ImageSource(
        levels=levels, axes=axes, pixel_size=first.pixel_size, unit=first.unit,
        name="+".join(s.name for s in sources), path=first.path,
        modality=modalities[0] if len(set(modalities)) == 1 else "unknown",
        channel_names=tuple(chan_names),
        contrast_limits=(min(lo for lo, _ in finite), max(hi for _, hi in finite)) if finite else None,
        metadata={**{k: v for k, v in first.metadata.items() if k in ("affine_ras", "stored_axcodes")},
                  "format": "stack", "stack_paths": paths, "channel_contrast_limits": limits,
                  "channel_modalities": modalities},
    )


def open_stack(paths: str | Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> ImageSource:
    """Open co-registered files lazily as the channels of one ``C(Z)YX`` image (see the module docstring).

    ``paths``: a list, or one string of comma-separated paths; ``names``: one per channel (default: the
    files' names)."""
    from napari_medseg.io.reader import open_image

    plist = split_paths(paths) if isinstance(paths, str) else [str(p) for p in paths]
    if not plist:
        raise MedsegError("open_stack needs at least one file")
    sources = [open_image(Path(p), kind="image") for p in plist]
    return stack_sources(sources, names)


def stack_arrays(arrays: Sequence[Any], names: Sequence[str], spacing: Sequence[Sequence[float]],
                 affines: Sequence[Any] | None = None) -> tuple[Any, list[str]]:
    """Check and stack in-memory images (e.g. napari layers' data, each ``(Z)YX``) as channels.

    ``spacing``: each array's pixel size per spatial axis (mm); ``affines``: each one's 4 x 4 voxel -> mm
    affine or None. Returns the lazy ``C(Z)YX`` dask array and the channel names."""
    if len(arrays) < 1 or not (len(arrays) == len(names) == len(spacing)):
        raise MedsegError("give one name and one spacing per image to stack")
    affs = list(affines) if affines is not None else [None] * len(arrays)
    ndims = {np.ndim(a) for a in arrays}
    if len(ndims) > 1 or ndims - {2, 3}:
        raise MedsegError(f"stack single-channel 2D (YX) or 3D (ZYX) images of one dimensionality; got "
                          f"{', '.join(f'{n} {tuple(np.shape(a))}' for n, a in zip(names, arrays))}")
    check_geometry([(str(n), tuple(np.shape(a)), tuple(sp), af) for a, n, sp, af in zip(arrays, names, spacing, affs)])
    lazy = [a if isinstance(a, da.Array) else da.from_array(np.asarray(a), chunks="auto") for a in arrays]
    dtype = np.result_type(*[a.dtype for a in lazy])
    return da.stack([a.astype(dtype) for a in lazy], axis=0), [str(n) for n in names]
