"""Objects on disk: instance label files and the class of each object id.

``read_objects(path)`` reads an instance label image (0 = no object, ids 1..n) from

- an NGFF zarr: the labels image ``objects`` (e.g. ``NAME.prediction.zarr/labels/objects``, written by
  ``napari-medseg predict --instances``), else its first labels image, else its image; or the labels group
  itself;
- a TIFF or PNG;
- a NIfTI (``.nii``/``.nii.gz``, in the package's ZYX/LPS+ orientation, see ``core/source.py``).

The classes come from the attribute ``medseg_objects`` = ``{"classes": [class of id 0 (0), id 1, ...],
"class_names": [name of prediction value 0, 1, ...]}`` of the labels group (zarr) or from the sidecar
``<file>.objects.json`` holding the same mapping (TIFF, PNG, NIfTI). Without either, every object is of
class 1 (``class_name``); with ``components=True`` the file is read as a semantic label map instead: each
face-connected region of each value ``v > 0`` is one object of class ``v``.

``write_objects(path, objects, class_names=...)`` writes ``.zarr`` (NGFF labels ``objects`` with the
attribute), ``.tif`` (plus the sidecar) or ``.nii.gz`` (in the geometry of ``like``, plus the sidecar).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.core.source import ImageSource
from napari_medseg.objects.instances import Objects

ATTR = "medseg_objects"
LABELS_NAME = "objects"


@dataclass
class ObjectsFile:
    objects: Objects
    class_names: list[str]  # per prediction value, background first
    source: ImageSource  # the label image as read (pixel size, unit, NIfTI/DICOM geometry)


def sidecar(path: str | os.PathLike) -> Path:
    return Path(f"{path}.objects.json")


def _classes_from(meta: Any, n: int, where: str) -> tuple[np.ndarray, list[str] | None]:
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list):
        raise UnreadableInputError(f"{where}: '{ATTR}' must be a mapping with a list 'classes' (one class per id).")
    try:
        cls = np.asarray(meta["classes"], np.int64)
    except (TypeError, ValueError) as e:
        raise UnreadableInputError(f"{where}: '{ATTR}.classes' must hold integers.") from e
    if len(cls) == n:  # one per id without the leading 0
        cls = np.concatenate([[0], cls])
    if len(cls) < n + 1:
        raise UnreadableInputError(f"{where}: '{ATTR}.classes' lists {len(cls)} classes but the labels hold ids up "
                                   f"to {n}.")
    names = meta.get("class_names")
    return cls, [str(v) for v in names] if isinstance(names, list) else None


def _zarr_meta(path: Path, src: ImageSource) -> Any:
    import zarr

    sub = str(src.metadata.get("ngff_path", "")).strip("/")
    try:
        root = zarr.open_group(str(path), mode="r")
        node = root[sub] if sub else root
        attrs = dict(node.attrs)
        return attrs.get(ATTR) or (attrs.get("ome") or {}).get(ATTR) or dict(root.attrs).get(ATTR)
    except Exception:
        return None


def read_objects(path: str | os.PathLike, *, components: bool = False, class_name: str = "object") -> ObjectsFile:
    """Read an objects file (see the module docstring)."""
    from napari_medseg.core.compute import materialize
    from napari_medseg.io.reader import open_path, sniff

    p = Path(path)
    if not p.exists():
        raise UnreadableInputError(f"{p}: no such file or folder.")
    fmt = sniff(p)
    meta = None
    if p.suffix.lower() == ".png":
        from skimage.io import imread

        try:
            arr = np.asarray(imread(str(p)))
        except Exception as e:
            raise UnreadableInputError(f"{p}: not a readable PNG ({type(e).__name__}: {e}).") from e
        if arr.ndim != 2:
            raise UnreadableInputError(f"{p}: an objects PNG holds one grey (integer) channel, got shape {arr.shape}.")
        src = ImageSource(levels=[arr], axes="YX", pixel_size=(1.0, 1.0), unit="pixel", name=p.stem, path=str(p),
                          kind="labels")
    elif fmt in ("zarr", "tiff", "nifti"):
        sources = open_path(p, kind="auto" if fmt == "zarr" else "labels")
        src = next((s for s in sources if s.kind == "labels" and str(s.metadata.get("ngff_path", "")).rstrip("/")
                    .endswith(f"labels/{LABELS_NAME}")), None)
        src = src or next((s for s in sources if s.kind == "labels"), sources[0])
        if fmt == "zarr":
            meta = _zarr_meta(p, src)
        arr = np.asarray(materialize(src.levels[0]))
    else:
        raise UnreadableInputError(f"{p}: not an objects file napari-medseg reads (NGFF zarr, TIFF, PNG, NIfTI).")
    if src.channel_axis is not None or src.rgb:
        raise UnreadableInputError(f"{p}: holds a multichannel or RGB image, not an instance label image.")
    if arr.dtype.kind not in "iub":
        raise UnreadableInputError(f"{p}: holds {arr.dtype} values; an instance label image holds integer ids.")
    if arr.size and arr.min() < 0:
        raise UnreadableInputError(f"{p}: holds negative values; object ids are 0 (none) or positive.")
    if meta is None and sidecar(p).is_file():
        try:
            meta = json.loads(sidecar(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UnreadableInputError(f"{sidecar(p)}: not a readable JSON file ({e}).") from e
        meta = meta.get(ATTR, meta) if isinstance(meta, dict) else meta
    if components:
        labels = np.zeros(arr.shape, np.uint32)
        classes = [0]
        for v in np.unique(arr):
            if v <= 0:
                continue
            comp, k = ndi.label(arr == v)
            labels[comp > 0] = comp[comp > 0] + np.uint32(len(classes) - 1)
            classes += [int(v)] * k
        names = [str(n) for n in meta["class_names"]] if isinstance(meta, dict) and isinstance(
            meta.get("class_names"), list) else None
        cls = np.asarray(classes, np.int64)
    else:
        labels = arr.astype(np.uint32, copy=False)
        n = int(labels.max()) if labels.size else 0
        if meta is not None:
            cls, names = _classes_from(meta, n, str(p))
        else:
            cls, names = np.ones(n + 1, np.int64), ["background", class_name]
            cls[0] = 0
    top = int(cls.max()) if len(cls) else 0
    if names is None:
        names = ["background"] + [f"class {v}" for v in range(1, top + 1)]
    names = names + [f"class {v}" for v in range(len(names), top + 1)]
    return ObjectsFile(Objects(labels, cls.astype(np.int32)), names, src)


def _meta(objects: Objects, class_names: Sequence[str]) -> dict[str, Any]:
    return {ATTR: {"classes": [int(c) for c in objects.classes], "class_names": [str(n) for n in class_names]}}


def write_objects(path: str | os.PathLike, objects: Objects, *, class_names: Sequence[str],
                  colors: Sequence[str] | None = None, pixel_size: Sequence[float] | None = None,
                  unit: str | None = None, like: Any = None) -> Path:
    """Write ``objects`` to ``.zarr`` (NGFF labels ``objects``), ``.tif``/``.tiff`` or ``.nii``/``.nii.gz``
    (``like``: the volume whose geometry it takes), with the classes; returns the path."""
    p = Path(path)
    name = p.name.lower()
    if not p.parent.is_dir():
        raise MedsegError(f"{p.parent}: the folder does not exist; create it or choose another path.")
    meta = _meta(objects, class_names)
    if name.endswith(".zarr"):
        import zarr

        from napari_medseg.core.classes import hex_to_rgba
        from napari_medseg.io.writers import write_labels_ngff

        cols = None
        if colors is not None:  # each object drawn in its class colour
            cols = {int(i): hex_to_rgba(colors[c] if c < len(colors) else "#ffffff")
                    for i, c in enumerate(objects.classes) if i > 0}
        write_labels_ngff(p, objects.labels, pixel_size=pixel_size, unit=unit, name=LABELS_NAME, colors=cols)
        g = zarr.open_group(str(p / "labels" / LABELS_NAME), mode="a")
        g.attrs.update(meta)
    elif name.endswith((".tif", ".tiff")):
        from napari_medseg.io.writers import write_labels_tiff

        write_labels_tiff(p, objects.labels, pixel_size=pixel_size, unit=unit)
        sidecar(p).write_text(json.dumps(meta))
    elif name.endswith((".nii", ".nii.gz")):
        if like is None:
            raise MedsegError(f"{p}: a NIfTI output needs the volume it belongs to (--like SOURCE) for its geometry.")
        from napari_medseg.objects.volumes_out import write_nifti_labels

        write_nifti_labels(objects.labels, p, like=like)
        sidecar(p).write_text(json.dumps(meta))
    else:
        raise MedsegError(f"{p}: unknown objects format; name it .zarr, .tif or .nii.gz.")
    return p
