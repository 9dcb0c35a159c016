"""Preprocessing steps in bioimage.io's vocabulary (model spec 0.5), so a model's input contract travels.

A step is a plain mapping ``{"id": ..., "kwargs": {...}}`` exactly as a bioimage.io ``rdf.yaml`` writes it.
``NormConfig(mode="steps")`` holds a chain of them: models imported from bioimage.io packages keep the
preprocessing they were trained with, and every napari-medseg model exports its own normalisation as such a
chain (``NormConfig.to_steps``).

Steps that need statistics of the data (``scale_range``: percentiles, ``zero_mean_unit_variance``: mean and
standard deviation) are *resolved* once per image (``resolve_steps``) from a subsample of the whole image and
replaced by the equivalent fixed ``scale_linear``. bioimage.io computes them per sample; a tiled prediction
that computed them per tile would give each tile another contrast and visible seams, so the whole image is the
sample here (what bioimage.io calls per-dataset statistics). The statistics are taken over the axes the step
names (per channel when ``channel`` is not among them, as in the spec).

Supported: ``clip``, ``scale_linear``, ``scale_range``, ``zero_mean_unit_variance``,
``fixed_zero_mean_unit_variance``, ``binarize``, ``sigmoid``, ``ensure_dtype``. Anything else
(``scale_mean_variance`` with its reference tensor, custom code) is refused with a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from napari_medseg.core.errors import MedsegError

SUPPORTED = ("clip", "scale_linear", "scale_range", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance",
             "binarize", "sigmoid", "ensure_dtype")
#: steps whose parameters come from the data (resolved per image)
DATA_STEPS = ("scale_range", "zero_mean_unit_variance")
_FLOAT_DTYPES = ("float32", "float64", "float16")


def _num(step: str, key: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise MedsegError(f"preprocessing step {step!r}: {key} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise MedsegError(f"preprocessing step {step!r}: {key} must be finite, got {v!r}")
    return f


def _nums(step: str, key: str, v: Any) -> float | list[float]:
    """A number or a list of numbers (one per channel)."""
    if isinstance(v, (list, tuple)):
        if not v:
            raise MedsegError(f"preprocessing step {step!r}: {key} is an empty list")
        return [_num(step, key, x) for x in v]
    return _num(step, key, v)


def _axes(step: str, v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(a, str) for a in v):
        raise MedsegError(f"preprocessing step {step!r}: axes must be a list of axis names, got {v!r}")
    return [a.lower() for a in v]


def check_step(step: Any) -> dict[str, Any]:
    """One step, validated and normalised (numbers as floats, ``kwargs`` always present)."""
    if not isinstance(step, Mapping) or "id" not in step:
        raise MedsegError(f"a preprocessing step must be a mapping with an 'id', got {step!r}")
    sid = str(step["id"])
    kw = step.get("kwargs") or {}
    if not isinstance(kw, Mapping):
        raise MedsegError(f"preprocessing step {sid!r}: kwargs must be a mapping, got {kw!r}")
    if sid not in SUPPORTED:
        raise MedsegError(f"preprocessing step {sid!r} is not supported; napari-medseg runs {', '.join(SUPPORTED)}")
    out: dict[str, Any] = {}
    if sid == "clip":
        for k in ("min", "max"):
            if kw.get(k) is not None:
                out[k] = _num(sid, k, kw[k])
        if not out:
            raise MedsegError("preprocessing step 'clip' needs min or max (percentile clipping is not supported)")
        if "min" in out and "max" in out and out["max"] < out["min"]:
            raise MedsegError(f"preprocessing step 'clip': max {out['max']} is below min {out['min']}")
    elif sid == "scale_linear":
        out["gain"] = _nums(sid, "gain", kw.get("gain", 1.0))
        out["offset"] = _nums(sid, "offset", kw.get("offset", 0.0))
        if kw.get("axis") is not None:
            out["axis"] = str(kw["axis"]).lower()
    elif sid == "scale_range":
        if kw.get("reference_tensor") is not None:
            raise MedsegError("preprocessing step 'scale_range' with a reference_tensor is not supported")
        lo = _num(sid, "min_percentile", kw.get("min_percentile", 0.0))
        hi = _num(sid, "max_percentile", kw.get("max_percentile", 100.0))
        if not 0.0 <= lo < hi <= 100.0:
            raise MedsegError(f"preprocessing step 'scale_range': need 0 <= min_percentile < max_percentile <= 100, "
                              f"got {lo} and {hi}")
        out.update(min_percentile=lo, max_percentile=hi, eps=_num(sid, "eps", kw.get("eps", 1e-6)),
                   axes=_axes(sid, kw.get("axes")))
    elif sid == "zero_mean_unit_variance":
        out.update(eps=_num(sid, "eps", kw.get("eps", 1e-6)), axes=_axes(sid, kw.get("axes")))
    elif sid == "fixed_zero_mean_unit_variance":
        out["mean"] = _nums(sid, "mean", kw.get("mean", 0.0))
        out["std"] = _nums(sid, "std", kw.get("std", 1.0))
        out["eps"] = _num(sid, "eps", kw.get("eps", 1e-6))
        if kw.get("axis") is not None:
            out["axis"] = str(kw["axis"]).lower()
    elif sid == "binarize":
        out["threshold"] = _nums(sid, "threshold", kw.get("threshold", 0.5))
        if kw.get("axis") is not None:
            out["axis"] = str(kw["axis"]).lower()
    elif sid == "ensure_dtype":
        out["dtype"] = str(kw.get("dtype", "float32"))
    return {"id": sid, "kwargs": out}


def check_steps(steps: Iterable[Any]) -> tuple[dict[str, Any], ...]:
    return tuple(check_step(s) for s in steps)


def needs_data(steps: Sequence[Mapping[str, Any]]) -> bool:
    return any(s["id"] in DATA_STEPS for s in steps)


def step_channels(steps: Sequence[Mapping[str, Any]]) -> int:
    """The channel count per-channel parameters imply (1 when every parameter is a single number)."""
    n = 1
    for s in steps:
        for v in s["kwargs"].values():
            if isinstance(v, list):
                if n != 1 and len(v) not in (1, n):
                    raise MedsegError(f"preprocessing step {s['id']!r}: {len(v)} values per channel where another "
                                      f"step has {n}")
                n = max(n, len(v))
    return n


def _per_channel(v: float | list[float], torch_mod: Any, x: Any) -> Any:
    """A scalar or a (1, C, 1, ...) tensor broadcastable over ``x`` (N, C, *spatial)."""
    if not isinstance(v, list):
        return v
    if len(v) not in (1, x.shape[1]):
        raise MedsegError(f"a preprocessing step has {len(v)} values per channel, the input has {x.shape[1]} channels")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return torch_mod.tensor(v, dtype=x.dtype, device=x.device).view(shape)


def apply_steps(x: Any, steps: Sequence[Mapping[str, Any]]) -> Any:
    """Run resolved ``steps`` on a float tensor ``(N, C, *spatial)``; data steps must be resolved first."""
    import torch

    for s in steps:
        sid, kw = s["id"], s["kwargs"]
        if sid in DATA_STEPS:
            raise MedsegError(f"preprocessing step {sid!r} needs statistics of the image: resolve it first "
                              "(NormConfig.resolved)")
        if sid == "clip":
            x = x.clamp(min=kw.get("min"), max=kw.get("max"))
        elif sid == "scale_linear":
            x = x * _per_channel(kw["gain"], torch, x) + _per_channel(kw["offset"], torch, x)
        elif sid == "fixed_zero_mean_unit_variance":
            std = _per_channel(kw["std"], torch, x)
            x = (x - _per_channel(kw["mean"], torch, x)) / (std + kw["eps"])
        elif sid == "binarize":
            x = (x > _per_channel(kw["threshold"], torch, x)).to(x.dtype)
        elif sid == "sigmoid":
            x = torch.sigmoid(x)
        elif sid == "ensure_dtype" and kw["dtype"] not in _FLOAT_DTYPES:
            x = x.to(getattr(torch, kw["dtype"], torch.float32)).to(torch.float32)
    return x


def resolve_steps(steps: Sequence[Mapping[str, Any]], sample: np.ndarray) -> tuple[dict[str, Any], ...]:
    """Replace the data steps by fixed ``scale_linear`` steps computed on ``sample`` ``(C, *spatial)`` (raw
    pixels of the whole image, e.g. a subsample), each on the values the steps before it produce."""
    import torch

    a = np.asarray(sample, dtype=np.float32)
    if a.ndim < 2:
        raise MedsegError(f"a normalisation sample needs a channel axis and spatial axes, got shape {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a))[None]
    out: list[dict[str, Any]] = []
    for s in steps:
        if s["id"] not in DATA_STEPS:
            out.append(s)
            x = apply_steps(x, [s])
            continue
        kw = s["kwargs"]
        axes = kw.get("axes")
        # bioimage.io: no axes = statistics over the whole tensor; else per channel unless channel is reduced
        per_channel = axes is not None and "channel" not in axes and "c" not in axes
        v = x[0].numpy()
        groups = [v[c] for c in range(v.shape[0])] if per_channel else [v]
        gains, offsets = [], []
        for g in groups:
            f = g[np.isfinite(g)]
            if f.size == 0:
                raise MedsegError("the image holds no finite values to compute its normalisation from")
            if s["id"] == "scale_range":
                lo, hi = (float(q) for q in np.percentile(f, [kw["min_percentile"], kw["max_percentile"]]))
                gain = 1.0 / (hi - lo + kw["eps"])
                gains.append(gain)
                offsets.append(-lo * gain)
            else:
                mean, std = float(f.mean(dtype=np.float64)), float(f.std(dtype=np.float64))
                gain = 1.0 / (std + kw["eps"])
                gains.append(gain)
                offsets.append(-mean * gain)
        fixed = {"id": "scale_linear", "kwargs": {"gain": gains if per_channel else gains[0],
                                                  "offset": offsets if per_channel else offsets[0]}}
        if per_channel:
            fixed["kwargs"]["axis"] = "channel"
        out.append(fixed)
        x = apply_steps(x, [fixed])
    return tuple(out)
