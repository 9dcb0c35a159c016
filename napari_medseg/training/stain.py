"""Stain augmentation for H&E (brightfield RGB) training: random changes of the haematoxylin, eosin and DAB
amounts of every patch, so that a model painted on the slides of one lab predicts the slides of another.

Slides from different hospitals, scanners and staining batches differ mostly in how much of each stain the
tissue took up and in the stains' hue. Tellez et al. (2019, "Quantifying the effects of data augmentation and
stain color normalization in convolutional neural networks for computational pathology") measured that
perturbing the image in the stain space (their "HED" augmentation) generalises to unseen centres better than
stain normalisation.

How (``hed_jitter``): the RGB intensities (the normalised patch, clamped to [0, 1]) become optical densities
(Beer-Lambert: ``-log(I)``), which the colour deconvolution of Ruifrok & Johnston (2001) splits into the amounts
of the three stains (their published stain vectors, as ``skimage.color.rgb2hed`` uses them); every stain's amount
is scaled by ``alpha ~ U(1 - s, 1 + s)`` and shifted by ``beta ~ U(-s, s)`` per patch, and the image is
recomposed. ``s`` = ``TrainConfig.stain_jitter`` (Tellez's "HED-light" is 0.05, "HED-strong" 0.2; the default
here is 0: off, see docs/training.md for what it gave). Only for 3-channel images.
"""

from __future__ import annotations

import torch

from napari_medseg.core.errors import MedsegError

#: optical density of each stain in R, G, B (rows: haematoxylin, eosin, DAB), Ruifrok & Johnston 2001
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29],
                             [0.07, 0.99, 0.11],
                             [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
#: the darkest intensity (optical density scale: -log(EPS) maps to 1)
EPS = 1e-6
_LOG_EPS = float(torch.log(torch.tensor(EPS, dtype=torch.float64)))


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, *S)`` intensities in [0, 1] -> stain amounts ``(N, 3, *S)`` (H, E, D; about [0, 1])."""
    od = torch.log(x.clamp(EPS, 1.0)) / _LOG_EPS  # 0 = white, 1 = black
    return torch.einsum("nc...,cd->nd...", od, HED_FROM_RGB.to(x.device, x.dtype))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_hed``, clamped to [0, 1]."""
    od = torch.einsum("nd...,dc->nc...", hed, RGB_FROM_HED.to(hed.device, hed.dtype))
    return torch.exp(od * _LOG_EPS).clamp(0.0, 1.0)


def hed_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """``x`` ``(N, 3, *S)`` with every patch's stain amounts scaled and shifted at random (module docstring):
    a new tensor in [0, 1]. ``strength`` 0 returns ``x`` unchanged."""
    if strength <= 0:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"stain augmentation needs RGB patches (3 channels), got {x.shape[1]}")
    n = x.shape[0]
    shape = (n, 3) + (1,) * (x.ndim - 2)
    alpha = 1.0 + (torch.rand(n, 3, generator=gen, device=x.device) * 2 - 1) * strength
    beta = (torch.rand(n, 3, generator=gen, device=x.device) * 2 - 1) * strength
    hed = rgb_to_hed(x.float())
    return hed_to_rgb(hed * alpha.view(shape) + beta.view(shape))


def check_stain_channels(strength: float, n_channels: int, what: str) -> None:
    """A clear error when stain jitter is asked of images that are not RGB (``what`` names them)."""
    if strength > 0 and n_channels != 3:
        raise MedsegError(f"stain jitter changes the H&E stain amounts of RGB images; {what} {n_channels} "
                          "channel(s): set it to off (0)")
