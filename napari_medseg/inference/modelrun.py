"""Loading, checking and running the model for tiled prediction.

``resolve_model`` accepts an ``nn.Module`` or a checkpoint path (whose ``model_config``, ``norm`` and
``classes`` then come with it). ``check_model_input`` refuses, before any output is written, a model whose
input channels differ from the image's and a window the model cannot take. ``WindowRunner`` maps a batch
``(N, C, *window)`` of normalised windows to class probabilities ``(N, C_out, *window)`` (float32 softmax):
fixed batch shapes (the last batch is padded, so every window is computed the same way in any run),
inference mode, and on CUDA autocast and channels_last; optional flip test-time augmentation.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.normalization import NormConfig

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    module: nn.Module
    config: ModelConfig | None
    norm: NormConfig | None
    classes: ClassSchema | None
    model_hash: str
    in_channels: int | None
    spatial_dims: int | None
    checkpoint: str | None = None
    was_training: bool = False  # the module's mode when handed in (restored after a run)
    #: window sizes a model from another tool takes, per spatial axis (min, step); step 0: exactly min
    window_rule: tuple[tuple[int, int], ...] | None = None
    #: the median diameter (pixels at the training level) of the objects it was trained on, from the checkpoint
    #: (``training.object_sizes``); what ``zoom="auto"`` brings the image's objects to
    object_diameter: float | None = None


def state_hash(module: nn.Module) -> str:
    """sha256 of the weights (names, shapes and bytes): identifies the model of a run."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _first_weight(module: nn.Module) -> torch.Tensor | None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            return m.weight
    return None


def resolve_model(model: nn.Module | str | Path, *, norm: NormConfig | None = None,
                  classes: ClassSchema | None = None, teacher: bool | None = None, hash_weights: bool = True) -> LoadedModel:
    """The model, its config, normalisation and classes (the checkpoint's, unless given explicitly).

    ``model`` may also be a bioimage.io package or an ONNX / TorchScript file (``sharing.open_model_file``):
    its preprocessing, classes and window sizes come with it, and its hash is the weights file's."""
    ckpt_path, diameter = None, None
    config = getattr(model, "medseg_config", None)
    from napari_medseg.sharing.package_files import is_foreign_model_file

    if isinstance(model, (str, Path)) and is_foreign_model_file(model):
        from napari_medseg.sharing.model_files import open_model_file

        opened = open_model_file(model)
        module = opened.module
        was_training = bool(module.training)
        return LoadedModel(module.eval(), opened.config, norm or opened.norm, classes or opened.classes,
                           opened.model_hash, opened.info.in_channels, opened.info.spatial_dims,
                           str(Path(model).resolve()), was_training,
                           None if opened.config is not None else opened.window_rule)
    if isinstance(model, (str, Path)):
        from napari_medseg.models.checkpoint import load_model

        if Path(model).is_dir():
            raise MedsegError(f"{model} is a folder but not a bioimage.io package (it holds no rdf.yaml); give a "
                              "checkpoint (.pt), a package (.zip or folder), or an .onnx / .ts file")

        ckpt_path = str(Path(model).resolve())
        module, ckpt = load_model(model, device="cpu", teacher=teacher)
        config = ckpt.model_config
        norm = norm or ckpt.norm
        classes = classes or ckpt.classes
        diameter = (ckpt.meta or {}).get("object_diameter_px")
    elif isinstance(model, nn.Module):
        module = model
    else:
        raise MedsegError(f"model must be an nn.Module or a checkpoint path, got {type(model).__name__}")
    in_ch, dims = None, None
    if isinstance(config, ModelConfig):
        in_ch, dims = config.in_channels, config.spatial_dims
    else:
        w = _first_weight(module)
        if w is not None and w.ndim in (4, 5):
            in_ch, dims = int(w.shape[1]), w.ndim - 2
    rule = getattr(module, "medseg_window_rule", None)
    if rule is not None and getattr(module, "medseg_spatial_dims", None):
        in_ch, dims = getattr(module, "medseg_in_channels", in_ch), module.medseg_spatial_dims
    was_training = bool(module.training)
    return LoadedModel(module.eval(), config if isinstance(config, ModelConfig) else None, norm, classes,
                       state_hash(module) if hash_weights else "", in_ch, dims, ckpt_path, was_training, rule,
                       None if diameter is None else float(diameter))


