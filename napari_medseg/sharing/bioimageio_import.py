"""Open a model someone else wrote: bioimage.io packages, and ONNX / TorchScript files with a sidecar.

``describe_model_file(path)`` reads what a file holds without running anything; ``open_model_file(path)``
builds a module that the tiled predictor, the live preview and the Dask path run like one of ours
(``package_model.ForeignModel``), with the file's preprocessing as the normalisation
(``NormConfig(mode="steps")``), its classes and the window sizes it takes.

**bioimage.io packages** (a ``.zip``, a folder, or the ``rdf.yaml`` / ``*.bioimageio.yaml`` itself) are read
and validated with ``bioimageio.spec`` (format and the sha256 of every file; only files inside the package
are used, never a URL). Weights, in this order of preference: a PyTorch state dict of a napari-medseg
architecture (built from ``napari_medseg.models``, loaded tensors-only, and a starting point for
fine-tuning: ``package_checkpoint``), TorchScript, ONNX. A state dict of any other architecture would need
its Python code imported and run, so it is refused (with the package's other formats named). One image input
(batch, optional channel and 2 or 3 space axes ``z``/``y``/``x`` in any order); the first output, with a
channel axis at the input's resolution. The first output channel is the background.

**Plain files**: ``model.onnx`` or ``model.ts`` with ``model.json`` beside it (see ``read_sidecar``); ONNX and
TorchScript files exported by napari-medseg carry that description inside and need no sidecar.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.models.checkpoint import Checkpoint
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.normalization import NormConfig
from napari_medseg.sharing.package_files import is_foreign_model_file as is_foreign_model_file  # re-export
from napari_medseg.sharing.package_files import model_file_kind as model_file_kind  # re-export
from napari_medseg.sharing.package_files import (
    package_yaml_in_folder,
    package_yaml_in_zip,
    quiet_bioimageio,
    refuse_urls,
)

log = logging.getLogger(__name__)

#: the callable a napari-medseg package names for its architecture (``from napari_medseg.models import ...``)
ARCH_MODULE, ARCH_CALLABLE = "napari_medseg.models", "build_model_from_dict"
CONFIG_KEY = "napari_medseg"
WEIGHTS_ORDER = ("pytorch_state_dict", "torchscript", "onnx")
SPACE = ("z", "y", "x")


@dataclass(frozen=True)
class ModelFileInfo:
    """What a model file holds, read without running it."""

    path: Path
    kind: str  # "checkpoint" | "bioimageio" | "onnx" | "torchscript"
    name: str
    architecture: str
    in_channels: int | None
    spatial_dims: int | None
    classes: tuple[str, ...]  # without the background
    pixel_size: tuple[float, ...] | None = None
    unit: str | None = None
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: bool = False  # a napari-medseg architecture: a starting point for fine-tuning
    weights_formats: tuple[str, ...] = ()


@dataclass
class OpenedModel:
    """A model file ready to predict (see module doc); ``checkpoint`` is set when it can be fine-tuned."""

    module: nn.Module
    info: ModelFileInfo
    norm: NormConfig | None
    classes: ClassSchema | None
    config: ModelConfig | None
    model_hash: str
    window_rule: tuple[tuple[int, int], ...] | None = None  # per spatial axis (ZYX / YX): (min, step); step 0 = fixed
    checkpoint: Checkpoint | None = None


# -- bioimage.io packages ---------------------------------------------------------------------------------------

def _summary_errors(summary: Any, n: int = 3) -> str:
    msgs = []
    for d in getattr(summary, "details", []) or []:
        for e in getattr(d, "errors", []) or []:
            loc = ".".join(str(x) for x in getattr(e, "loc", ()) or ())
            msgs.append(f"{loc}: {e.msg}" if loc else str(e.msg))
    return "; ".join(msgs[:n]) or getattr(summary, "status", "invalid")


def load_package(path: str | os.PathLike) -> Any:
    """The validated ``bioimageio.spec`` model description of a local package (MedsegError if invalid)."""
    p = Path(path)
    if not p.exists():
        raise MedsegError(f"{p} does not exist")
    try:
        from bioimageio.spec import load_model_description
        from bioimageio.spec.model import v0_5
    except ImportError as e:  # pragma: no cover - a dependency
        raise MedsegError("reading bioimage.io packages needs bioimageio.spec: pip install bioimageio.core") from e
    src = p
    if p.is_dir():
        y = package_yaml_in_folder(p)
        if y is None:
            raise MedsegError(f"{p} holds no rdf.yaml or *.bioimageio.yaml: it is not a bioimage.io package")
        src = y
    elif zipfile.is_zipfile(p) and package_yaml_in_zip(p) is None:
        raise MedsegError(f"{p} is a zip without rdf.yaml: it is not a bioimage.io package")
    refuse_urls(p)
    quiet_bioimageio()
    try:
        # no I/O checks: with them bioimageio.spec contacts GitHub and cited URLs (offline machines would refuse
        # good packages); every file napari-medseg reads is checked against its sha256 in _read instead
        descr = load_model_description(src, perform_io_checks=False, format_version="latest")
    except Exception as e:  # YAML syntax, unreadable zip, a file that is not a model ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise MedsegError(f"{p} is not a valid bioimage.io model package ({type(e).__name__}: "
                          f"{' | '.join(lines[:4])[:500]})") from e
    if not isinstance(descr, v0_5.ModelDescr):
        summary = getattr(descr, "validation_summary", None)
        raise MedsegError(f"{p} is not a valid bioimage.io model package: {_summary_errors(summary)}")
    return descr


def _read(file_descr: Any, label: str) -> bytes:
    from bioimageio.spec.utils import get_reader

    src = str(getattr(file_descr, "source", ""))
    if src.startswith(("http://", "https://")):
        raise MedsegError(f"{label} points to {src}; napari-medseg uses only files inside the package (no downloads)")
    try:
        data = get_reader(file_descr.source).read()
    except Exception as e:
        raise MedsegError(f"{label} could not be read from the package ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from e
    want = getattr(file_descr, "sha256", None)
    if want is not None:
        import hashlib

        got = hashlib.sha256(data).hexdigest()
        if got != str(want):
            raise MedsegError(f"{label}: SHA256 mismatch (the package says {str(want)[:12]}..., the file is "
                              f"{got[:12]}...): the file was changed or damaged; nothing of it was used")
    return data


def _our_config(descr: Any) -> dict[str, Any]:
    cfg = getattr(descr, "config", None)
    extra = getattr(cfg, "model_extra", None) or {}
    value = extra.get(CONFIG_KEY) if isinstance(extra, dict) else None
    return value if isinstance(value, dict) else {}


def _is_our_arch(w: Any) -> bool:
    arch = getattr(w, "architecture", None)
    return (getattr(arch, "import_from", None) == ARCH_MODULE and str(getattr(arch, "callable", "")) == ARCH_CALLABLE)


def _formats(descr: Any) -> tuple[str, ...]:
    return tuple(f for f in ("pytorch_state_dict", "torchscript", "onnx", "keras_hdf5", "keras_v3",
                             "tensorflow_saved_model_bundle", "tensorflow_js")
                 if getattr(descr.weights, f, None) is not None)


def _choose_weights(descr: Any, path: Path, prefer: str | None) -> str:
    have = _formats(descr)
    usable = [f for f in WEIGHTS_ORDER if f in have and (f != "pytorch_state_dict" or _is_our_arch(descr.weights.pytorch_state_dict))]
    if prefer is not None:
        if prefer not in have:
            raise MedsegError(f"{path} has no {prefer} weights; it has {', '.join(have)}")
        if prefer not in usable:
            raise MedsegError(f"{path}: its {prefer} weights need the Python code of their architecture "
                              f"({_arch_name(descr.weights.pytorch_state_dict)}) to run; napari-medseg runs no code "
                              "from a package. Use its torchscript or onnx weights.")
        return prefer
    if not usable:
        why = (f" (its pytorch_state_dict needs the Python code of {_arch_name(descr.weights.pytorch_state_dict)}, "
               "which napari-medseg does not run)" if "pytorch_state_dict" in have else "")
        raise MedsegError(f"{path} has weights napari-medseg cannot run: {', '.join(have)}{why}; it runs "
                          "TorchScript, ONNX, and state dicts of its own architectures")
    return usable[0]


def _arch_name(w: Any) -> str:
    arch = getattr(w, "architecture", None)
    return f"{getattr(arch, 'import_from', getattr(arch, 'source', '?'))}.{getattr(arch, 'callable', '?')}"


def _axes(tensor: Any, role: str, path: Path) -> tuple[list[str], int | None, list[Any]]:
    """Axis kinds in the tensor's order ("batch", "channel", "z"/"y"/"x"), channel count, space axis objects."""
    kinds, n_ch, space = [], None, []
    for a in tensor.axes:
        t = getattr(a, "type", None)
        if t == "batch":
            kinds.append("batch")
        elif t == "channel":
            kinds.append("channel")
            n_ch = len(a.channel_names)
        elif t == "space":
            aid = str(a.id).lower()
            if aid not in SPACE:
                raise MedsegError(f"{path}: the {role} space axis {aid!r} is not one of z, y, x")
            kinds.append(aid)
            space.append(a)
        else:
            raise MedsegError(f"{path}: the {role} has a {t} axis ({a.id}); napari-medseg predicts images with "
                              "batch, channel and space (z, y, x) axes only")
    if "batch" not in kinds:
        raise MedsegError(f"{path}: the {role} has no batch axis; napari-medseg needs one to run windows in batches")
    n_space = sum(k in SPACE for k in kinds)
    if n_space not in (2, 3):
        raise MedsegError(f"{path}: the {role} has {n_space} space axes; napari-medseg runs 2D and 3D models")
    return kinds, n_ch, space


