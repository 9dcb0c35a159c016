"""The training craft: gradient checkpointing, freezing the encoder or the normalisation layers, layer-wise
learning rates, the optimiser step with gradient clipping (unscaled under AMP), and batch-norm re-estimation.

**Gradient checkpointing** (``apply_grad_checkpoint``): the forward of every block ``checkpoint_blocks`` names
(per family, below) runs under ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: only the
block's inputs are kept for the backward pass, its inner activations are computed again there. The wrapper
replaces the *bound* ``forward`` of each block instance (``types.MethodType``, so a ``deepcopy``, e.g. the
weight average, stays consistent) and renames nothing: the state-dict keys are those of the plain model, so
a checkpoint saved with it loads without it and back. MONAI's ``CheckpointUNet`` / torch's
``checkpoint_wrapper`` add ``.module`` (or a prefix stripped by hooks) to every key; this does not. Outside
a gradient pass (validation, previews under ``inference_mode``, tracing for export) a block runs as usual.
The recomputation would update batch-norm running statistics twice: they are put back after it.

**Encoder** (``encoder_modules``), per architecture:

- ``unet`` (MONAI ``UNet``): the down block of every level and the bottom block (the up blocks and the output
  are the decoder);
- ``attention_unet``: the input ``ConvBlock``, the ``ConvBlock`` of every level and the bottom one (attention
  gates, up-convolutions, merges and the 1x1 output are the decoder);
- ``unetpp``: ``conv_0_0`` ... ``conv_4_0`` (the backbone column of U-Net++); every ``upcat`` is decoder;
- ``swin_unetr``: the Swin transformer ``swinViT`` (what MONAI's self-supervised weights hold); the
  convolutional ``encoder1..10`` blocks on its skips count as decoder;
- ``swin_unet``: patch embedding, its norm, the encoder stages, patch merging and the bottleneck norm;
- any other model: its ``encoder_modules()`` method if it has one, else the top-level children whose name
  starts with ``enc``, ``down``, ``stem`` or ``patch_embed``; else a ``MedsegError``.

**Checkpointed blocks** (``checkpoint_blocks``): U-Net: every down/up block and the bottom; Attention U-Net:
every ``ConvBlock``, up-convolution, attention gate and merge; U-Net++: every ``conv_i_0`` and ``upcat``;
Swin models: every ``SwinTransformerBlock`` plus SwinUNETR's convolutional ``encoder*``/``decoder*`` blocks,
Swin-Unet's patch merging and expanding; others: a ``checkpoint_blocks()`` method, else the outermost modules
whose class name ends in ``Block`` or ``Unit`` (MONAI's blocks), else the top-level children with weights.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)

ENCODER_PREFIXES = ("enc", "down", "stem", "patch_embed")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


# -- the families' parts ------------------------------------------------------------------------------------
def _split_unet(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """MONAI UNet: ``Sequential(down, SkipConnection(Sequential(down, SkipConnection(...), up)), up)``."""
    from monai.networks.layers.simplelayers import SkipConnection

    enc: list[nn.Module] = []
    dec: list[nn.Module] = []
    seq = model.model
    while True:
        down, skip, up = seq[0], seq[1], seq[2]
        enc.append(down)
        dec.append(up)
        sub = skip.submodule
        if isinstance(sub, nn.Sequential) and len(sub) == 3 and isinstance(sub[1], SkipConnection):
            seq = sub
            continue
        enc.append(sub)  # the bottom block
        return enc, dec


def _split_attention_unet(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """MONAI AttentionUnet: ``Sequential(head, AttentionLayer, reduce)``; each layer's submodule is
    ``Sequential(ConvBlock, AttentionLayer)`` or, at the bottom, a ``ConvBlock``. (encoder, decoder, the
    decoder blocks worth checkpointing)"""
    from monai.networks.nets.attentionunet import AttentionLayer

    head, layer, reduce = model.model[0], model.model[1], model.model[2]
    enc: list[nn.Module] = [head]
    dec: list[nn.Module] = [reduce]
    ck_dec: list[nn.Module] = []
    while isinstance(layer, AttentionLayer):
        dec += [layer.attention, layer.upconv, layer.merge]
        ck_dec += [layer.upconv, layer.attention, layer.merge]
        sub = layer.submodule
        if isinstance(sub, nn.Sequential):
            enc.append(sub[0])
            layer = sub[1]
        else:
            enc.append(sub)
            break
    return enc, dec, ck_dec


def _family(model: nn.Module) -> str:
    from monai.networks.nets import AttentionUnet, SwinUNETR, UNet

    from napari_medseg.models.swin_unet import SwinUnet
    from napari_medseg.models.unet_family import UNetPlusPlus

    for cls, name in ((UNet, "unet"), (AttentionUnet, "attention_unet"), (UNetPlusPlus, "unetpp"),
                      (SwinUNETR, "swin_unetr"), (SwinUnet, "swin_unet")):
        if isinstance(model, cls):
            return name
    return type(model).__name__


def encoder_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that make up ``model``'s encoder (see the module docstring, per family)."""
    fam = _family(model)
    if fam == "unet":
        return _split_unet(model)[0]
    if fam == "attention_unet":
        return _split_attention_unet(model)[0]
    if fam == "unetpp":
        return [getattr(model.net, f"conv_{i}_0") for i in range(5)]
    if fam == "swin_unetr":
        return [model.swinViT]
    if fam == "swin_unet":
        return [model.patch_embed, model.embed_norm, model.encoder, model.merge, model.norm]
    own = getattr(model, "encoder_modules", None)
    if callable(own):
        return list(own())
    found = [m for n, m in model.named_children() if n.lower().startswith(ENCODER_PREFIXES)]
    if not found:
        raise MedsegError(f"napari-medseg does not know which part of a {fam} model is its encoder, so "
                          "freeze 'encoder' and encoder_lr_scale cannot be used with it (give the model an "
                          "encoder_modules() method, or keep freeze 'none' and encoder_lr_scale 1)")
    return found


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The encoder's parameters (each once)."""
    seen: dict[int, nn.Parameter] = {}
    for m in encoder_modules(model):
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def _outermost(modules: Iterable[nn.Module]) -> list[nn.Module]:
    mods = list(dict.fromkeys(modules))
    inner = {id(c) for m in mods for c in m.modules() if c is not m}
    return [m for m in mods if id(m) not in inner]


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks whose forward ``apply_grad_checkpoint`` wraps (see the module docstring, per family)."""
    fam = _family(model)
    if fam == "unet":
        enc, dec = _split_unet(model)
        return enc + dec
    if fam == "attention_unet":
        enc, _, ck_dec = _split_attention_unet(model)
        return enc + ck_dec
    if fam == "unetpp":
        return [m for n, m in model.net.named_children() if n.startswith(("conv_", "upcat_"))]
    if fam in ("swin_unetr", "swin_unet"):
        from monai.networks.nets.swin_unetr import PatchMerging, SwinTransformerBlock

        from napari_medseg.models.swin_unet import PatchExpand

        kinds: tuple[type, ...] = (SwinTransformerBlock, PatchMerging, PatchExpand)
        blocks = [m for m in model.modules() if isinstance(m, kinds)]
        blocks += [m for n, m in model.named_children() if n.startswith(("encoder", "decoder"))
                   and not isinstance(m, nn.ModuleList)]
        return _outermost(blocks)
    own = getattr(model, "checkpoint_blocks", None)
    if callable(own):
        return list(own())
    named = [m for m in model.modules() if m is not model and type(m).__name__.endswith(("Block", "Unit"))]
    if named:
        return _outermost(named)
    return [m for m in model.children() if next(m.parameters(), None) is not None]


# -- gradient checkpointing ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _running_stats_kept(block: nn.Module) -> Iterator[None]:
    """Batch-norm running statistics of ``block`` as they were before (the recomputation must not count twice)."""
    norms = [m for m in block.modules() if isinstance(m, _NORMS) and m.training and m.track_running_stats]
    saved = [[b.detach().clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
             for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs in zip(norms, saved):
                for b, s in zip([b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None],
                                bufs):
                    b.copy_(s)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    plain = type(self).forward
    if (not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.compiler.is_compiling()):
        return plain(self, *args, **kwargs)
    calls = [0]

    def run(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            return plain(self, *a, **k)
        with _running_stats_kept(self):  # the recomputation in the backward pass
            return plain(self, *a, **k)

    return checkpoint(run, *args, use_reentrant=False, **kwargs)


def apply_grad_checkpoint(model: nn.Module) -> int:
    """Checkpoint the forward of ``model``'s blocks (``checkpoint_blocks``) in place; state-dict keys do not
    change. Returns the number of blocks wrapped (0 when already applied)."""
    n = 0
    for block in checkpoint_blocks(model):
        fwd = block.__dict__.get("forward")
        if fwd is not None:
            if getattr(fwd, "__func__", None) is _checkpointed_forward:
                continue
            raise MedsegError(f"gradient checkpointing: a {type(block).__name__} block's forward is already "
                              "replaced by something else; it cannot be wrapped")
        block.forward = types.MethodType(_checkpointed_forward, block)  # type: ignore[method-assign]
        n += 1
    if n == 0 and not is_checkpointed(model):
        raise MedsegError(f"gradient checkpointing found no blocks to checkpoint in a {_family(model)} model")
    return n


def remove_grad_checkpoint(model: nn.Module) -> None:
    """Undo ``apply_grad_checkpoint``."""
    for m in model.modules():
        fwd = m.__dict__.get("forward")
        if fwd is not None and getattr(fwd, "__func__", None) is _checkpointed_forward:
            del m.__dict__["forward"]


def is_checkpointed(model: nn.Module) -> bool:
    return any(getattr(m.__dict__.get("forward"), "__func__", None) is _checkpointed_forward
               for m in model.modules())


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes a forward pass of ``model`` on ``x`` keeps for its backward pass (``saved_tensors_hooks``; each
    storage once, parameters excluded). With checkpointing, a block's saved inputs count, its inner
    activations do not (they are recomputed in the backward pass, one block at a time)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.device.type != "meta":
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


# -- freezing ------------------------------------------------------------------------------------------------
def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen normalisation layer: it stays in eval mode (running statistics used, not updated)."""
    self.training = False
    return self


