"""Export a model to TorchScript or ONNX, each checked against PyTorch on random input.

Every export runs the written file on fresh random input of the example's shape (NCHW / NCDHW) and, where
the graph is exported with dynamic spatial axes, on a second, larger shape too, and compares with the
PyTorch model's output: the largest absolute difference is returned in an :class:`ExportResult`, and an
:class:`ExportError` is raised if it exceeds ``atol + rtol * max|PyTorch output|`` (the file is then removed,
so nothing unchecked is left behind).

Models whose forward depends on the input size in Python (the Swin models: window clamping and padding)
cannot be exported with dynamic spatial axes; they carry ``dynamic_spatial_export = False`` (see
``swin_family``), and their graphs are fixed to the example's spatial size (the batch axis stays dynamic in
ONNX). Export them at the tile size inference will use.

TorchScript uses ``torch.jit.trace`` (MONAI's Swin blocks are not scriptable), ONNX the TorchScript-based
exporter (``dynamo=False``: it writes opset 17 directly and needs no ``onnxscript``) unless ``dynamo=True``.
Checking ONNX needs ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)

FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}
_ALIASES = {"ts": "torchscript", "jit": "torchscript", "torchscript": "torchscript", "onnx": "onnx"}
META_KEY = "napari_medseg"


class ExportError(MedsegError):
    """An export failed or its output does not match PyTorch's."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how well it matched PyTorch. ``os.fspath(result)`` is the file's path."""

    path: Path
    format: str
    max_abs_diff: float
    checked_shapes: tuple[tuple[int, ...], ...]
    dynamic_spatial: bool
    meta: dict = field(default_factory=dict)

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def supports_dynamic_spatial(model: nn.Module) -> bool:
    """Whether ``model`` may be exported with free spatial sizes (False for the Swin models)."""
    return bool(getattr(model, "dynamic_spatial_export", True))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Tracer and deprecation warnings from torch.jit / torch.onnx go to the log, not the user's console."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.debug("export warning: %s", w.message)


def _check_shapes(example: torch.Tensor, dynamic: bool) -> list[tuple[int, ...]]:
    """The example's shape and, for dynamic graphs, one with one more batch item and the last spatial axis
    doubled (another size, not square: catches baked-in sizes and swapped axes, and stays cheap in 3D)."""
    shape = tuple(int(s) for s in example.shape)
    shapes = [shape]
    if dynamic:
        shapes.append((shape[0] + 1, *shape[1:-1], shape[-1] * 2))
    return shapes


def _random_like(example: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=example.device, dtype=example.dtype)


def _compare(name: str, run, model: nn.Module, example: torch.Tensor, shapes: list[tuple[int, ...]],
             atol: float, rtol: float, path: Path) -> float:
    """Largest |export - PyTorch| over random inputs of ``shapes``; raises if above ``atol + rtol * max|PyTorch|``."""
    worst = 0.0
    for i, shape in enumerate(shapes):
        x = _random_like(example, shape, seed=1234 + i)
        with torch.no_grad():
            ref = model(x).detach().float().cpu().numpy()
        try:
            out = np.asarray(run(x), dtype=np.float32)
        except Exception as e:
            path.unlink(missing_ok=True)
            raise ExportError(f"the {name} export of shape {shape} failed to run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); export at the size you will predict with") from e
        if out.shape != ref.shape:
            path.unlink(missing_ok=True)
            raise ExportError(f"the {name} export gave shape {out.shape} for input {shape}, PyTorch {ref.shape}")
        diff = float(np.max(np.abs(out - ref))) if ref.size else 0.0
        tol = atol + rtol * (float(np.max(np.abs(ref))) if ref.size else 0.0)
        log.info("%s check %s: max |diff| = %.3g (tolerance %.3g)", name, shape, diff, tol)
        worst = max(worst, diff)
        if not diff <= tol:
            path.unlink(missing_ok=True)
            raise ExportError(f"the {name} export differs from PyTorch by {diff:.3g} (> {tol:.3g}) on random input "
                              f"of shape {shape}; the file was removed")
    return worst


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, atol: float = 1e-4,
                       rtol: float = 1e-4, meta: dict | None = None) -> ExportResult:
    """Trace ``model`` on ``example`` (N, C, *spatial), save it to ``path`` and check it on random input.

    ``meta`` (e.g. the checkpoint description) is stored as the extra file ``napari_medseg.json``
    (``torch.jit.load(path, _extra_files={"napari_medseg.json": ""})`` reads it back).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = supports_dynamic_spatial(model)
    with _eval_mode(model), torch.no_grad():
        try:
            with _quiet():
                traced = torch.jit.trace(model, example, check_trace=False)
                extra = {f"{META_KEY}.json": json.dumps(meta or {})}
                torch.jit.save(traced, str(path), _extra_files=extra)
                loaded = torch.jit.load(str(path), map_location=example.device)
        except MedsegError:
            raise
        except Exception as e:
            path.unlink(missing_ok=True)
            raise ExportError(f"TorchScript export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
        shapes = _check_shapes(example, dynamic)
        diff = _compare("TorchScript", lambda x: loaded(x).float().cpu().numpy(), model, example, shapes, atol, rtol,
                        path)
    return ExportResult(path, "torchscript", diff, tuple(shapes), dynamic, dict(meta or {}))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, opset: int = 17,
                dynamic_spatial: bool = True, atol: float = 1e-4, rtol: float = 1e-4, dynamo: bool = False,
                verify: bool = True, meta: dict | None = None) -> ExportResult:
    """Export ``model`` to ONNX (input ``image`` N,C,*spatial -> output ``logits``) and check it.

    The batch axis is always dynamic; spatial axes are dynamic if ``dynamic_spatial`` and the model allows
    it (not the Swin models: their graph is fixed to the example's size). With ``verify`` (the default) the
    file is run with onnxruntime, which must be installed (``pip install onnxruntime``).
    ``meta`` is stored as the model's metadata property ``napari_medseg`` (JSON).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ort = None
    if verify:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("checking an ONNX export needs onnxruntime: 'pip install onnxruntime' "
                              "(or pass verify=False to skip the check)") from e
    dynamic = dynamic_spatial and supports_dynamic_spatial(model)
    if dynamic_spatial and not dynamic:
        log.info("%s depends on the input size: ONNX graph fixed to spatial size %s",
                 type(model).__name__, tuple(example.shape[2:]))
    nd = example.ndim - 2
    axes = {0: "batch"} | ({2 + i: f"size{i}" for i in range(nd)} if dynamic else {})
    with _eval_mode(model), torch.no_grad():
        try:
            with _quiet():
                if dynamo:
                    ex = example if example.shape[0] > 1 else example.expand(2, *example.shape[1:]).contiguous()
                    auto = torch.export.Dim.AUTO
                    torch.onnx.export(model, (ex,), str(path), opset_version=opset, dynamo=True,
                                      input_names=["image"], output_names=["logits"],
                                      dynamic_shapes=({k: auto for k in axes},), external_data=False)
                else:
                    torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False,
                                      input_names=["image"], output_names=["logits"],
                                      dynamic_axes={"image": axes, "logits": axes})
        except Exception as e:
            path.unlink(missing_ok=True)
            raise ExportError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
        _set_onnx_meta(path, meta)
        shapes = _check_shapes(example, dynamic)
        if ort is None:
            log.warning("ONNX export %s written without a numerical check (verify=False)", path)
            return ExportResult(path, "onnx", float("nan"), (), dynamic, dict(meta or {}))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: torch.Tensor) -> np.ndarray:
            return sess.run(None, {name: x.detach().float().cpu().numpy()})[0]

        diff = _compare("ONNX", run, model, example, shapes, atol, rtol, path)
    return ExportResult(path, "onnx", diff, tuple(shapes), dynamic, dict(meta or {}))


def _set_onnx_meta(path: Path, meta: dict | None) -> None:
    if not meta:
        return
    try:
        import onnx
    except ImportError:
        log.warning("onnx is not installed: the model description was not stored in %s", path)
        return
    m = onnx.load(str(path))
    onnx.helper.set_model_props(m, {META_KEY: json.dumps(meta)})
    onnx.save(m, str(path))


def _default_size(cfg, size: int | tuple[int, ...] | None) -> tuple[int, ...]:
    from napari_medseg.models.registry import check_input_size, valid_size

    if size is None:
        return tuple(valid_size(cfg, 256 if cfg.spatial_dims == 2 else 64) for _ in range(cfg.spatial_dims))
    sizes = (int(size),) * cfg.spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sizes) != cfg.spatial_dims:
        raise MedsegError(f"export size {sizes} has {len(sizes)} axes, the model is {cfg.spatial_dims}D")
    check_input_size(cfg, sizes)
    return sizes


def export_checkpoint(ckpt_path: str | os.PathLike, out_path: str | os.PathLike | None = None,
                      format: str = "onnx", size: int | tuple[int, ...] | None = None, teacher: bool | None = None,
                      opset: int = 17, atol: float = 1e-4, rtol: float = 1e-4, verify: bool = True) -> ExportResult:
    """Build the model a checkpoint describes, load its weights and export it, checked.

    ``format`` is ``"onnx"`` or ``"torchscript"``; ``size`` the spatial size of the example (one int for
    every axis, or one per axis: YX / ZYX; default 256 in 2D, 64 in 3D, rounded up to a valid size). For the
    Swin models this is the only size the export takes. ``out_path`` defaults to the checkpoint's path with
    ``.onnx`` / ``.ts``. The checkpoint's description (model config, classes, normalisation) travels in the
    exported file, so inference elsewhere can normalise and name classes the same way.
    """
    from napari_medseg.models.checkpoint import load_model

    fmt = _ALIASES.get(str(format).lower())
    if fmt is None:
        raise MedsegError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    from napari_medseg.models.checkpoint import predicts_with_average

    model, ckpt = load_model(ckpt_path, device="cpu", teacher=teacher)  # None: what the run predicts with
    teacher = predicts_with_average(ckpt) if teacher is None else teacher
    sizes = _default_size(ckpt.model_config, size)
    out = Path(out_path) if out_path is not None else Path(ckpt_path).with_suffix(FORMATS[fmt])
    example = torch.randn(1, ckpt.model_config.in_channels, *sizes)
    meta = ckpt.describe() | {"export": {"size": list(sizes), "dynamic_spatial": supports_dynamic_spatial(model),
                                         "teacher": bool(teacher and ckpt.teacher_state_dict is not None)}}
    if fmt == "torchscript":
        res = export_torchscript(model, example, out, atol=atol, rtol=rtol, meta=meta)
    else:
        res = export_onnx(model, example, out, opset=opset, atol=atol, rtol=rtol, verify=verify, meta=meta)
    log.info("exported %s to %s (max |diff| %.3g)", ckpt_path, res.path, res.max_abs_diff)
    return res