def _perm(kinds: list[str], has_channel: bool) -> tuple[int, ...] | None:
    """Permutation of our (N, [C,] *spatial) layout into ``kinds``' order (None when it is the same)."""
    ours = ["batch"] + (["channel"] if has_channel else []) + [k for k in SPACE if k in kinds]
    perm = tuple(ours.index(k) for k in kinds)
    return None if perm == tuple(range(len(kinds))) else perm


def _window_rule(space: list[Any], path: Path) -> tuple[tuple[int, int], ...]:
    by_id = {str(a.id).lower(): a for a in space}
    rule = []
    for k in SPACE:
        if k not in by_id:
            continue
        size = by_id[k].size
        if isinstance(size, int):
            rule.append((int(size), 0))
        elif hasattr(size, "min") and hasattr(size, "step"):
            rule.append((int(size.min), int(size.step)))
        else:
            raise MedsegError(f"{path}: the input axis {k} takes its size from another tensor; napari-medseg "
                              "runs models with one input of fixed or parameterized size")
    return tuple(rule)


def _output_kind(out: Any, path: Path) -> str:
    """What the weights give, from the output's postprocessing (which runs after them): ``softmax`` -> logits;
    ``sigmoid`` -> a sigmoid's logits; none -> the scores are taken as they are (their argmax is the class)."""
    kind = "logits"
    for p in getattr(out, "postprocessing", []) or []:
        pid = str(getattr(p, "id", ""))
        if pid == "softmax":
            kind = "logits"
        elif pid == "sigmoid":
            kind = "sigmoid_logits"
        elif pid in ("ensure_dtype", "binarize"):  # binarize after probabilities: the argmax is unchanged
            continue
        else:
            raise MedsegError(f"{path}: the output's postprocessing {pid!r} is not supported (napari-medseg takes "
                              "outputs followed by softmax or sigmoid, or plain scores)")
    return kind


