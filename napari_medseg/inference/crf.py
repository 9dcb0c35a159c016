"""Edge-aware refinement of class probabilities: a dense CRF by mean field, truncated to a local window
(ConvCRF, Teichmann & Cipolla 2018, after Kraehenbuehl & Koltun's fully connected CRF), in plain torch.

Each pixel's class probabilities ``P`` are the unary term; pixels ``i, j`` closer than ``radius`` pixels are tied
by two Gaussian kernels,

    k(i, j) = w_bilateral * exp(-|x_i - x_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2))
            + w_spatial   * exp(-|x_i - x_j|^2 / (2 sigma_smooth^2)),

and ``iterations`` mean-field steps under the Potts model update

    Q_i(c) = softmax_c( log P_i(c) - sum_j k(i, j) (1 - Q_j(c)) ) = softmax_c( log P_i(c) + sum_j k(i, j) Q_j(c) )

(the two are equal: ``sum_j k(i, j)`` is the same for every class),

so a pixel is pulled towards the class of the neighbours that look like it, and pixels across an edge of
the image (``k`` near 0) leave each other alone. ``I`` is the image divided by its standard deviation per
channel (given by the caller, so that blocks of one slide share it): ``sigma_rgb`` is in standard deviations.

Locality is what makes it tile: after ``n`` iterations a pixel depends only on pixels within
``n * radius``, so a block refined with a halo of ``halo(cfg)`` pixels is equal to the whole image refined at
once (``inference.crf_pass`` relies on it; the tests check it). Memory: the kernel of every offset of the
window is computed once per block (``O(offsets * pixels)`` floats), then each iteration is one shifted
multiply-add per offset and class. 2D and 3D.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.grid import offsets_within, pair_slices


@dataclass(frozen=True)
class CRFConfig:
    """Settings of the refinement (pixels of the predicted level; ``sigma_rgb`` in standard deviations)."""

    iterations: int = 5
    radius: int = 4
    sigma_xy: float = 3.0
    sigma_rgb: float = 0.5
    w_bilateral: float = 1.0
    sigma_smooth: float = 1.0
    w_spatial: float = 0.5

    def __post_init__(self) -> None:
        for name in ("iterations", "radius"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise MedsegError(f"CRF {name} must be a whole number, got {v!r}")
        for name in ("sigma_xy", "sigma_rgb", "sigma_smooth", "w_bilateral", "w_spatial"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise MedsegError(f"CRF {name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if not 1 <= int(self.iterations) <= 50:
            raise MedsegError(f"CRF iterations must be 1..50, got {self.iterations}")
        if not 1 <= int(self.radius) <= 12:
            raise MedsegError(f"CRF radius must be 1..12 pixels, got {self.radius}")
        for name in ("sigma_xy", "sigma_rgb", "sigma_smooth"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise MedsegError(f"CRF {name} must be a positive number, got {v!r}")
        for name in ("w_bilateral", "w_spatial"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise MedsegError(f"CRF {name} must be a number >= 0, got {v!r}")

    @property
    def halo(self) -> int:
        """Pixels of context a block needs on each side to be refined exactly as the whole image."""
        return int(self.iterations) * int(self.radius)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CRFConfig:
        if not d:
            return cls()
        if not isinstance(d, dict):
            raise MedsegError(f"CRF settings must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise MedsegError(f"unknown CRF settings {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@torch.no_grad()
def refine(probs: torch.Tensor, image: torch.Tensor, cfg: CRFConfig = CRFConfig(),
           valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean-field refinement of ``probs`` ``(K, *S)`` (class probabilities, summing to 1 where valid) under
    ``image`` ``(C, *S)`` (already divided by its standard deviation per channel). ``valid`` ``(*S)`` bool: pixels
    outside it (not predicted, off the tissue) neither send nor receive messages and come back unchanged.
    Returns ``(K, *S)`` float32 probabilities."""
    if probs.ndim not in (3, 4) or image.ndim != probs.ndim or probs.shape[1:] != image.shape[1:]:
        raise MedsegError(f"CRF needs probabilities (K, *S) and an image (C, *S) of one size, got "
                          f"{tuple(probs.shape)} and {tuple(image.shape)}")
    p = probs.float()
    img = image.float()
    shape = tuple(p.shape[1:])
    v = torch.ones(shape, dtype=torch.bool, device=p.device) if valid is None else valid.to(p.device).bool()
    unary = torch.log(p.clamp_min(1e-6))
    kernels: list[tuple[tuple[slice, ...], tuple[slice, ...], torch.Tensor]] = []
    for o in offsets_within(int(cfg.radius), len(shape)):
        a, b = pair_slices(o, shape)
        d2 = float(sum(x * x for x in o))
        diff = ((img[(slice(None), *a)] - img[(slice(None), *b)]) ** 2).sum(0)
        k = cfg.w_bilateral * torch.exp(-0.5 * d2 / cfg.sigma_xy ** 2 - 0.5 * diff / cfg.sigma_rgb ** 2)
        k = k + cfg.w_spatial * math.exp(-0.5 * d2 / cfg.sigma_smooth ** 2)
        k = k * (v[a] & v[b])
        kernels.append((a, b, k))
    q = p.clone()
    agree = torch.empty_like(q)
    for _ in range(int(cfg.iterations)):
        # sum_j k(i, j) (1 - Q_j(c)) = sum_j k(i, j) - sum_j k(i, j) Q_j(c): the first sum is the same for every
        # class and cancels in the softmax, so only the agreement term is computed (one multiply-add per offset)
        agree.zero_()
        for a, b, k in kernels:
            agree[(slice(None), *a)].addcmul_(k, q[(slice(None), *b)])
        q = torch.softmax(unary + agree, dim=0)
    return torch.where(v, q, p)


def scaled_image(image: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
    """``image`` ``(C, *S)`` as float divided by ``std`` per channel (default: its own standard deviation)."""
    x = image.float()
    if std is None:
        std = x.flatten(1).std(1)
    return x / std.float().clamp_min(1e-6).reshape((-1,) + (1,) * (x.ndim - 1))