def norm_for(norm: NormConfig, source: ImageSource) -> NormConfig:
    """``norm`` with its data-dependent steps (a bioimage.io model's percentiles or mean/std) computed from a
    subsample of the whole ``source`` (the same for every tile, so tiles agree)."""
    if not norm.needs_data:
        return norm
    from napari_medseg.core.source import strided_sample

    return norm.resolved(strided_sample(source))


def fit_size(rule: tuple[int, int], size: int) -> int:
    """The size a (min, step) rule allows nearest to ``size`` (at least min; exactly min when step is 0)."""
    lo, step = int(rule[0]), int(rule[1])
    if step <= 0 or size <= lo:
        return lo
    return lo + round((int(size) - lo) / step) * step


def fit_window(loaded: LoadedModel, window: tuple[int, ...]) -> tuple[int, ...]:
    """``window`` (trailing axes = the model's) moved to the nearest sizes the model's window rule allows."""
    rule = loaded.window_rule
    if not rule:
        return tuple(window)
    k = len(rule)
    return tuple(window[:-k]) + tuple(fit_size(r, w) for r, w in zip(rule, window[-k:]))


def default_norm(source: ImageSource) -> NormConfig:
    if source.dtype == "uint8":
        return NormConfig.uint8(source.n_channels)
    raise MedsegError(f"the image is {source.dtype}, not uint8: pass the model's normalisation (norm=...) "
                      "or predict from a checkpoint, which carries it")


def model_window(loaded: LoadedModel, source: ImageSource, window: tuple[int, ...]) -> tuple[int, ...]:
    """The window over the source's spatial axes: a 2D window over a volume runs slice by slice (1, h, w)."""
    window = tuple(int(w) for w in window)
    sd = source.spatial_dims
    md = loaded.spatial_dims or len(window)
    if md > sd:
        raise MedsegError(f"a {md}D model cannot predict a {sd}D image; use a {sd}D model")
    if len(window) == 1:
        window = window * md
    if md < sd and len(window) == sd:  # e.g. (512, 512, 512) for a 2D model over a volume: slice by slice
        window = (1,) * (sd - md) + window[sd - md:]
    if len(window) == md and md < sd:
        window = (1,) * (sd - md) + window
    if len(window) != sd:
        raise MedsegError(f"window {window} needs {md} sizes for this {md}D model")
    if any(w < 1 for w in window):
        raise MedsegError(f"window sizes must be positive, got {window}")
    return window


def check_model_input(loaded: LoadedModel, source: ImageSource, window: tuple[int, ...], device: torch.device,
                      norm: NormConfig) -> int:
    """Refuse (``MedsegError``) a channel-count mismatch or a window the model cannot take; returns the
    number of output channels (classes, background included)."""
    n = source.n_channels
    if loaded.in_channels is not None and loaded.in_channels != n:
        raise MedsegError(f"the model takes {loaded.in_channels} input channel(s) but the image has {n} "
                          f"({source.axes}); use a model trained on this kind of image")
    if norm.channels not in (1, n):
        raise MedsegError(f"the normalisation is set for {norm.channels} channels but the image has {n}")
    md = loaded.spatial_dims or len(window)
    mwin = window[len(window) - md:]
    if loaded.window_rule:
        bad = [w for w, r in zip(mwin, loaded.window_rule) if fit_size(r, w) != w]
        if bad:
            raise MedsegError(f"this model takes windows of {_rule_text(loaded.window_rule)}; got {tuple(mwin)}. "
                              f"Try {tuple(fit_size(r, w) for r, w in zip(loaded.window_rule, mwin))}.")
    if loaded.config is not None:
        from napari_medseg.models.registry import check_input_size

        check_input_size(loaded.config, mwin)
        return loaded.config.out_channels
    strides = getattr(loaded.module, "strides", None)
    out_ch = getattr(loaded.module, "out_channels", None)
    if type(loaded.module).__name__ == "UNet" and strides and isinstance(out_ch, int):
        m = model_multiple(loaded)  # a MONAI UNet built without our config: its strides tell
        bad = [s for s in mwin if s % m]
        if bad:
            sugg = sorted({max(m, round(s / m) * m) for s in mwin})
            raise MedsegError(f"this UNet needs window sizes that are multiples of {m}; got {tuple(mwin)}. "
                              f"Try {' or '.join(str(s) for s in sugg)}.")
        return out_ch
    # any other nn.Module without a config: one trial pass of a zero window tells
    x = torch.zeros((1, n, *mwin), device=device)
    try:
        with torch.inference_mode():
            y = loaded.module.to(device)(x)
    except MedsegError:
        raise
    except Exception as e:
        raise MedsegError(f"the model cannot take a window of {tuple(mwin)} pixels ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); choose a window the architecture accepts "
                          "(e.g. a multiple of 32)") from e
    if not isinstance(y, torch.Tensor) or tuple(y.shape[2:]) != tuple(mwin):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise MedsegError(f"the model maps a {tuple(mwin)} window to {shape}, not to the same size; "
                          "choose another window size")
    return int(y.shape[1])