def _steps(tensor: Any) -> list[dict[str, Any]]:
    steps = []
    for p in getattr(tensor, "preprocessing", []) or []:
        d = p.model_dump(mode="json", exclude_none=True)
        if d.get("id") == "ensure_dtype" and str(d.get("kwargs", {}).get("dtype", "")).startswith("float"):
            continue
        kw = d.get("kwargs", {})
        if d.get("id") == "clip" and ("min_percentile" in kw or "max_percentile" in kw):
            raise MedsegError("percentile clipping as preprocessing is not supported; use scale_range")
        steps.append(d)
    return steps


def _classes_from(descr: Any, n_out: int, out_kind: str) -> ClassSchema:
    ours = _our_config(descr).get("classes")
    if isinstance(ours, dict):
        return ClassSchema.from_dict(ours)
    if out_kind == "sigmoid_logits" and n_out == 1:
        ch = next((a for a in descr.outputs[0].axes if getattr(a, "type", None) == "channel"), None)
        name = str(ch.channel_names[0]) if ch is not None else "foreground"
        return ClassSchema(names=("background", name if name.lower() != "background" else "foreground"))
    ch = next((a for a in descr.outputs[0].axes if getattr(a, "type", None) == "channel"), None)
    names = [str(c) for c in ch.channel_names] if ch is not None else []
    if len(names) != n_out or len(set(names)) != len(names):
        return ClassSchema.default(max(2, n_out))
    return ClassSchema(names=("background", *names[1:]))


