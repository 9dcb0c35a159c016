"""Where the model looks: Seg-Grad-CAM maps for a class, attention-gate coefficients and transformer attention
(no Qt, no napari).

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
- ``transformer_attention(model, x)``: one map of the attention each input token receives, without gradients:
  for models with global self-attention (MONAI ``SABlock``: ``unetr``, ``transunet``, ``nnformer``'s bottleneck)
  the attention *rollout* (Abnar & Zuidema 2020: per layer the head-averaged attention ``A``, ``A' = (A + I) / 2``
  for the residual path, multiplied through the layers from the last to the first) and of the rolled-out matrix
  the mean over its rows (the output tokens), i.e. how much of all final tokens is drawn from each input token;
  for models with window attention only (MONAI ``SwinTransformerBlock``: ``swin_unetr``, ``swin_unet``) the
  attention each token receives inside its (shifted) window, head- and query-averaged, times the window's token
  count (1 = uniform) and averaged over every Swin block. The token grid is resampled (linear) to the input's
  size and scaled to [0, 1] per image (min to max). The attention is recomputed from each attention module's
  input, captured by forward pre-hooks that are removed afterwards (also on error), so the model's output, its
  modules' settings (``save_attn``, flash attention) and its state dict are untouched.
- ``supported_kinds(model)``: the kinds that fit a model (Grad-CAM always; ``attention`` with attention gates;
  ``transformer`` with self- or window attention); ``explain`` names them when a kind does not fit.

All take a normalised batch ``(N, C, *S)`` as the model sees it and return float tensors ``(N, *S)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.explain_kinds import KINDS


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
        raise MedsegError("this model has no attention gates (attention_unet has them); "
                          f"kinds for this model: {', '.join(supported_kinds(model))}")
    maps: list[torch.Tensor] = []
    hooks = [g.psi.register_forward_hook(lambda _m, _i, out: maps.append(out.detach())) for g in gates]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [_resize(m, x.shape[2:]).clamp_(0, 1) for m in maps]


def _global_blocks(model: nn.Module) -> list[nn.Module]:
    from monai.networks.blocks.selfattention import SABlock

    return [m for m in model.modules() if isinstance(m, SABlock)]


def _window_blocks(model: nn.Module) -> list[nn.Module]:
    from monai.networks.nets.swin_unetr import SwinTransformerBlock

    return [m for m in model.modules() if isinstance(m, SwinTransformerBlock)]


def supported_kinds(model: nn.Module) -> tuple[str, ...]:
    """The kinds of ``KINDS`` that fit ``model``: Grad-CAM always, ``attention`` for attention gates,
    ``transformer`` for global self-attention or window attention."""
    from monai.networks.nets.attentionunet import AttentionBlock

    out = ["gradcam"]
    if any(isinstance(m, AttentionBlock) for m in model.modules()):
        out.append("attention")
    if _global_blocks(model) or _window_blocks(model):
        out.append("transformer")
    return tuple(out)


def _self_attention(sa: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """The head-averaged attention probabilities ``(B, N, N)`` (rows: queries) of MONAI's ``SABlock`` ``sa`` for
    its input ``x`` ``(B, N, C)``, computed as its non-flash path does (flash attention gives the same weights
    without keeping them)."""
    if sa.use_combined_linear:
        qkv = sa.input_rearrange(sa.qkv(x))
        q, k = qkv[0], qkv[1]
    else:
        q, k = sa.input_rearrange(sa.to_q(x)), sa.input_rearrange(sa.to_k(x))
    dtype = sa.attention_dtype or torch.float32
    q, k = q.to(dtype), k.to(dtype)  # (B, heads, N, d)
    n = q.shape[2]
    if sa.rel_positional_embedding is not None or sa.causal:  # the whole (B, heads, N, N) at once
        heads: list[torch.Tensor] | None = None
        att = torch.einsum("blxd,blyd->blxy", q, k) * sa.scale
        if sa.rel_positional_embedding is not None:
            att = sa.rel_positional_embedding(x, att, q)
        if sa.causal:
            att = att.masked_fill(sa.causal_mask[:, :, :n, :n] == 0, float("-inf"))
        heads = [att[:, i] for i in range(att.shape[1])]
    else:  # one head at a time: (B, N, N) in memory, not (B, heads, N, N)
        heads = None
    mean = torch.zeros(q.shape[0], n, n, dtype=torch.float32, device=q.device)
    for i in range(q.shape[1]):
        att = heads[i] if heads is not None else torch.einsum("bxd,byd->bxy", q[:, i], k[:, i]) * sa.scale
        if attn_mask is not None:
            att = att.masked_fill(attn_mask[:, None, :] == 0, float("-inf"))
        mean += att.float().softmax(-1)
    return mean / q.shape[1]


def rollout_received(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of head-averaged attention matrices ``(B, N, N)`` given first
    layer first: ``R = A'_L ... A'_1`` with ``A' = (A + I) / 2``; returns the mean of ``R``'s rows ``(B, N)``
    (sums to 1): how much of the final tokens comes from each input token. Computed as a vector times the
    matrices from the last layer down, never forming ``R``."""
    b, n, _ = layers[-1].shape
    v = torch.full((b, 1, n), 1.0 / n, dtype=torch.float32, device=layers[-1].device)
    for a in reversed(layers):
        v = 0.5 * (torch.bmm(v, a.float()) + v)
    return v[:, 0]


