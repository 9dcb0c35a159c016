"""Every model file napari-medseg opens, behind two calls: ``describe_model_file`` and ``open_model_file``.

- our checkpoints (``.pt`` with their ``.json``; ``models.checkpoint``);
- bioimage.io packages (``bioimageio_import``);
- plain ONNX (``.onnx``) and TorchScript (``.ts``, ``.pt``) files. Their description comes from a sidecar,
  the file's name with ``.json`` (``model.onnx`` -> ``model.json``)::

      {"classes": ["background", "nucleus"],            # output channels in order, background first
       "normalization": {"mode": "range", "low": [0, 0, 0], "high": [255, 255, 255]},
                         # or {"steps": [bioimage.io preprocessing steps]}
       "spatial_dims": 2, "in_channels": 3,
       "output": "logits",                                # or "softmax", "sigmoid"
       "window": {"min": 64, "step": 16},                 # sizes min + k * step; {"fixed": 256} for one size
       "pixel_size": [0.5, 0.5], "unit": "micrometer", "name": "nuclei H&E", "description": "..."}

  ONNX and TorchScript files exported by napari-medseg (``models.export``) carry their checkpoint's description
  inside (ONNX metadata, TorchScript extra file) and need no sidecar. A file with neither is refused with an
  error that shows the sidecar to write.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.normalization import NormConfig
from napari_medseg.sharing.bioimageio_import import (
    ModelFileInfo,
    OpenedModel,
    describe_package,
    model_file_kind,
    open_package,
)

SIDECAR_EXAMPLE = ('{"classes": ["background", "nucleus"], "normalization": {"mode": "range", "low": [0], '
                   '"high": [255]}, "spatial_dims": 2, "in_channels": 1, "output": "logits", '
                   '"window": {"min": 64, "step": 16}}')


def _embedded_meta(path: Path, kind: str) -> dict[str, Any]:
    """The checkpoint description napari-medseg's own exports carry inside the file ({} if none)."""
    from napari_medseg.models.export import META_KEY

    try:
        if kind == "onnx":
            import onnx

            m = onnx.load(str(path), load_external_data=False)
            props = {p.key: p.value for p in m.metadata_props}
            return json.loads(props.get(META_KEY, "{}"))
        import torch

        extra = {f"{META_KEY}.json": ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra[f"{META_KEY}.json"] or "{}")
    except Exception:  # a file without our description (or unreadable: opening it says why)
        return {}


