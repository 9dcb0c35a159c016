"""Where the model looks: Seg-Grad-CAM maps for a class and attention-gate coefficients (no Qt, no napari).

- ``gradcam(model, x, class_index)``: Seg-Grad-CAM (Vinogradova et al. 2020, the segmentation form of Selvaraju et
  al.'s Grad-CAM, as ``jacobgil/pytorch-grad-cam``'s ``SemanticSegmentationTarget``): the class's logits summed
  over the pixels predicted as that class (or over ``region``) are differentiated with respect to one layer's
  activations; each channel is weighted by its mean gradient, the weighted sum goes through a ReLU, is resampled
  to the input's size (linear) and scaled to [0, 1] per image. The default layer is the bottleneck block (of the modules at the
  coarsest scale, the one that finishes last; found by one forward pass), where the maps are
  most class-specific; ``layer`` names another (``model.named_modules()``).
- ``attention_maps(model, x)``: the coefficients of every attention gate (MONAI ``AttentionBlock.psi``, a sigmoid:
  already in [0, 1]) resampled to the input's size, shallowest gate last as MONAI nests them; a model without gates
  is a ``MedsegError``.

Both take a normalised batch ``(N, C, *S)`` as the model sees it and return float tensors ``(N, *S)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_medseg.core.errors import MedsegError

KINDS = ("gradcam", "attention")


def _resize(m: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, 1, *s) -> (N, *size), linear."""
    mode = "bilinear" if m.ndim == 4 else "trilinear"
    return F.interpolate(m.float(), size=tuple(size), mode=mode, align_corners=False)[:, 0]


def deepest_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The name of the module whose feature map is the model's bottleneck: of the modules returning a map at the
    coarsest scale, the one that finishes last (the whole bottleneck block, not a branch inside it); one forward
    pass."""
    seen: list[tuple[int, str]] = []

    def record(name: str):
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == x.ndim and out.shape[0] == 1:
                seen.append((out[0, 0].numel(), name))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise MedsegError("Grad-CAM found no feature map in this model (give layer=...)")
    smallest = min(s for s, _ in seen)
    return [n for s, n in seen if s == smallest][-1]


def gradcam(model: nn.Module, x: torch.Tensor, class_index: int, layer: str | None = None,
            region: torch.Tensor | None = None) -> torch.Tensor:
    """Seg-Grad-CAM of ``class_index`` (a model channel, background = 0) for the batch ``x``; see the module.
    ``region`` ``(N, *S)`` bool: the pixels whose class score is explained (default: those predicted as it)."""
    out_ch = None
    modules = dict(model.named_modules())
    name = layer or deepest_layer(model, x)
    if name not in modules:
        raise MedsegError(f"no layer {name!r} in this model; give one of its named modules")
    acts: list[torch.Tensor] = []
    hook = modules[name].register_forward_hook(lambda _m, _i, out: acts.append(out))
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x)
            out_ch = logits.shape[1]
            if not 0 <= class_index < out_ch:
                raise MedsegError(f"class_index {class_index} is not a channel of this model (0..{out_ch - 1})")
            mask = (logits.argmax(1) == class_index) if region is None else region.to(torch.bool)
            score = (logits[:, class_index] * mask).sum()
            a = acts[-1]
            (grad,) = torch.autograd.grad(score, a)
    finally:
        hook.remove()
        model.train(was)
    weights = grad.mean(dim=tuple(range(2, grad.ndim)), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True)).detach()
    cam = _resize(cam, x.shape[2:])
    top = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (cam.ndim - 1)))
    return (cam / top).clamp_(0, 1)


def attention_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every attention gate's coefficients, each ``(N, *S)`` in [0, 1] (see the module)."""
    from monai.networks.nets.attentionunet import AttentionBlock

    gates = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    if not gates:
        raise MedsegError("this model has no attention gates (attention_unet has them); use Grad-CAM")
    maps: list[torch.Tensor] = []
    hooks = [g.psi.register_forward_hook(lambda _m, _i, out: maps.append(out.detach())) for g in gates]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [_resize(m, x.shape[2:]).clamp_(0, 1) for m in maps]


def explain(model: nn.Module, x: torch.Tensor, kind: str = "gradcam", class_index: int = 1,
            layer: str | None = None) -> list[torch.Tensor]:
    """``gradcam`` (one map) or ``attention`` (one map per gate) for ``x``; each ``(N, *S)`` in [0, 1]."""
    if kind not in KINDS:
        raise MedsegError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "attention":
        return attention_maps(model, x)
    return [gradcam(model, x, class_index, layer)]