def freeze_encoder(model: nn.Module) -> int:
    """``requires_grad = False`` on the encoder's parameters; returns how many tensors were frozen."""
    ps = encoder_parameters(model)
    for p in ps:
        p.requires_grad_(False)
    return len(ps)


def unfreeze_encoder(model: nn.Module, opt: torch.optim.Optimizer, lr: float, lr_scale: float = 1.0,
                     keep_norms_frozen: bool = False) -> int:
    """The frozen encoder learns from now on: its parameters need gradients again and join ``opt`` as a group of
    their own (rate ``lr`` x ``lr_scale``, fresh optimiser state); with ``keep_norms_frozen`` (``freeze_bn``) the
    affine weights of its norm layers stay frozen. Returns how many tensors were unfrozen."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    ps = [p for p in encoder_parameters(model) if not p.requires_grad
          and not (keep_norms_frozen and id(p) in norm_params)]
    if not ps:
        return 0
    for p in ps:
        p.requires_grad_(True)
    opt.add_param_group({"params": ps, "lr": lr * lr_scale, "lr_scale": lr_scale, "name": "encoder"})
    return len(ps)


def freeze_norm_layers(model: nn.Module) -> tuple[int, int]:
    """Batch- and instance-norm layers: those with running statistics stay in eval mode for good (their
    ``train()`` keeps them in eval), every one's affine weight and bias stop learning. Returns (layers kept
    in eval mode, affine tensors frozen)."""
    n_eval = n_affine = 0
    for m in model.modules():
        if not isinstance(m, _NORMS):
            continue
        if m.track_running_stats and m.running_mean is not None:
            m.train = types.MethodType(_eval_only_train, m)  # type: ignore[method-assign]
            m.training = False
            n_eval += 1
        for p in (m.weight, m.bias):
            if p is not None:
                p.requires_grad_(False)
                n_affine += 1
    return n_eval, n_affine


@torch.no_grad()
def reestimate_norm_stats(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """AdaBN: the running statistics of the batch-norm layers recomputed as the plain average over ``batches``
    (normalised inputs ``(N, C, *S)``), the weights untouched. Returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats
             and m.running_mean is not None]
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    moms = [m.momentum for m in norms]
    for m, _ in modes:
        m.training = False  # dropout and the rest as at prediction
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
        m.training = True
    n = 0
    try:
        for x in batches:
            model(x)
            n += 1
    finally:
        for m, tr in modes:
            m.training = tr
        for m, mom in zip(norms, moms):
            m.momentum = mom
    return n