def _space_info(space: list[Any]) -> tuple[tuple[float, ...] | None, str | None]:
    by_id = {str(a.id).lower(): a for a in space}
    scales = tuple(float(getattr(by_id[k], "scale", 1.0) or 1.0) for k in SPACE if k in by_id)
    units = {str(getattr(by_id[k], "unit", None)) for k in SPACE if k in by_id and getattr(by_id[k], "unit", None)}
    unit = units.pop() if len(units) == 1 else None
    return (scales if unit else None), unit


def _check_outputs(descr: Any, in_kinds: list[str], in_space: list[Any], path: Path) -> tuple[list[str], int]:
    if len(descr.inputs) != 1:
        raise MedsegError(f"{path}: the model has {len(descr.inputs)} inputs; napari-medseg runs one image input")
    out = descr.outputs[0]
    if len(descr.outputs) > 1:
        log.warning("%s: %d outputs; napari-medseg uses the first, %s", path, len(descr.outputs), out.id)
    kinds, n_out, space = _axes(out, "output", path)
    if "channel" not in kinds:
        raise MedsegError(f"{path}: the output {out.id} has no channel axis; napari-medseg needs class scores")
    if sorted(k for k in kinds if k in SPACE) != sorted(k for k in in_kinds if k in SPACE):
        raise MedsegError(f"{path}: the output's space axes differ from the input's")
    in_by_id = {str(a.id).lower(): a for a in in_space}
    for a in space:
        size, aid = a.size, str(a.id).lower()
        ref_ok = (getattr(size, "tensor_id", None) == descr.inputs[0].id and str(getattr(size, "axis_id", "")).lower()
                  == aid and not getattr(size, "offset", 0))
        fixed_ok = isinstance(size, int) and isinstance(in_by_id[aid].size, int) and size == in_by_id[aid].size
        if not (ref_ok or fixed_ok) or float(a.scale) != float(in_by_id[aid].scale):
            raise MedsegError(f"{path}: the output axis {aid} is not the input's size and resolution; napari-medseg "
                              "predicts models whose output matches the input pixel for pixel")
    return kinds, int(n_out or 1)


def _describe(descr: Any, path: Path) -> ModelFileInfo:
    kinds, n_in, space = _axes(descr.inputs[0], "input", path)
    ours = _our_config(descr)
    arch = (ours.get("model_config") or {}).get("name") or (
        "napari-medseg" if _is_our_arch(getattr(descr.weights, "pytorch_state_dict", None)) else "foreign")
    metrics = {k: float(v) for k, v in (ours.get("metrics") or {}).items() if isinstance(v, (int, float))}
    out_kind = _output_kind(descr.outputs[0], path)
    _, n_out = _check_outputs(descr, kinds, space, path)
    classes = _classes_from(descr, n_out, out_kind)
    pixel, unit = _space_info(space)
    w = getattr(descr.weights, "pytorch_state_dict", None)
    return ModelFileInfo(path=path, kind="bioimageio", name=str(descr.name), architecture=str(arch),
                         in_channels=n_in or 1, spatial_dims=len(space), classes=tuple(classes.names[1:]),
                         pixel_size=pixel, unit=unit, description=str(descr.description or ""), metrics=metrics,
                         trainable=w is not None and _is_our_arch(w), weights_formats=_formats(descr))