def _rule_text(rule: tuple[tuple[int, int], ...]) -> str:
    return " x ".join(f"{lo}" if step == 0 else f"{lo} + k*{step}" for lo, step in rule) + " pixels"


#: test-time augmentation: none; flips (the window and its mirror along each spatial axis: 1 + dims passes);
#: dihedral (2D, square windows: the 4 rotations by 90 degrees, each also mirrored: 8 passes); multiscale (the
#: window resampled to each of ``TTA_SCALES`` of its size, rounded to sizes the model takes: 3 passes)
TTA_MODES = ("none", "flips", "dihedral", "multiscale")
TTA_SCALES = (0.75, 1.0, 1.25)


def tta_mode(tta: bool | str | None) -> str:
    """``False``/``None`` -> "none", ``True`` -> "flips", or a name of ``TTA_MODES``."""
    if tta is None or tta is False:
        return "none"
    if tta is True:
        return "flips"
    if str(tta) not in TTA_MODES:
        raise MedsegError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MODES)}")
    return str(tta)


def tta_identity(tta: bool | str | None) -> bool | str:
    """How a run records its TTA (resume checks it): True/False as before for none and flips."""
    mode = tta_mode(tta)
    return mode if mode in ("dihedral", "multiscale") else mode == "flips"


def scaled_window(loaded: LoadedModel, window: tuple[int, ...], scale: float, what: str) -> tuple[int, ...]:
    """``window`` (the model's spatial axes) times ``scale``, each axis moved to the nearest size the model takes
    (axes of size 1 stay); ``what`` names the option in the error for a model whose sizes are unknown."""
    if loaded.window_rule:
        def fit(w: float, r: tuple[int, int]) -> int:
            return fit_size(r, int(w + 0.5))
        rules = loaded.window_rule
    elif loaded.config is not None:
        from napari_medseg.models.registry import min_input_size, required_multiple

        m, lo = required_multiple(loaded.config), min_input_size(loaded.config)
        rules = ((lo, m),) * len(window)

        def fit(w: float, r: tuple[int, int]) -> int:
            return max(r[0], int(w / r[1] + 0.5) * r[1])
    else:
        raise MedsegError(f"{what} needs a model whose window sizes are known (a napari-medseg checkpoint or package)")
    return tuple(int(window[i]) if window[i] == 1 else fit(window[i] * scale, r) for i, r in enumerate(rules))


