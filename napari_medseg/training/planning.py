"""Plan a run to fit the data and the machine before it starts (as nnU-Net plans its patch and batch).

- ``activation_bytes_per_voxel(model_cfg)``: the bytes the network keeps for its backward pass per voxel of a
  training patch, counted once per model config: a forward pass under ``saved_tensors_hooks`` on the meta
  device (shapes only, no compute), or a real pass at the smallest input where the meta device cannot run
  the model, or a table value where that would be slow. It is linear in the voxels for every model here.
  ``half=True``: the same under 16-bit autocast (the step's ``amp`` on a GPU, or on a CPU that computes
  bfloat16 natively), about half: counted from two real CPU passes under bfloat16 autocast.
- ``estimate_memory``: the bytes one training step needs, on the host and on the training device: the
  activations times ``ACTIVATION_FACTOR`` (their gradients and the convolutions' workspace come on top),
  the weights and optimiser state, the step's float copies of the batch (normalisation, augmentation grid),
  the validation patches kept in memory, the loader's queue, and a fixed runtime share. Calibrated against
  the peak RSS of real CPU runs (docs/training.md, "Planning the memory"): it errs on the high side, 1.4-1.8x
  the measured peaks (up to 2.8x for the smallest patches, where the fixed share dominates).
- ``patch_for_edge``: the patch for the Train widget's one *patch size* number (the in-plane edge): 2D
  ``(edge, edge)``; 3D the Z size covering the same physical extent (nnU-Net's start: an isotropic patch in
  millimetres); each axis no larger than the image needs (a 64-slice volume gets at most 64 slices).
- ``default_edge``: the largest edge whose step fits the compute target (voxels per step) and the memory.
- ``fit_to_memory``: the run as set if it fits the usable memory; else smaller batch then patch, with a
  message that says what changed and why; refused (``Plan.refused``) if even the smallest does not fit.

Pure: no Qt, no napari; torch only for the activation count.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medseg.models.config import ModelConfig
from napari_medseg.training.config import TrainConfig

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
#: peak step memory / saved activations, measured 2.15 (3D U-Net), 2.28 (2D U-Net), 1.47 (3D Attention U-Net)
ACTIVATION_FACTOR = 2.5
#: what a step needs whatever its size (allocator pools, first-use buffers of the kernels): measured 0.15-0.33 GB
FIXED_BYTES = 400 * MIB
#: float32 copies of a patch voxel per channel during a step (input, normalised, geometric and photometric views)
STEP_COPIES = 6
#: per voxel besides the channels: sampling grid and elastic field (float32 x dims), int64 target, masks
STEP_BYTES_PER_VOXEL = 40
#: optimiser bytes per parameter: weights, gradients, AdamW's two moments (float32); the weight average adds 4
PARAM_BYTES = 16
#: host RAM left to napari, the previews and the rest of the desktop
HOST_RESERVE = 1 * GIB
#: share of the rest a run may plan to use (the estimate is an estimate; other programs move)
USABLE_SHARE = 0.75
#: voxels per step (patch x batch) the default 3D patch aims at: a step of a few seconds on a CPU
STEP_VOXELS = {"cpu": 1 << 21, "mps": 1 << 22, "cuda": 1 << 23}
#: the patch edges the defaults and the adaptation start from / do not go below before the batch drops to 1
EDGE_MAX = {2: 256, 3: 128}
EDGE_FLOOR = {2: 128, 3: 64}
#: bytes per voxel where counting would take seconds (3D Swin-UNETR's smallest input is 64^3)
FALLBACK_BYTES_PER_VOXEL = 4000.0
#: saved activations under 16-bit autocast / float32 where they are not counted: measured 0.50-0.61 for the
#: U-Nets (convolution outputs in bfloat16, a few float32 reductions), 0.69 for the 2D Swin-UNETR
HALF_SHARE_FALLBACK = 0.7


@dataclass(frozen=True)
class MemoryEstimate:
    host: int  # bytes of RAM
    device: int  # bytes of GPU memory (0 when training on the CPU or Apple MPS: the RAM holds everything)

    @property
    def total(self) -> int:
        return self.host + self.device


@dataclass
class Plan:
    """What ``fit_to_memory`` decided: the config to run (patch and batch possibly reduced)."""

    cfg: TrainConfig
    estimate: MemoryEstimate
    usable: MemoryEstimate
    changes: list[str] = field(default_factory=list)  # e.g. ["batch 4 -> 2", "patch 64x256x256 -> 64x128x128"]
    refused: bool = False
    message: str = ""  # for the user, when something changed or the run is refused

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def gb(n: float) -> str:
    return f"{n / GIB:.1f} GB" if n >= 0.1 * GIB else f"{n / MIB:.0f} MB"


def size_text(patch: tuple[int, ...]) -> str:
    return " x ".join(str(int(p)) for p in patch)


# -- the network's activations -----------------------------------------------------------------------
#: counted activations per (model config, checkpointed, half): the one record of what is counted
_COUNTS: dict[tuple[ModelConfig, bool, bool], float] = {}


def activation_bytes_per_voxel(model_cfg: ModelConfig, checkpointed: bool = False, half: bool = False) -> float:
    """Bytes the network saves for backward per input voxel (batch 1), counted once per config.

    ``checkpointed`` (``TrainConfig.grad_checkpoint``): what the checkpointed blocks keep (their inputs) plus
    the largest block's own activations, which the backward pass recomputes and holds, one block at a time.
    ``half``: under bfloat16 autocast (see ``_half_bytes_per_voxel``)."""
    key = (model_cfg, bool(checkpointed), bool(half))
    if key not in _COUNTS:
        _COUNTS[key] = (_half_bytes_per_voxel(model_cfg, checkpointed) if half
                        else _float_bytes_per_voxel(model_cfg, checkpointed))
    return _COUNTS[key]


def activation_count_ready(model_cfg: ModelConfig, checkpointed: bool = False, half: bool = False) -> bool:
    """Whether ``activation_bytes_per_voxel`` has counted this config already (then it answers at once; the
    first count runs passes of the network: 0.1-1.2 s on a 2-core CPU, so a widget runs it off its thread)."""
    return (model_cfg, bool(checkpointed), bool(half)) in _COUNTS


def _float_bytes_per_voxel(model_cfg: ModelConfig, checkpointed: bool) -> float:
    from napari_medseg.models.registry import min_input_size

    size = min_input_size(model_cfg)
    shape = (size,) * model_cfg.spatial_dims
    try:
        return _saved_bytes(model_cfg, shape, "meta", checkpointed) / math.prod(shape)
    except Exception as e:  # e.g. a model that reads a value (``.item()``) while building its masks
        log.debug("meta-device count failed for %s (%s)", model_cfg.name, e)
    if math.prod(shape) > 40_000:
        return FALLBACK_BYTES_PER_VOXEL
    try:
        return _saved_bytes(model_cfg, shape, "cpu", checkpointed) / math.prod(shape)
    except Exception:
        log.exception("could not count the activations of %s; using %s B/voxel", model_cfg.name,
                      FALLBACK_BYTES_PER_VOXEL)
        return FALLBACK_BYTES_PER_VOXEL


def _half_bytes_per_voxel(model_cfg: ModelConfig, checkpointed: bool) -> float:
    """Saved bytes per voxel under bfloat16 autocast: the growth between two real CPU passes, at the smallest
    input and at twice its edge (the autocast's bfloat16 copies of the weights are saved too, the same at both
    sizes, so they drop out of the difference). ``HALF_SHARE_FALLBACK`` x the float32 count where the larger
    pass would be slow (more than 300k voxels) or fails."""
    import torch

    from napari_medseg.models.registry import min_input_size

    full = activation_bytes_per_voxel(model_cfg, checkpointed)
    size = min_input_size(model_cfg)
    small, large = ((s,) * model_cfg.spatial_dims for s in (size, 2 * size))
    if math.prod(large) <= 300_000:
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                grown = _saved_bytes(model_cfg, large, "cpu", checkpointed) - _saved_bytes(
                    model_cfg, small, "cpu", checkpointed)
            return min(full, grown / (math.prod(large) - math.prod(small)))
        except Exception as e:
            log.debug("bfloat16 count failed for %s (%s)", model_cfg.name, e)
    return HALF_SHARE_FALLBACK * full


def half_precision_step(cfg: TrainConfig, device_type: str) -> bool:
    """Whether ``cfg``'s step runs under 16-bit autocast on ``device_type`` (as ``select_device`` sets it up):
    ``amp`` on a CUDA GPU, or on a CPU that computes bfloat16 natively."""
    if not cfg.amp or device_type not in ("cpu", "cuda"):
        return False
    if device_type == "cuda":
        return True
    from napari_medseg.models.devices import cpu_bf16_native

    return cpu_bf16_native()


def _saved_bytes(model_cfg: ModelConfig, shape: tuple[int, ...], device: str, checkpointed: bool = False) -> int:
    import torch

    from napari_medseg.models.registry import build_model

    with torch.device(device):
        model = build_model(model_cfg).train()
    params = {id(p) for p in model.parameters()}
    seen: dict[int, int] = {}
    inside: list[int] = []  # the checkpoint blocks whose forward runs now (outermost first)
    per_block: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(t) not in params and id(base) not in params:
            seen[id(base)] = base.numel() * base.element_size()
            if inside:
                per_block[inside[0]] = per_block.get(inside[0], 0) + base.numel() * base.element_size()
        return t

    x = torch.zeros((1, model_cfg.in_channels, *shape), device=device)
    if checkpointed:  # first a plain pass that attributes each saved tensor to its block
        from napari_medseg.training.finetune import apply_grad_checkpoint, checkpoint_blocks

        blocks = checkpoint_blocks(model)
        def enter(i: int) -> Any:
            return lambda *_: inside.append(i)  # returns None: the input stays

        def leave(*_: Any) -> None:
            inside.pop()

        hooks = [h for i, b in enumerate(blocks)
                 for h in (b.register_forward_pre_hook(enter(i)), b.register_forward_hook(leave))]
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                first = model(x)
            del first
        finally:
            for h in hooks:
                h.remove()
        seen.clear()
        apply_grad_checkpoint(model)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values()) + max(per_block.values(), default=0)


def n_parameters(model_cfg: ModelConfig) -> int:
    return _n_parameters(model_cfg)


@functools.lru_cache(maxsize=32)
def _n_parameters(model_cfg: ModelConfig) -> int:
    import torch

    from napari_medseg.models.registry import build_model

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(model_cfg).parameters())
    except Exception:
        return sum(p.numel() for p in build_model(model_cfg).parameters())


# -- the estimate ----------------------------------------------------------------------------------
def estimate_memory(cfg: TrainConfig, model_cfg: ModelConfig, patch: tuple[int, ...], n_channels: int = 1,
                    itemsize: int = 1, device_type: str = "cpu") -> MemoryEstimate:
    """Bytes a training step of ``cfg`` with ``patch`` (the model's spatial patch) needs; see the module
    docstring for what counts."""
    vox = math.prod(int(p) for p in patch)
    n_l, n_u = cfg.split_batch()
    n = n_l + n_u
    half = half_precision_step(cfg, device_type)
    act = ACTIVATION_FACTOR * activation_bytes_per_voxel(model_cfg, cfg.grad_checkpoint, half) * vox * n
    if cfg.semi != "none":  # the teacher's no-grad pass: one layer's outputs at a time, and its probabilities
        act += n * vox * 4 * (model_cfg.out_channels * 2 + 16)
    params = n_parameters(model_cfg) * (PARAM_BYTES + (8 if cfg.keeps_ema else 0))
    step = n * vox * (4 * n_channels * STEP_COPIES + STEP_BYTES_PER_VOXEL)
    raw = vox * (n_channels * itemsize + 1)  # one patch as read: image + uint8 labels
    cached = raw * (cfg.max_val_patches if cfg.val_fraction > 0 else 0) + raw * cfg.prefetch * n
    if device_type == "cuda":
        return MemoryEstimate(host=FIXED_BYTES + int(cached + n * raw), device=int(act + params + step))
    return MemoryEstimate(host=int(FIXED_BYTES + act + params + step + cached), device=0)


def available_memory(device_type: str = "cpu") -> MemoryEstimate:
    """Free RAM (and free memory on the current GPU for ``"cuda"``)."""
    from napari_medseg.training.guard import available_ram

    host = available_ram()
    dev = 0
    if device_type == "cuda":
        import torch

        if torch.cuda.is_available():  # without one, training fails later with its own clear message
            dev = int(torch.cuda.mem_get_info()[0])
    return MemoryEstimate(host=host, device=dev)


def usable_memory(available: MemoryEstimate) -> MemoryEstimate:
    """What a run may plan to use: the RAM beyond ``HOST_RESERVE``, times ``USABLE_SHARE``; 90 % of a GPU's."""
    return MemoryEstimate(host=int(max(0, available.host - HOST_RESERVE) * USABLE_SHARE),
                          device=int(available.device * 0.9))


def _fits(est: MemoryEstimate, usable: MemoryEstimate) -> bool:
    return est.host <= usable.host and est.device <= usable.device


# -- the patch -------------------------------------------------------------------------------------
def _valid(model_cfg: ModelConfig, size: float) -> int:
    """The model's valid size nearest to ``size`` (a multiple of its factor, at least its minimum)."""
    from napari_medseg.models.registry import min_input_size, required_multiple

    m = required_multiple(model_cfg)
    return max(min_input_size(model_cfg), int(round(size / m)) * m)


def patch_for_edge(edge: int, model_cfg: ModelConfig, shape: tuple[int, ...] | None = None,
                   spacing: tuple[float, ...] | None = None) -> tuple[int, ...]:
    """The patch for an in-plane ``edge``: ``(edge, edge)`` in 2D; in 3D ``(z, edge, edge)`` with ``z`` covering
    the same physical extent as the edge (``spacing`` ZYX); no axis larger than the image ``shape`` (the
    training level's spatial shape) needs, rounded up to a size the model takes."""
    from napari_medseg.models.registry import valid_size

    dims = model_cfg.spatial_dims
    sizes: list[float] = [float(edge)] * dims
    if dims == 3 and spacing is not None and len(spacing) >= 3:
        sz, sy, sx = (float(s) for s in spacing[-3:])
        if sz > 0 and sy > 0 and sx > 0:
            sizes[0] = edge * math.sqrt(sy * sx) / sz
    patch = [_valid(model_cfg, s) for s in sizes]
    if shape is not None and len(shape) >= dims:
        patch = [min(p, valid_size(model_cfg, n)) for p, n in zip(patch, shape[-dims:])]
    return tuple(patch)


def default_edge(model_cfg: ModelConfig, shape: tuple[int, ...] | None, spacing: tuple[float, ...] | None,
                 batch: int, *, cfg: TrainConfig | None = None, n_channels: int = 1, itemsize: int = 1,
                 device_type: str = "cpu", available: MemoryEstimate | None = None) -> int:
    """The largest edge (at most ``EDGE_MAX``) whose patch x ``batch`` stays within the compute target
    ``STEP_VOXELS`` (3D) and whose step fits the usable memory; the model's smallest size if none does."""
    from napari_medseg.models.registry import min_input_size, required_multiple

    dims = model_cfg.spatial_dims
    cfg = (cfg or TrainConfig(model=model_cfg)).replace(batch_size=max(1, batch))
    usable = usable_memory(available) if available is not None else None
    m, lo = required_multiple(model_cfg), min_input_size(model_cfg)
    top = max(lo, EDGE_MAX[dims] // m * m)
    for edge in range(top, lo - 1, -m):
        patch = patch_for_edge(edge, model_cfg, shape, spacing)
        if dims == 3 and math.prod(patch) * batch > STEP_VOXELS.get(device_type, STEP_VOXELS["cpu"]):
            continue
        if usable is not None and not _fits(
                estimate_memory(cfg, model_cfg, patch, n_channels, itemsize, device_type), usable):
            continue
        return edge
    return lo


def fit_to_memory(cfg: TrainConfig, model_cfg: ModelConfig, edge: int, patch_of: Callable[[int], tuple[int, ...]],
                  available: MemoryEstimate, *, n_channels: int = 1, itemsize: int = 1,
                  device_type: str = "cpu") -> Plan:
    """``cfg`` as set (patch ``patch_of(edge)``) if its step fits the usable part of ``available``; else the
    batch down to 2, the edge down to ``EDGE_FLOOR``, the batch to 1, the edge to the model's minimum, until
    it fits; refused if nothing does. ``Plan.message`` says what changed and why."""
    from napari_medseg.models.registry import min_input_size, required_multiple

    dims = model_cfg.spatial_dims
    usable = usable_memory(available)

    def est(e: int, b: int) -> MemoryEstimate:
        return estimate_memory(cfg.replace(batch_size=b), model_cfg, patch_of(e), n_channels, itemsize, device_type)

    batch = cfg.batch_size
    first = est(edge, batch)
    if _fits(first, usable):
        return Plan(cfg.replace(patch_size=patch_of(edge)), first, usable)
    m, lo = required_multiple(model_cfg), min_input_size(model_cfg)
    floor = max(lo, EDGE_FLOOR[dims])

    def smaller(e: int, bound: int) -> int | None:
        """The largest edge below ``e`` (not below ``bound``) that gives a smaller patch."""
        for e2 in range(e - m, bound - 1, -m):
            if patch_of(e2) != patch_of(e):
                return e2
        return None

    e, b = edge, batch
    now = first
    while not _fits(now, usable):
        if b > 2:
            b = max(2, b // 2)
        elif (e2 := smaller(e, floor)) is not None:
            e = e2
        elif b > 1:
            b = 1
        elif (e2 := smaller(e, lo)) is not None:
            e = e2
        else:
            break
        now = est(e, b)
    where = _where(device_type, available, usable)
    asked = f"{dims}D patch {size_text(patch_of(edge))} with batch {batch}"
    if not _fits(now, usable):
        msg = (f"Training not started: {asked} needs about {gb(first.total)} of memory, and even the smallest "
               f"setting (patch {size_text(patch_of(e))}, batch {b}) needs about {gb(now.total)}; {where}. Close "
               "other programs, choose a smaller model, or train in 2D.")
        return Plan(cfg, first, usable, refused=True, message=msg)
    changes = []
    if b != batch:
        changes.append(f"batch {batch} -> {b}")
    if patch_of(e) != patch_of(edge):
        changes.append(f"patch {size_text(patch_of(edge))} -> {size_text(patch_of(e))}")
    msg = (f"{asked} needs about {gb(first.total)} of memory; {where}. Training with patch "
           f"{size_text(patch_of(e))} and batch {b} instead (about {gb(now.total)}); the patch size and batch "
           "fields now show what runs.")
    return Plan(cfg.replace(patch_size=patch_of(e), batch_size=b), now, usable, changes, message=msg)


def _where(device_type: str, available: MemoryEstimate, usable: MemoryEstimate) -> str:
    text = (f"this machine has {gb(available.host)} of RAM free, of which a run may use {gb(usable.host)} "
            "(the rest stays for napari and other programs)")
    if device_type == "cuda":
        text += f", and the GPU {gb(available.device)} free"
    return text


def image_geometry(source: object, level: int = 0) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(spatial shape, pixel size) of an ``ImageSource``'s ``level`` (the training level)."""
    lv = min(level, len(source.levels) - 1)  # type: ignore[attr-defined]
    return (tuple(int(s) for s in source.level_shape(lv)),  # type: ignore[attr-defined]
            tuple(float(s) for s in np.asarray(source.level_pixel_size(lv))))  # type: ignore[attr-defined]


__all__ = ["MemoryEstimate", "Plan", "activation_bytes_per_voxel", "activation_count_ready", "available_memory",
           "default_edge", "estimate_memory", "fit_to_memory", "half_precision_step", "image_geometry", "patch_for_edge",
           "usable_memory"]
