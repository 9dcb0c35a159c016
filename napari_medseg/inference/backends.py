"""Prediction backends: the same tiled predictor, the model run by PyTorch or by ONNX Runtime (float32 or INT8).

``backend_model(checkpoint, backend, source=...)`` turns a napari-medseg checkpoint into the file the backend
runs, once, and keeps it in the cache folder (keyed by the checkpoint's bytes, the window and, for INT8, the
image it was calibrated on); every other part of prediction (normalisation, blending, tissue skipping,
resumption, NGFF output, the Dask workers) is unchanged, because ONNX files open like any model
(``sharing.open_model_file``).

- ``torch`` (default): the checkpoint in eager PyTorch.
- ``onnxruntime``: the checkpoint exported to ONNX (opset 17, checked against PyTorch when written) and run
  by onnxruntime on the CPU.
- ``onnxruntime-int8``: that ONNX graph quantised to INT8 (``models.quantize``), calibrated on
  ``n_calibration`` windows drawn from the tissue of the image being predicted (normalised like every
  window), so the ranges fit the user's own stain and scanner.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.files import file_sha256
from napari_medseg.core.source import ImageSource, read_box

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
CALIBRATION_WINDOWS = 32
CALIBRATION_BATCH = 4


def deploy_folder() -> Path:
    """Where converted models are kept (the cache folder: they can be made again)."""
    from napari_medseg.core.user_folders import cache_folders

    return cache_folders()[0] / "deploy"


def _key(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise MedsegError(f"unknown prediction backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def backend_model(model: Any, backend: str = "torch", *, source: ImageSource | None = None, level: int = 0,
                  window: tuple[int, ...] | None = None, n_calibration: int = CALIBRATION_WINDOWS, seed: int = 0,
                  folder: str | os.PathLike | None = None, on_progress: Callable[[str], None] | None = None) -> Any:
    """The model ``backend`` runs: ``model`` itself for ``torch``; for the ONNX Runtime backends the path of
    the converted ONNX file (made once, then reused). ``source``/``level``/``window``: the image and the
    windows of the prediction (INT8 calibrates on them)."""
    check_backend(backend)
    if backend == "torch":
        return model
    say = on_progress or (lambda s: log.info("%s", s))
    if not isinstance(model, (str, Path)):
        raise MedsegError(f"the {backend} backend converts a napari-medseg checkpoint file; got a "
                          f"{type(model).__name__} (save it with save_checkpoint first)")
    path = Path(model)
    from napari_medseg.sharing.package_files import model_file_kind

    kind = model_file_kind(path)
    if kind == "onnx" and backend == "onnxruntime":
        return path  # already ONNX
    if kind != "checkpoint":
        raise MedsegError(f"the {backend} backend converts napari-medseg checkpoints (.pt); {path} is a "
                          f"{kind or 'file of another kind'} (ONNX files and packages run as they are: backend torch)")
    from napari_medseg.models.checkpoint import load_checkpoint
    from napari_medseg.models.export import export_checkpoint

    ck = load_checkpoint(path)
    dims = ck.model_config.spatial_dims
    default = (96, 96, 96) if dims == 3 else (512, 512)  # the predictor's default windows
    if window and len(window) == 1:
        window = tuple(window) * dims
    size = tuple(int(w) for w in (window if window and len(window) >= dims else default))[-dims:]
    digest = file_sha256(path)
    base = Path(folder) if folder is not None else deploy_folder()
    fp32 = base / f"{path.stem}-{_key(digest, size, 'fp32')}.onnx"
    if not fp32.is_file():
        say(f"exporting {path.name} to ONNX (once; kept in {base})")
        tmp = fp32.with_name(f".{fp32.name}.{os.getpid()}.tmp.onnx")
        try:  # written whole, then renamed: a killed run or a second process never leaves half a file
            export_checkpoint(path, tmp, format="onnx", size=size)
            os.replace(tmp, fp32)
        finally:
            tmp.unlink(missing_ok=True)
    if backend == "onnxruntime":
        return fp32
    if source is None:
        raise MedsegError("INT8 needs the image to calibrate on (source=...)")
    from napari_medseg.core.source import strided_sample

    # the image itself, not only its name: two in-memory layers both called "Image" calibrate apart
    pixels = hashlib.sha256(strided_sample(source, max_elems=1 << 14).tobytes()).hexdigest()[:16]
    src_id = (source.path or source.name, source.shape, int(level), pixels)
    int8 = base / f"{path.stem}-{_key(digest, size, src_id, n_calibration, seed, 'int8')}.int8.onnx"
    if not int8.is_file():
        from napari_medseg.models.quantize import quantize_onnx

        say(f"quantising to INT8, calibrated on {n_calibration} windows of {source.name}")
        tmp = int8.with_name(f".{int8.name}.{os.getpid()}.tmp.onnx")
        try:
            quantize_onnx(fp32, tmp, calibration_batches(source, level, ck.norm, size, n_calibration, seed,
                                                         in_channels=ck.model_config.in_channels))
            os.replace(tmp, int8)
        finally:
            tmp.unlink(missing_ok=True)
    return int8


def calibration_windows(source: ImageSource, level: int, size: tuple[int, ...], n: int, seed: int = 0
                        ) -> list[tuple[tuple[int, int], ...]]:
    """Up to ``n`` window boxes (spatial, of ``level``) that hold tissue (all of the image when it has no
    tissue mask or none is found), drawn at random with ``seed``."""
    from napari_medseg.core.tissue import compute_tissue_mask

    shape = source.level_shape(level)
    md = len(size)
    lead = len(shape) - md  # a 2D model over a volume: windows of one slice
    rng = np.random.default_rng(seed)
    mask = None
    if source.spatial_dims == 2:
        try:
            mask = compute_tissue_mask(source)
        except Exception as e:  # a nicety: calibrate on the whole image instead
            log.debug("no tissue mask for calibration: %s", e)
    ds = source.level_downsample(level)
    boxes: list[tuple[tuple[int, int], ...]] = []
    for _ in range(n * 20):
        if len(boxes) >= n:
            break
        box = []
        for i, s in enumerate(shape):
            w = 1 if i < lead else min(int(size[i - lead]), s)
            a = int(rng.integers(0, max(1, s - w + 1)))
            box.append((a, a + w))
        if mask is not None and mask.fraction > 0 and not mask.any_tissue(box, ds):
            continue
        boxes.append(tuple(box))
    return boxes


def calibration_batches(source: ImageSource, level: int, norm: Any, size: tuple[int, ...], n: int, seed: int = 0,
                        *, in_channels: int | None = None, batch: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
    """Normalised windows ``(batch, C, *size)`` float32 of ``source`` (see ``calibration_windows``), padded
    with zeros where the image is smaller than the window (as the predictor pads)."""
    import torch

    if in_channels is not None and source.n_channels != in_channels:
        raise MedsegError(f"the model takes {in_channels} channel(s), the image has {source.n_channels}")
    from napari_medseg.inference.modelrun import norm_for

    norm = norm_for(norm, source)
    boxes = calibration_windows(source, level, size, n, seed)
    md = len(size)
    for i in range(0, len(boxes), batch):
        parts = []
        for box in boxes[i:i + batch]:
            a = read_box(source, level, box, pad=0)  # (C, *spatial)
            a = a.reshape(a.shape[0], *a.shape[-md:])
            pad = [(0, 0)] + [(0, int(s) - d) for s, d in zip(size, a.shape[1:])]
            x = norm.apply(torch.from_numpy(np.ascontiguousarray(a))[None])[0].numpy()
            parts.append(np.pad(x, pad))
        yield np.stack(parts).astype(np.float32)