def tta_windows(loaded: LoadedModel, window: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The model windows multi-scale TTA runs (``TTA_SCALES`` of ``window``, the model's spatial axes), each
    moved to the nearest size the model takes; a scale whose size would repeat another is left out."""
    out: list[tuple[int, ...]] = []
    for s in TTA_SCALES:
        w = scaled_window(loaded, window, s, "multi-scale TTA (use flips)")
        if w not in out:
            out.append(w)
    if len(out) < 2:
        raise MedsegError(f"multi-scale TTA: the window {tuple(window)} is too small to take another scale; "
                          "choose a larger window or flips")
    return tuple(out)


def probabilities(y: torch.Tensor) -> torch.Tensor:
    """Softmax over the channels (dim 1) of logits ``y`` (N, C, *spatial), as a contiguous (NCHW) tensor, the
    layout the blending reads fastest. Two classes, the common case: softmax(a, b) = (sigmoid(a - b),
    sigmoid(b - a)), equal to ``torch.softmax`` within float rounding (1.2e-7) and about twice as fast on a
    channels-last output (see docs/prediction.md); every other count goes through ``torch.softmax``."""
    if y.shape[1] != 2:
        return torch.softmax(y, dim=1)
    p = torch.empty(y.shape, dtype=y.dtype, device=y.device)  # contiguous
    d = torch.sub(y[:, 1], y[:, 0], out=p[:, 0])  # b - a, kept in p[:, 0] until used
    torch.sigmoid(d, out=p[:, 1])
    torch.sigmoid(d.neg_(), out=p[:, 0])
    return p


class WindowRunner:
    """Probabilities for batches of windows; fixed batch shape, optional TTA (``TTA_MODES``)."""

    def __init__(self, module: nn.Module, device: torch.device, *, batch_size: int = 4, amp: bool = True,
                 cpu_bf16: bool = False,
                 tta: bool | str = False, model_dims: int = 2, squeeze_axis: int | None = None,
                 cpu_nhwc: bool = True, keep_module: bool = False,
                 scaled_windows: tuple[tuple[int, ...], ...] = (),
                 zoom_window: tuple[int, ...] | None = None) -> None:
        """``keep_module``: run the module where it is, its weights' memory format untouched (a model that
        is being trained, previewed between its steps); otherwise it is moved to ``device`` and, on CUDA,
        given channels-last weights. ``scaled_windows``: the model windows of multi-scale TTA
        (``tta_windows``). ``zoom_window``: the model sees every window resampled to this size (the zoom of a
        prediction, ``scaled_window``) and its probabilities come back to the window's size."""
        if batch_size < 1:
            raise MedsegError(f"batch size must be >= 1, got {batch_size}")
        self.device, self.batch_size = device, int(batch_size)
        self.tta_mode = tta_mode(tta)
        self.tta = self.tta_mode != "none"
        if self.tta_mode == "multiscale" and not scaled_windows:
            raise MedsegError("multi-scale TTA needs the scaled windows (modelrun.tta_windows)")
        self.scaled_windows = tuple(tuple(int(v) for v in w) for w in scaled_windows)
        if zoom_window is not None and self.tta_mode == "multiscale":
            raise MedsegError("a zoom and multi-scale TTA do not combine; choose one")
        self.zoom_window = None if zoom_window is None else tuple(int(v) for v in zoom_window)
        self.amp = bool(amp) and device.type == "cuda"
        # bfloat16 autocast on the CPU (opt-in: oneDNN on AMX / AVX512-BF16 cores, ``devices.cpu_bf16_native``)
        self.cpu_bf16 = bool(cpu_bf16) and device.type == "cpu"
        self.channels_last = device.type == "cuda" and not keep_module
        # On the CPU a 2D model gets its input channels-last (NHWC), its weights left as they are: oneDNN's
        # convolutions take that layout several times faster than NCHW (the first, 3-channel one above all;
        # see benchmarks/bench_memory_format.py). The result is the same (to float rounding), and the same
        # in every run, as the choice depends only on the device and the model's dimensions.
        self.input_channels_last = self.channels_last or (device.type == "cpu" and model_dims == 2 and cpu_nhwc)
        self.model_dims, self.squeeze_axis = model_dims, squeeze_axis
        module = (module if keep_module else module.to(device)).eval()
        if self.channels_last:
            fmt = torch.channels_last if model_dims == 2 else torch.channels_last_3d
            module = module.to(memory_format=fmt)
        self.module = module
        self.windows = 0

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[2:])
        if self.zoom_window is None or self.zoom_window == size:
            return self._model(x)
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        aa = x.ndim == 4 and self.zoom_window[0] < size[0]  # antialiased when a 2D window shrinks
        y = self._model(F.interpolate(x, size=self.zoom_window, mode=mode, align_corners=False, antialias=aa))
        return F.interpolate(y, size=size, mode=mode, align_corners=False)

    def _model(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_channels_last:
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        if self.amp:
            dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dt):
                y = self.module(x)
        elif self.cpu_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = self.module(x)
        else:
            y = self.module(x)
        return probabilities(y.float())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch``: (n, C, *window) float. Returns (n, C_out, *window) float32.

        Runs in slices of ``batch_size`` windows. Out of (GPU) memory, the batch size is halved and the slice
        retried, so the run goes on (windows are independent: the result does not change); at one window per
        batch the error says what to do."""
        from napari_medseg.models.devices import free_memory, is_oom

        n = batch.shape[0]
        if self.squeeze_axis is not None:
            batch = batch.squeeze(2 + self.squeeze_axis)
        outs: list[torch.Tensor] = []
        i = 0
        while i < n:
            part = batch[i:i + self.batch_size]
            try:
                outs.append(self._run(part))
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not is_oom(e):
                    raise
                if self.batch_size <= 1:
                    raise MedsegError("out of memory even with one window per batch; choose a smaller window "
                                      "or another device (e.g. --device cpu)") from e
                free_memory(self.device)
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory: prediction batch reduced to %d window(s); going on", self.batch_size)
                continue
            i += part.shape[0]
        self.windows += n
        p = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self.squeeze_axis is not None:
            p = p.unsqueeze(2 + self.squeeze_axis)
        return p

    def _run(self, part: torch.Tensor) -> torch.Tensor:
        m = part.shape[0]
        if m < self.batch_size:  # fixed shapes: pad the batch (results per window do not depend on it)
            pad = part.new_zeros((self.batch_size - m, *part.shape[1:]))
            part = torch.cat([part, pad])
        with torch.inference_mode():
            p = self._forward(part)
            if self.tta_mode == "flips":
                dims = list(range(2, part.ndim))
                for d in dims:
                    p += torch.flip(self._forward(torch.flip(part, [d])), [d])
                p /= len(dims) + 1
            elif self.tta_mode == "dihedral":
                if part.ndim != 4 or part.shape[2] != part.shape[3]:
                    raise MedsegError(f"rotation TTA needs square 2D windows, got {tuple(part.shape[2:])}; use flips")
                for k in range(4):
                    for mirror in (False, True):
                        if k == 0 and not mirror:
                            continue
                        x = torch.rot90(part, k, (2, 3))
                        x = torch.flip(x, [3]) if mirror else x
                        y = self._forward(x)
                        y = torch.flip(y, [3]) if mirror else y
                        p += torch.rot90(y, -k, (2, 3))
                p /= 8
            elif self.tta_mode == "multiscale":
                p = self._multiscale(part, p)
        return p[:m]

    def _multiscale(self, part: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``p`` (the pass at the window's own size) averaged with a pass at each other scaled window: the
        input resampled (linear, antialiased when shrinking a 2D window), the probabilities resampled back."""
        size = tuple(part.shape[2:])
        mode = "bilinear" if part.ndim == 4 else "trilinear"
        n = 1
        for w in self.scaled_windows:
            if w == size:
                continue
            if len(w) != len(size):
                raise MedsegError(f"multi-scale TTA: scaled window {w} does not match the window {size}")
            aa = part.ndim == 4 and w[0] < size[0]
            x = F.interpolate(part, size=w, mode=mode, align_corners=False, antialias=aa)
            p += F.interpolate(self._forward(x), size=size, mode=mode, align_corners=False)
            n += 1
        return p / n


def model_multiple(loaded: LoadedModel, default: int = 32) -> int:
    """Spatial sizes the model takes are multiples of this (from the config or a MONAI UNet's strides)."""
    if loaded.config is not None:
        from napari_medseg.models.registry import required_multiple

        return required_multiple(loaded.config)
    if loaded.window_rule:
        return max(1, max(step for _, step in loaded.window_rule))
    strides: Any = getattr(loaded.module, "strides", None)
    if strides:
        m = 1
        for s in strides:
            m *= int(s if isinstance(s, int) else max(s))
        return m
    return default
