"""Modules that run a model from a file someone else wrote, in napari-medseg's tensor contract.

The tiled predictor and the live preview feed ``(N, C, *spatial)`` normalised float tensors (spatial axes in
the image's order, ``ZYX`` / ``YX``) and turn what comes back into probabilities with a softmax over the
channel axis. A foreign model may want its axes in another order and may give probabilities (softmax or
sigmoid output) instead of logits; :class:`ForeignModel` adapts both ways, so nothing downstream changes:

- input axes are permuted to the model's order (``axes_order``) and back on the output;
- softmax outputs become log-probabilities (the predictor's softmax gives the same probabilities back);
- a single sigmoid channel ``p`` becomes two channels ``log(1 - p), log(p)`` (background, foreground);
  ``sigmoid_logits``: a single channel ``z`` whose sigmoid is the probability (a bioimage.io package with
  ``sigmoid`` as postprocessing) becomes ``log sigmoid(-z), log sigmoid(z)``.

bioimage.io's postprocessing runs *after* the weights: a package whose postprocessing is ``softmax`` has
weights that give logits, exactly what the predictor wants.

:class:`OnnxModule` runs an ONNX file through onnxruntime inside a ``torch.nn.Module`` (CPU; its threads
follow ``torch.get_num_threads()``). TorchScript files load with ``torch.jit.load``, which runs TorchScript
only (no Python from the file), and weights with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)

#: what a model's output holds: ``logits``, ``softmax`` probabilities, or ``sigmoid`` probabilities
OUTPUT_KINDS = ("logits", "softmax", "sigmoid", "sigmoid_logits")
_EPS = 1e-12


class OnnxModule(nn.Module):
    """An ONNX model (bytes of the file) as a module: ``forward`` runs it with onnxruntime on the CPU."""

    def __init__(self, data: bytes, label: str = "the ONNX model") -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
            raise MedsegError("running ONNX models needs onnxruntime: pip install onnxruntime") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise MedsegError(f"{label} is not a valid ONNX model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from e
        ins = self.session.get_inputs()
        if len(ins) != 1:
            raise MedsegError(f"{label} takes {len(ins)} inputs; napari-medseg runs models with one image input")
        self.input_name = ins[0].name
        self.input_shape = tuple(ins[0].shape)
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().float().cpu().contiguous().numpy()
        fixed = self.input_shape[0] if self.input_shape and isinstance(self.input_shape[0], int) else None
        if fixed is None or fixed == a.shape[0]:
            y = self._run(a)
        else:  # a graph traced with a fixed batch (often 1): run the windows in batches of that size
            parts = []
            for i in range(0, a.shape[0], fixed):
                part = a[i:i + fixed]
                n = part.shape[0]
                if n < fixed:
                    part = np.concatenate([part, np.zeros((fixed - n, *part.shape[1:]), part.dtype)])
                parts.append(self._run(part)[:n])
            y = np.concatenate(parts)
        return torch.from_numpy(np.asarray(y, dtype=np.float32)).to(x.device)

    def _run(self, a: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(None, {self.input_name: a})[0]
        except Exception as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise MedsegError(f"{self.label} failed on an input of shape {tuple(a.shape)} ({type(e).__name__}: "
                              f"{' | '.join(lines[:3])[:300]}); the model may need another window size") from e


class ForeignModel(nn.Module):
    """Adapts a model to ``(N, C, *spatial) -> (N, classes, *spatial)`` logits (see module doc).

    ``in_perm``: ``x.permute(*in_perm)`` puts our ``(N, C, *spatial)`` input in the model's axis order (after
    the channel axis is dropped when the model has none: ``has_channel=False``); ``out_perm``: ``y.permute(
    *out_perm)`` puts the model's output back as ``(N, C, *spatial)``. ``None``: the orders agree.
    """

    def __init__(self, inner: nn.Module, *, output: str = "logits", in_perm: Sequence[int] | None = None,
                 out_perm: Sequence[int] | None = None, has_channel: bool = True) -> None:
        super().__init__()
        if output not in OUTPUT_KINDS:
            raise MedsegError(f"unknown model output kind {output!r}; one of {', '.join(OUTPUT_KINDS)}")
        self.inner, self.output, self.has_channel = inner, output, bool(has_channel)
        self.in_perm = None if in_perm is None else tuple(int(a) for a in in_perm)
        self.out_perm = None if out_perm is None else tuple(int(a) for a in out_perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_channel:
            x = x[:, 0]
        if self.in_perm is not None:
            x = x.permute(*self.in_perm)
        y = self.inner(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if self.out_perm is not None:
            y = y.permute(*self.out_perm)
        y = y.float()
        if self.output == "softmax":
            return torch.log(y.clamp_min(_EPS))
        if self.output in ("sigmoid", "sigmoid_logits"):
            if y.shape[1] != 1:
                raise MedsegError(f"the model gives {y.shape[1]} sigmoid channels (independent labels); napari-"
                                  "medseg predicts one class per pixel and takes one sigmoid channel at most")
            if self.output == "sigmoid_logits":
                return torch.cat([torch.nn.functional.logsigmoid(-y), torch.nn.functional.logsigmoid(y)], dim=1)
            p = y.clamp(_EPS, 1.0 - _EPS)
            return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)
        return y


def tag(module: nn.Module, window_rule: Sequence[tuple[int, int]] | None, spatial_dims: int | None,
        in_channels: int | None) -> nn.Module:
    """Mark ``module`` with the window sizes, dimensions and channels it takes, so every path that is handed
    the bare module (the live preview, the Dask workers) still knows them (``inference.modelrun``)."""
    module.medseg_window_rule = None if window_rule is None else tuple(tuple(int(v) for v in r) for r in window_rule)
    module.medseg_spatial_dims = spatial_dims
    module.medseg_in_channels = in_channels
    return module


def load_torchscript(data: bytes, label: str) -> nn.Module:
    """A TorchScript module from the bytes of its file (TorchScript code only; no Python from the file runs)."""
    import io

    try:
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    except Exception as e:
        raise MedsegError(f"{label} is not a TorchScript model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from e


def load_weights(data: bytes, label: str) -> dict[str, torch.Tensor]:
    """A state dict from the bytes of a ``torch.save`` file, tensors only: pickled code is refused unrun."""
    import io

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise MedsegError(f"{label} could not be loaded as tensors only ({type(e).__name__}); nothing in it was "
                          "run") from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MedsegError(f"{label} is not a state dict (a mapping of names to tensors)")
    return obj