def read_sidecar(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The description of a plain ONNX / TorchScript file, normalised to the sidecar's keys."""
    p = Path(path)
    side = p.with_suffix(".json")
    if side.is_file():
        try:
            d = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MedsegError(f"{side} is not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise MedsegError(f"{side} must hold a JSON object like {SIDECAR_EXAMPLE}")
        if "model_config" not in d:  # else: the checkpoint's own description beside run/best.onnx
            return d
    meta = _embedded_meta(p, kind)
    if "model_config" in meta:
        cfg = ModelConfig.from_dict(meta["model_config"])
        from napari_medseg.models.registry import min_input_size, required_multiple

        size = (meta.get("export") or {}).get("size")
        dynamic = (meta.get("export") or {}).get("dynamic_spatial", True)
        window = ({"min": min_input_size(cfg), "step": required_multiple(cfg)} if dynamic or not size
                  else {"fixed": size})
        m = meta.get("meta") or {}
        return {"classes": meta.get("classes"), "normalization": meta.get("norm"), "spatial_dims": cfg.spatial_dims,
                "in_channels": cfg.in_channels, "output": "logits", "window": window,
                "pixel_size": m.get("pixel_size"), "unit": m.get("unit"), "architecture": cfg.name,
                "metrics": {k: m[k] for k in ("val_dice", "mean_dice", "mean_iou", "hd95") if isinstance(m.get(k), (int, float))}}
    raise MedsegError(f"{p} has no description: write {side.name} beside it, e.g. {SIDECAR_EXAMPLE}")


def _sidecar_parts(d: dict[str, Any], path: Path) -> tuple[ClassSchema, NormConfig | None, int, int, str, Any]:
    try:
        dims, n_in = int(d["spatial_dims"]), int(d["in_channels"])
    except (KeyError, TypeError, ValueError):
        raise MedsegError(f"the description of {path} needs integer 'spatial_dims' and 'in_channels', e.g. "
                          f"{SIDECAR_EXAMPLE}") from None
    if dims not in (2, 3) or n_in < 1:
        raise MedsegError(f"the description of {path}: spatial_dims must be 2 or 3 and in_channels >= 1")
    cl = d.get("classes")
    classes = (ClassSchema.from_dict(cl) if isinstance(cl, dict)
               else ClassSchema(names=tuple(str(c) for c in cl)) if isinstance(cl, list) else None)
    nd = d.get("normalization")
    norm = None
    if isinstance(nd, dict):
        norm = (NormConfig.from_steps(nd["steps"], channels=n_in) if "steps" in nd and "low" not in nd
                else NormConfig.from_dict(nd))
    elif nd is not None:
        raise MedsegError(f"the description of {path}: 'normalization' must be an object")
    output = str(d.get("output", "logits"))
    return classes, norm, dims, n_in, output, d.get("window")


def _rule(window: Any, dims: int, path: Path) -> tuple[tuple[int, int], ...] | None:
    if window is None:
        return None
    if not isinstance(window, dict):
        raise MedsegError(f"the description of {path}: 'window' must be an object like {{\"min\": 64, \"step\": 16}}")

    def per_axis(v: Any) -> list[int]:
        vals = list(v) if isinstance(v, (list, tuple)) else [v] * dims
        if len(vals) != dims or not all(isinstance(x, int) and x >= 0 for x in vals):
            raise MedsegError(f"the description of {path}: window sizes must be {dims} non-negative integers")
        return [int(x) for x in vals]

    if "fixed" in window:
        return tuple((s, 0) for s in per_axis(window["fixed"]))
    return tuple(zip(per_axis(window.get("min", 1)), per_axis(window.get("step", 1))))


def describe_model_file(path: str | os.PathLike) -> ModelFileInfo:
    """What a model file holds (any kind napari-medseg opens), read without running it."""
    p = Path(path)
    kind = model_file_kind(p)
    if kind is None:
        raise MedsegError(f"{p} is not a model file napari-medseg opens (a checkpoint .pt, a bioimage.io package "
                          ".zip / folder, or an .onnx / .ts file)" if p.exists() else f"{p} does not exist")
    if kind == "bioimageio":
        return describe_package(p)
    if kind == "checkpoint":
        from napari_medseg.models.checkpoint import load_checkpoint

        ck = load_checkpoint(p)
        m = ck.meta
        return ModelFileInfo(
            path=p, kind=kind, name=str(m.get("name") or p.stem), architecture=ck.model_config.name,
            in_channels=ck.model_config.in_channels, spatial_dims=ck.model_config.spatial_dims,
            classes=tuple(ck.classes.names[1:]),
            pixel_size=tuple(float(v) for v in m["pixel_size"]) if m.get("pixel_size") else None,
            unit=m.get("unit"), description=str(m.get("description", "")),
            metrics={k: float(m[k]) for k in ("val_dice", "mean_dice", "mean_iou", "hd95") if isinstance(m.get(k), (int, float))},
            trainable=True, weights_formats=("pytorch_state_dict",))
    d = read_sidecar(p, kind)
    classes, _, dims, n_in, _, _ = _sidecar_parts(d, p)
    px = d.get("pixel_size")
    return ModelFileInfo(
        path=p, kind=kind, name=str(d.get("name") or p.stem), architecture=str(d.get("architecture", kind)),
        in_channels=n_in, spatial_dims=dims, classes=tuple(classes.names[1:]) if classes else (),
        pixel_size=tuple(float(v) for v in px) if px else None, unit=d.get("unit"),
        description=str(d.get("description", "")),
        metrics={k: float(v) for k, v in (d.get("metrics") or {}).items() if isinstance(v, (int, float))},
        weights_formats=(kind,))


def open_model_file(path: str | os.PathLike, weights: str | None = None) -> OpenedModel:
    """A bioimage.io package or a plain ONNX / TorchScript file, ready to predict (checkpoints: ``load_model``)."""
    from napari_medseg.sharing.package_model import ForeignModel, OnnxModule, load_torchscript, tag

    p = Path(path)
    kind = model_file_kind(p)
    if kind == "bioimageio":
        return open_package(p, weights=weights)
    if kind not in ("onnx", "torchscript"):
        raise MedsegError(f"{p} is not a bioimage.io package, ONNX or TorchScript file")
    info = describe_model_file(p)
    d = read_sidecar(p, kind)
    classes, norm, dims, n_in, output, window = _sidecar_parts(d, p)
    data = p.read_bytes()
    inner = OnnxModule(data, str(p)) if kind == "onnx" else load_torchscript(data, str(p))
    rule = _rule(window, dims, p)
    module = tag(ForeignModel(inner, output=output), rule, dims, n_in)
    return OpenedModel(module=module, info=info, norm=norm, classes=classes, config=None,
                       model_hash=hashlib.sha256(data).hexdigest(), window_rule=rule)