# -- the optimiser -------------------------------------------------------------------------------------------
def param_groups(model: nn.Module, lr: float, encoder_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: frozen parameters (``requires_grad`` False) left out, so that nothing
    (weight decay included) touches them; with ``encoder_lr_scale`` != 1 the encoder in a group of its own
    whose ``lr_scale`` the schedule multiplies its rate by."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise MedsegError("every weight of the model is frozen: nothing would train (freeze less)")
    if encoder_lr_scale == 1.0:
        return [{"params": trainable, "lr": lr, "lr_scale": 1.0}]
    enc = {id(p) for p in encoder_parameters(model)}
    groups = [{"params": [p for p in trainable if id(p) in enc], "lr": lr * encoder_lr_scale,
               "lr_scale": encoder_lr_scale, "name": "encoder"},
              {"params": [p for p in trainable if id(p) not in enc], "lr": lr, "lr_scale": 1.0, "name": "rest"}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """``cfg.optimizer`` ("adamw", or "sgd" with momentum 0.9) over ``param_groups``."""
    groups = param_groups(model, cfg.lr, cfg.encoder_lr_scale)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate ``lr`` for every group, times the group's ``lr_scale``."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def optimizer_step(opt: torch.optim.Optimizer, scaler: Any, clip: float = 0.0) -> float | None:
    """One update from the accumulated gradients: with a ``GradScaler`` they are unscaled first (so the clip
    bound is on the true gradients), clipped to a global norm of ``clip`` (0: off), then applied. Returns the
    global gradient norm before clipping (None without clipping)."""
    norm = None
    if clip > 0:
        if scaler is not None:
            scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    if scaler is not None:
        scaler.step(opt)  # skips the update when the unscaled gradients hold inf/NaN
        scaler.update()
    else:
        opt.step()
    return norm


# -- applied to a run -----------------------------------------------------------------------------------------
#: batch numbers of the re-estimation's batches: far from the training's 0, 1, 2 ... (which stay as without it)
REESTIMATE_INDEX = 1 << 40


def next_batches(loader: Any, stop: Any, n: int) -> tuple[list[Any] | None, float]:
    """``n`` batches from the loader (the micro-batches of one optimiser step) and the seconds waited for them;
    ``(None, wait)`` when Stop came while waiting."""
    out, wait = [], 0.0
    for _ in range(n):
        b, w = loader.get(stop)
        wait += w
        if b is None:
            return None, wait
        out.append(b)
    return out, wait


def reestimate_run_stats(run: Any, n_batches: int) -> int:
    """``reestimate_norm_stats`` of a run's model over ``n_batches`` of its own patches (normalised, not
    augmented; labelled and unlabelled ones), then the weight average takes the new statistics too."""
    def batches() -> Iterator[torch.Tensor]:
        for i in range(n_batches):
            b = run.make_batch(REESTIMATE_INDEX + i)
            x = torch.cat([b["x_l"], *([b["x_u"]] if "x_u" in b else [])]).to(run.dev)
            yield run.norm.apply(x).contiguous(memory_format=run.mf)

    used = reestimate_norm_stats(run.model, batches())
    if run.ema is not None:
        with torch.no_grad():
            ema_bufs = dict(run.ema.module.named_buffers())
            for name, buf in run.model.named_buffers():
                ema_bufs[name].copy_(buf)
    log.info("batch-norm statistics re-estimated over %d batches", used)
    return used


def check_class_weights(weights: Sequence[float] | None, class_names: Sequence[str]) -> None:
    """One weight per class, background included, or a ``MedsegError`` naming them."""
    if weights is None or len(weights) == len(class_names):
        return
    raise MedsegError(f"class_weights has {len(weights)} values but the data have {len(class_names)} classes "
                      f"({', '.join(class_names)}): give one weight per class, background first")


def prepare_model(model: nn.Module, cfg: Any, from_scratch: bool = False) -> list[str]:
    """Freeze and checkpoint ``model`` as ``cfg`` says (after the weight average was copied from it); returns
    the warnings to show (a setting that finds nothing to act on, a frozen encoder that was never trained)."""
    warnings: list[str] = []
    if cfg.freeze == "encoder":
        n = freeze_encoder(model)
        log.info("froze %d encoder tensors", n)
        if from_scratch:
            warnings.append("freeze 'encoder' without starting weights keeps the encoder's random initial weights; "
                            "choose a model to start from (fine-tuning), or freeze nothing")
    elif cfg.encoder_lr_scale != 1.0:
        encoder_parameters(model)  # a model without a known encoder: the clear error now
    if cfg.freeze_bn:
        n_eval, n_affine = freeze_norm_layers(model)
        if n_eval == 0 and n_affine == 0:
            warnings.append("freeze_bn: this model has no batch- or instance-norm layer with running statistics or "
                            "weights (e.g. the U-Net's instance norm has neither); nothing was frozen")
    if cfg.grad_checkpoint:
        apply_grad_checkpoint(model)
    return warnings


def release_model(model: nn.Module) -> None:
    """The model as built, after the run: no checkpoint wrappers, no frozen weights, norm layers that follow
    ``train()`` again (``loop.train`` hands the trained model back clean, as it removes the guard's hooks)."""
    remove_grad_checkpoint(model)
    for m in model.modules():
        if getattr(m.__dict__.get("train"), "__func__", None) is _eval_only_train:
            del m.__dict__["train"]
    for p in model.parameters():
        p.requires_grad_(True)


__all__ = ["apply_grad_checkpoint", "check_class_weights", "checkpoint_blocks", "encoder_modules",
           "encoder_parameters", "freeze_encoder", "unfreeze_encoder", "freeze_norm_layers", "is_checkpointed", "make_optimizer",
           "next_batches", "optimizer_step", "param_groups", "prepare_model", "reestimate_norm_stats",
           "reestimate_run_stats", "release_model", "remove_grad_checkpoint", "saved_bytes", "set_lr"]