def _token_grid(n: int, size: Sequence[int]) -> tuple[int, ...]:
    """The grid of ``n`` tokens over an input of ``size`` (one patch size on every axis)."""
    d = len(size)
    f = round((math.prod(size) / n) ** (1.0 / d))
    for p in (f, f - 1, f + 1):
        if p >= 1 and all(s % p == 0 for s in size) and math.prod(s // p for s in size) == n:
            return tuple(s // p for s in size)
    raise MedsegError(f"cannot place {n} attention tokens on the input's grid {tuple(size)}")


def _window_received(wa: nn.Module, xw: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per window token, the attention it receives in MONAI's ``WindowAttention`` ``wa`` for its input windows
    ``xw`` ``(B * nW, n, C)``: averaged over heads and queries, times ``n`` (1 = uniform); ``(B * nW, n)``."""
    b, n, c = xw.shape
    qkv = wa.qkv(xw).reshape(b, n, 3, wa.num_heads, c // wa.num_heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0] * wa.scale, qkv[1]
    bias = wa.relative_position_bias_table[wa.relative_position_index[:n, :n].reshape(-1)].reshape(n, n, -1)
    att = q @ k.transpose(-2, -1) + bias.permute(2, 0, 1)[None]
    if mask is not None:
        nw = mask.shape[0]
        att = (att.view(b // nw, nw, wa.num_heads, n, n) + mask[None, :, None]).view(b, wa.num_heads, n, n)
    return att.float().softmax(-1).mean(dim=(1, 2)) * n


def _place_windows(r: torch.Tensor, block: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Window values ``r`` ``(B * nW, n)`` of a Swin block whose input was ``(B, *S, C)`` back on ``(B, *S)``:
    the block's padding, window partition and cyclic shift undone."""
    from monai.networks.nets.swin_unetr import get_window_size, window_reverse

    b, spatial = shape[0], tuple(shape[1:-1])
    ws, ss = get_window_size(spatial, block.window_size, block.shift_size)
    padded = tuple(-(-s // w) * w for s, w in zip(spatial, ws))
    m = window_reverse(r.reshape(-1, *ws, 1), ws, [b, *padded])[..., 0]
    if any(s > 0 for s in ss):
        m = torch.roll(m, shifts=tuple(ss), dims=tuple(range(1, len(spatial) + 1)))
    return m[(slice(None),) + tuple(slice(0, s) for s in spatial)]


def _scale01(m: torch.Tensor) -> torch.Tensor:
    """Per image, min to max -> [0, 1] (a constant map -> 0)."""
    flat = m.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    span = (hi - lo).clamp_min(1e-12).view(-1, *([1] * (m.ndim - 1)))
    return ((m - lo.view_as(span)) / span).clamp_(0, 1)


def transformer_attention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The transformer attention map ``(N, *S)`` in [0, 1] of ``x`` (see the module): rollout of the global
    self-attention blocks, or the window attention received per token when the model has only windows."""
    glob, windows = _global_blocks(model), _window_blocks(model)
    if not glob and not windows:
        raise MedsegError("this model has no transformer attention (unetr, transunet, nnformer, swin_unetr and "
                          f"swin_unet have it); kinds for this model: {', '.join(supported_kinds(model))}")
    size = tuple(x.shape[2:])
    seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = []
    placed: list[torch.Tensor] = []
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def on_sa(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((mod, args[0].detach(), kwargs.get("attn_mask", args[1] if len(args) > 1 else None)))

    def on_block(mod: nn.Module, args: tuple) -> None:
        shapes[mod.attn] = tuple(args[0].shape)

    def on_window(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
        r = _window_received(mod, args[0].detach(), mask)
        owner = next(b for b in windows if b.attn is mod)
        m = _place_windows(r, owner, shapes[mod])
        placed.append(_resize(m[:, None], size))

    if glob:
        hooks = [m.register_forward_pre_hook(on_sa, with_kwargs=True) for m in glob]
    else:
        hooks = [b.register_forward_pre_hook(on_block) for b in windows]
        hooks += [b.attn.register_forward_pre_hook(on_window, with_kwargs=True) for b in windows]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
            if glob:
                if not seen:
                    raise MedsegError("the model's self-attention layers did not run for this input")
                n = seen[-1][1].shape[1]
                if any(t.shape[:2] != seen[-1][1].shape[:2] for _, t, _ in seen):
                    raise MedsegError("the self-attention layers of this model see different token counts; "
                                      "cannot roll their attention out")
                received = rollout_received([_self_attention(m, t, am) for m, t, am in seen])
                grid = _token_grid(n, size)
                out = _resize(received.view(-1, 1, *grid), size)
            else:
                out = torch.stack(placed).mean(0)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return _scale01(out)


def explain(model: nn.Module, x: torch.Tensor, kind: str = "gradcam", class_index: int = 1,
            layer: str | None = None) -> list[torch.Tensor]:
    """``gradcam`` (one map), ``attention`` (one map per gate) or ``transformer`` (one map) for ``x``; each
    ``(N, *S)`` in [0, 1]. A kind the model does not support is a ``MedsegError`` naming those it does."""
    if kind not in KINDS:
        raise MedsegError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "attention":
        return attention_maps(model, x)
    if kind == "transformer":
        return [transformer_attention(model, x)]
    return [gradcam(model, x, class_index, layer)]