def describe_package(path: str | os.PathLike) -> ModelFileInfo:
    p = Path(path)
    return _describe(load_package(p), p)


def open_package(path: str | os.PathLike, weights: str | None = None) -> OpenedModel:
    """A bioimage.io package ready to predict (see module doc)."""
    from napari_medseg.sharing.package_model import ForeignModel, OnnxModule, load_torchscript, tag

    p = Path(path)
    descr = load_package(p)
    info = _describe(descr, p)
    fmt = _choose_weights(descr, p, weights)
    inp = descr.inputs[0]
    in_kinds, n_in, space = _axes(inp, "input", p)
    out_kinds, n_out = _check_outputs(descr, in_kinds, space, p)
    out_kind = _output_kind(descr.outputs[0], p)
    if out_kind == "sigmoid_logits" and n_out != 1:
        raise MedsegError(f"{p}: the output has {n_out} sigmoid channels (independent labels); napari-medseg "
                          "predicts one class per pixel and takes one sigmoid channel at most")
    classes = _classes_from(descr, n_out, out_kind)
    norm = NormConfig.from_steps(_steps(inp), channels=n_in or 1)
    wd = getattr(descr.weights, fmt)
    data = _read(wd, f"the {fmt} weights of {p}")
    digest = hashlib.sha256(data).hexdigest()
    ckpt, config = None, None
    if fmt == "pytorch_state_dict":
        ckpt = _our_checkpoint(descr, data, classes, norm, p)
        from napari_medseg.models.checkpoint import load_state_dict_report
        from napari_medseg.models.registry import build_model

        config = ckpt.model_config
        from napari_medseg.models.checkpoint import _check_config_fits

        _check_config_fits(ckpt, p)  # on the meta device: a package claiming a huge model allocates nothing
        inner = build_model(config)
        load_state_dict_report(inner, ckpt.state_dict, strict=True)
        inner.eval()
    elif fmt == "torchscript":
        inner = load_torchscript(data, f"the torchscript weights of {p}")
    else:
        inner = OnnxModule(data, f"the onnx weights of {p}")
    has_ch = "channel" in in_kinds
    module = ForeignModel(inner, output=out_kind, in_perm=_perm(in_kinds, has_ch),
                          out_perm=_inverse(_perm(out_kinds, True)), has_channel=has_ch)
    if config is not None and out_kind == "logits" and module.in_perm is None and module.out_perm is None:
        module = inner  # ours, as exported: the plain model (its sizes come from its config)
    rule = None if config is not None else _window_rule(space, p)
    if config is None:
        tag(module, rule, info.spatial_dims, info.in_channels)
    return OpenedModel(module=module, info=info, norm=norm, classes=classes, config=config, model_hash=digest,
                       window_rule=rule, checkpoint=ckpt)


def _inverse(perm: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if perm is None:
        return None
    inv = [0] * len(perm)
    for i, q in enumerate(perm):
        inv[q] = i
    return tuple(inv)


def _our_checkpoint(descr: Any, data: bytes, classes: ClassSchema, norm: NormConfig, path: Path) -> Checkpoint:
    from napari_medseg.sharing.package_model import load_weights

    w = descr.weights.pytorch_state_dict
    try:
        cfg = ModelConfig.from_dict(dict(w.architecture.kwargs))
    except MedsegError as e:
        raise MedsegError(f"{path}: its architecture arguments do not describe a napari-medseg model ({e})") from e
    state = load_weights(data, f"the pytorch_state_dict weights of {path}")
    ours = _our_config(descr)
    meta = dict(ours.get("meta") or {}) | {"parent": str(path), "imported_from": "bioimageio", "name": str(descr.name)}
    return Checkpoint(model_config=cfg, state_dict=state, classes=classes, norm=norm, meta=meta)


def package_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A package of a napari-medseg architecture as a checkpoint (to fine-tune it; weights checked to fit)."""
    opened = open_package(path)  # prefers our state dict when the package has one: then it is fine-tunable
    if opened.checkpoint is None:
        raise MedsegError(f"{path} holds no napari-medseg architecture (its weights are another network's); it can "
                          "predict, but training cannot start from it")
    return opened.checkpoint
