"""Unsupervised domain adaptation: the painted images are the *source* domain, unlabelled images of a new site,
scanner or stain (``TrainingItem(domain="target")``) the *target*; a domain discriminator learns to tell the two
apart and the segmentation network learns, through a gradient reversal layer, to make them indistinguishable.

- ``domain_adapt="output"``: output-space alignment (Tsai et al. 2018, AdaptSegNet; Vu et al. 2019, AdvEnt): a
  small fully convolutional discriminator on the softmax maps of source vs target patches. Model-agnostic.
- ``domain_adapt="dann"``: feature alignment (Ganin & Lempitsky 2015, DANN): the discriminator sees the
  bottleneck's feature map, tapped with a forward hook (``bottleneck``: per family).

One backward pass does both players: the discriminator's gradient is the domain loss's, the network's is its
negative times ``lambda(p) = 2 / (1 + exp(-10 p)) - 1`` (DANN's schedule over the run's progress ``p``, reaching
its plateau after ``da_rampup`` of the run), so the alignment starts once the segmentation has begun to learn.
The discriminator lives in the run (its parameters are a group of the run's optimiser), never in the model:
checkpoints and predictions are unchanged. Written from the papers; the gradient-reversal idea as in
fungtion/DANN and thuml/Transfer-Learning-Library (both MIT), no code copied.

Tensors: logits ``(N, K, *S)``; the batch's first ``n_source`` patches are the painted (source) ones and its last
``n_target`` the target ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_medseg.core.errors import MedsegError

MODES = ("none", "output", "dann")
#: families whose bottleneck ``bottleneck`` finds (DANN); output-space alignment works with every model
DANN_FAMILIES = ("unet", "attention_unet", "unetpp", "light_unet")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """The identity forward; the gradient times ``-coeff`` backward."""
    return _GradReverse.apply(x, float(coeff))


def dann_lambda(progress: float, rampup: float = 1.0, gamma: float = 10.0) -> float:
    """``2 / (1 + exp(-gamma t)) - 1`` with ``t = progress / rampup`` clipped to [0, 1] (1 from the start when
    ``rampup`` is 0): 0 at the start, 0.987 at ``t = 0.5``, 0.9999 at ``t = 1``."""
    t = 1.0 if rampup <= 0 else min(1.0, max(0.0, progress / rampup))
    return 2.0 / (1.0 + math.exp(-gamma * t)) - 1.0


class DomainDiscriminator(nn.Module):
    """A fully convolutional domain classifier ``(N, C, *S) -> (N, 1, *S')`` logits (target = 1), no
    normalisation layers (its batches mix domains on purpose). ``strided`` 4 x 4 stride-2 convolutions (the
    output-space discriminator on full-resolution maps), else 3 x 3 stride-1 ones (on a bottleneck map), then a
    1 x 1 classifier."""

    def __init__(self, in_channels: int, spatial_dims: int = 2, width: int = 64, depth: int = 3,
                 strided: bool = True) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            out = width * min(2 ** i, 2) if strided else width
            layers += [conv(c, out, 4, stride=2, padding=1) if strided else conv(c, out, 3, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = out
        layers.append(conv(c, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def domain_bce(logits: torch.Tensor, n_source: int, n_target: int) -> torch.Tensor:
    """Binary cross-entropy of the discriminator's logits (source -> 0, target -> 1), each domain's mean
    weighted equally (the batch's domains need not be the same size). ``logits`` is source then target."""
    z = logits.float()
    src = F.binary_cross_entropy_with_logits(z[:n_source], torch.zeros_like(z[:n_source]))
    tgt = F.binary_cross_entropy_with_logits(z[-n_target:], torch.ones_like(z[-n_target:]))
    return 0.5 * (src + tgt)


def model_family(model: nn.Module) -> str:
    from napari_medseg.models.light_family import LightUNet
    from napari_medseg.training.finetune import _family

    return "light_unet" if isinstance(model, LightUNet) else _family(model)


def bottleneck(model: nn.Module) -> nn.Module:
    """The module whose output is ``model``'s bottleneck feature map (the deepest encoder stage), per family;
    a clear ``MedsegError`` for a model without one known here."""
    from napari_medseg.training.finetune import _split_attention_unet, _split_unet

    fam = model_family(model)
    if fam == "unet":
        return _split_unet(model)[0][-1]
    if fam == "attention_unet":
        return _split_attention_unet(model)[0][-1]
    if fam == "unetpp":
        return model.net.conv_4_0
    if fam == "light_unet":
        return model.encs[-1]
    own = getattr(model, "bottleneck", None)
    if isinstance(own, nn.Module):
        return own
    raise MedsegError(f"domain_adapt 'dann' taps the bottleneck features, and napari-medseg does not know where a "
                      f"{fam} model's bottleneck is; use it with {', '.join(DANN_FAMILIES)}, or choose "
                      "domain_adapt 'output' (works with every model)")


class DomainAdapter:
    """One run's domain alignment: the discriminator (built on the first batch, when the tapped map's channels
    are known, and added to ``opt`` as the param group ``"domain"``), the bottleneck tap for DANN, the loss."""

    def __init__(self, mode: str, model: nn.Module, opt: torch.optim.Optimizer, spatial_dims: int,
                 rampup: float = 1.0, lr: float = 1e-3) -> None:
        if mode not in MODES[1:]:
            raise MedsegError(f"domain_adapt must be one of {list(MODES)}, got {mode!r}")
        self.mode, self.opt, self.dims, self.rampup, self.lr = mode, opt, spatial_dims, rampup, lr
        self.disc: DomainDiscriminator | None = None
        self.feature: torch.Tensor | None = None
        self.capturing = True  # the hook keeps the last forward's map while the run lasts (``close`` ends it)
        self.last_loss: float | None = None
        self.last_acc: float | None = None  # the discriminator's accuracy on the last batch (0.5: aligned)
        self._handle = bottleneck(model).register_forward_hook(self._keep) if mode == "dann" else None
        self.device = next(model.parameters()).device

    def _keep(self, module: nn.Module, args: Any, out: Any) -> None:
        if self.capturing:
            self.feature = out[0] if isinstance(out, (tuple, list)) else out

    def close(self) -> None:
        """Remove the bottleneck hook (the model goes on without it)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.capturing, self.feature = False, None

    def _build(self, channels: int) -> DomainDiscriminator:
        disc = DomainDiscriminator(channels, self.dims, width=64 if self.mode == "dann" else 32, depth=3,
                                   strided=self.mode == "output").to(self.device)
        self.opt.add_param_group({"params": list(disc.parameters()), "lr": self.lr, "lr_scale": 1.0,
                                  "name": "domain"})
        return disc

    def loss(self, logits: torch.Tensor, n_source: int, n_target: int, progress: float) -> torch.Tensor:
        """The domain loss of one batch (its gradient reaches the network reversed and times ``lambda``)."""
        if self.mode == "dann":
            if self.feature is None:
                raise MedsegError("domain_adapt 'dann': the bottleneck hook saw no forward pass this step")
            x = self.feature.float()  # under autocast the map may be half precision; the discriminator is float32
            self.feature = None
        else:
            x = torch.softmax(logits.float(), 1)
        x = torch.cat([x[:n_source], x[-n_target:]])
        if self.disc is None:
            self.disc = self._build(x.shape[1])
        z = self.disc(grad_reverse(x, dann_lambda(progress, self.rampup)))
        loss = domain_bce(z, n_source, n_target)
        with torch.no_grad():
            hit = torch.cat([(z[:n_source] < 0).flatten(), (z[n_source:] > 0).flatten()]).float().mean()
        self.last_loss, self.last_acc = float(loss.detach()), float(hit)
        return loss


def split_domains(batch: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``x``, ``y`` with the batch's target patches (``"x_t"``, no paint) appended last, and their number."""
    if "x_t" not in batch:
        return x, y, 0
    xt = batch["x_t"].to(device, non_blocking=True)
    yt = torch.zeros((xt.shape[0], *y.shape[1:]), dtype=y.dtype, device=device)
    return torch.cat([x, xt]), torch.cat([y, yt]), int(xt.shape[0])


def check_domain_data(mode: str, items: list[Any]) -> int:
    """The number of target-domain items; a ``MedsegError`` when the mode needs some and there are none."""
    n = sum(1 for it in items if getattr(it, "domain", "source") == "target")
    if mode != "none" and n == 0:
        raise MedsegError(f"domain_adapt {mode!r} aligns the painted (source) images with unlabelled images of the "
                          "new domain, and none were given: add target images (--target-images DIR|FILES, or "
                          "TrainingItem(image, domain='target')), or set domain_adapt 'none'")
    return n


def target_items(spec: str | list[str]) -> list[Any]:
    """``TrainingItem(domain="target")`` for each image of ``spec``: a folder (its image files), or files given
    as a list or comma-separated; a clear ``MedsegError`` for a missing path or an empty folder."""
    from pathlib import Path

    from napari_medseg.training.data import TrainingItem
    from napari_medseg.training.datasets import SUFFIXES, read_image

    parts = [str(p).strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if str(p).strip()]
    paths: list[Path] = []
    for part in parts:
        p = Path(part)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(SUFFIXES))
            if not found:
                raise MedsegError(f"target images: the folder {p} holds no images ({', '.join(SUFFIXES)})")
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise MedsegError(f"target images: {p} does not exist (give a folder or comma-separated image files)")
    if not paths:
        raise MedsegError("target images: none given (a folder or comma-separated image files)")
    return [TrainingItem(read_image(p), None, name=f"target:{p.name}", domain="target") for p in paths]


__all__ = ["DANN_FAMILIES", "MODES", "DomainAdapter", "DomainDiscriminator", "bottleneck", "check_domain_data",
           "dann_lambda", "domain_bce", "grad_reverse", "split_domains", "target_items"]
