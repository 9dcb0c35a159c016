"""Batched augmentation on the training device (torch ops, one ``grid_sample`` per batch).

- ``geometric``: random flips along every spatial axis, a random YX transpose (with the flips: all 8
  in-plane right-angle rotations and mirrors), and with probability ``p_warp`` a small rotation in the YX
  plane, a scale change and a smooth elastic deformation. Labels follow with nearest sampling; pixels that
  come from outside the patch become 0 (not annotated), so the loss ignores them.
- ``photometric``: gamma, contrast and brightness (per channel), Gaussian noise and Gaussian blur; "strong"
  for the student, "weak" for a light touch. With ``stain`` > 0 the strong view of RGB patches first gets the
  H&E stain jitter of ``stain.py``.

The geometric part is applied once to a batch and shared by the student's and the teacher's views, so the
Mean Teacher consistency compares the same pixels. Per-sample MONAI dictionary transforms do the same on the
CPU one patch at a time; on a batch on the GPU these ops are far cheaper (``benchmarks/bench_train.py``
reports the augmentation time per step). Shapes: ``x`` ``(N, C, *spatial)`` float, normalised to about
[0, 1]; labels ``(N, *spatial)`` integer store values.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from napari_medseg.training.stain import hed_jitter

log = logging.getLogger(__name__)


class Augmenter:
    def __init__(self, spatial_dims: int, device: torch.device | str = "cpu", seed: int = 0, elastic: bool = True,
                 enabled: bool = True, p_warp: float = 0.5, max_rotation_deg: float = 15.0,
                 scale_range: tuple[float, float] = (0.85, 1.15), elastic_sigma: float = 0.03,
                 elastic_grid: int = 4, stain: float = 0.0) -> None:
        self.dims = spatial_dims
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))
        self.elastic = elastic
        self.enabled = enabled
        self.p_warp = p_warp
        self.max_rot = math.radians(max_rotation_deg)
        self.scale_range = scale_range
        self.elastic_sigma = elastic_sigma
        self.elastic_grid = elastic_grid
        self.stain = float(stain)  # H&E stain jitter of the strong view (stain.py); 0 = off

    # -- helpers -------------------------------------------------------------------------------------
    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, device=self.device)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, device=self.device)

    @staticmethod
    def _bshape(n: int, ndim: int) -> tuple[int, ...]:
        return (n,) + (1,) * (ndim - 1)

    # -- geometric -----------------------------------------------------------------------------------
    def geometric(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flip / transpose / warp ``x`` ``(N, C, *S)`` and ``y`` ``(N, *S)`` alike."""
        if not self.enabled:
            return x, y
        n = x.shape[0]
        for d in range(self.dims):
            m = self._rand(n) < 0.5
            if bool(m.any()):
                x = torch.where(m.view(self._bshape(n, x.ndim)), x.flip(2 + d), x)
                if y is not None:
                    y = torch.where(m.view(self._bshape(n, y.ndim)), y.flip(1 + d), y)
        if x.shape[-1] == x.shape[-2]:
            m = self._rand(n) < 0.5
            if bool(m.any()):
                x = torch.where(m.view(self._bshape(n, x.ndim)), x.transpose(-1, -2), x)
                if y is not None:
                    y = torch.where(m.view(self._bshape(n, y.ndim)), y.transpose(-1, -2), y)
        warp = self._rand(n) < self.p_warp
        if bool(warp.any()):
            grid = self._grid(n, x.shape[2:], warp)
            xw = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            x = xw.to(x.dtype)
            if y is not None:
                yw = F.grid_sample(y.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False)
                y = yw[:, 0].round().to(y.dtype)
        return x, y

    def _grid(self, n: int, size: torch.Size, active: torch.Tensor) -> torch.Tensor:
        """Sampling grid ``(N, *S, dims)``: identity where not ``active``, else rotation + scale + elastic."""
        nd = self.dims
        a = (self._rand(n) * 2 - 1) * self.max_rot * active
        lo, hi = self.scale_range
        s = torch.where(active, lo + (hi - lo) * self._rand(n), torch.ones(n, device=self.device))
        theta = torch.zeros(n, nd, nd + 1, device=self.device)
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        # grid coordinates are (x, y[, z]); rotate in the x-y plane (the YX plane of the patch)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        if nd == 3:
            theta[:, 2, 2] = 1.0 / s
        grid = F.affine_grid(theta, [n, 1, *size], align_corners=False)
        if self.elastic:
            g = self.elastic_grid
            coarse = self._randn(n, nd, *(g,) * nd) * self.elastic_sigma * active.view(n, *(1,) * (nd + 1))
            mode = "bicubic" if nd == 2 else "trilinear"
            disp = F.interpolate(coarse, size=tuple(size), mode=mode, align_corners=True)
            grid = grid + disp.movedim(1, -1)
        return grid

    # -- photometric ---------------------------------------------------------------------------------
    def photometric(self, x: torch.Tensor, strength: str = "strong") -> torch.Tensor:
        """Gamma, contrast/brightness, noise and blur on ``x`` ``(N, C, *S)`` (a new tensor)."""
        if not self.enabled:
            return x
        strong = strength == "strong"
        n, c = x.shape[:2]
        bshape = (n, 1) + (1,) * self.dims
        cshape = (n, c) + (1,) * self.dims
        x = x.float()
        if strong and self.stain > 0 and c == 3:  # the stains first: they act on the intensities as scanned
            x = hed_jitter(x, self.stain, self.gen)
        # gamma on [0, 1]
        g = torch.exp((self._rand(n) * 2 - 1) * (0.4 if strong else 0.2))
        use = (self._rand(n) < (0.5 if strong else 0.3)).float()
        g = 1.0 + (g - 1.0) * use
        x = x.clamp(0.0, 1.0).pow(g.view(bshape))
        # contrast around the mean and brightness, a little per channel
        ctr = 1.0 + (self._rand(n) * 2 - 1) * (0.25 if strong else 0.1)
        bri = (self._rand(n) * 2 - 1) * (0.1 if strong else 0.05)
        per_c = (self._rand(n, c) * 2 - 1) * (0.04 if strong else 0.02)
        mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        x = (x - mean) * ctr.view(bshape) + mean + bri.view(bshape) + per_c.view(cshape)
        # blur (one sigma per batch, applied to a random subset)
        p_blur = 0.3 if strong else 0.0
        if p_blur > 0:
            m = self._rand(n) < p_blur
            if bool(m.any()):
                sigma = 0.5 + float(self._rand(1)) * 1.0
                x = x.clone()
                x[m] = gaussian_blur(x[m], sigma)
        # additive Gaussian noise
        std = self._rand(n) * (0.05 if strong else 0.02)
        x = x + self._randn(*x.shape) * std.view(bshape)
        return x


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the spatial axes of ``x`` ``(N, C, *S)`` (reflect padding)."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    dims = x.ndim - 2
    c = x.shape[1]
    conv = F.conv2d if dims == 2 else F.conv3d
    out = x
    for d in range(dims):
        shape = [1] * dims
        shape[d] = 2 * r + 1
        w = k.view(1, 1, *shape).repeat(c, 1, *([1] * dims))
        pad = [0] * (2 * dims)
        # F.pad order: last dim first
        pad[2 * (dims - 1 - d)] = r
        pad[2 * (dims - 1 - d) + 1] = r
        mode = "reflect" if min(out.shape[2:]) > r else "replicate"
        out = conv(F.pad(out, pad, mode=mode), w, groups=c)
    return out
