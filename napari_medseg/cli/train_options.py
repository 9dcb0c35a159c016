"""Option groups of ``napari-medseg train`` beyond its data, model and device options.

Each ``OptionGroup`` adds its flags to the parser and names the ``TrainConfig`` field each flag sets
(``(argparse dest, field)`` pairs); ``cli/train.py`` copies every flag the user gave onto its field. A technique
with its own flags defines its group (here or in its own module) and lists it in ``GROUPS``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


def floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2.5,4, got {s!r}") from e


@dataclass(frozen=True)
class OptionGroup:
    title: str
    add: Callable[[argparse._ArgumentGroup], None]
    fields: tuple[tuple[str, str], ...]  # (argparse dest, TrainConfig field)


def _memory(c: argparse._ArgumentGroup) -> None:
    c.add_argument("--grad-checkpoint", action="store_true", default=None,
                   help="gradient checkpointing: recompute the blocks' activations in the backward pass (about a "
                        "quarter of the activation memory for 1.3-1.5x the step time; same results)")
    c.add_argument("--accumulate", type=int, metavar="N", help="gradient accumulation: N micro-batches of "
                   "--batch-size per optimiser step (default 1)")
    c.add_argument("--clip-grad", type=float, metavar="X", help="clip the global gradient norm to X (default 0: off)")
    c.add_argument("--freeze", choices=("none", "encoder"), help="freeze the encoder's weights (fine-tuning)")
    c.add_argument("--unfreeze-at", type=float, metavar="F", help="with --freeze encoder: the encoder learns too "
                   "after this share of the run (e.g. 0.5; at lr x --encoder-lr-scale; default 0: never)")
    c.add_argument("--freeze-bn", action="store_true", default=None, help="batch/instance norm: keep the running "
                   "statistics (eval mode) and freeze their weights")
    c.add_argument("--bn-reestimate", type=int, metavar="N", help="with --freeze-bn: first re-estimate the running "
                   "statistics over N batches of these images (AdaBN)")
    c.add_argument("--encoder-lr-scale", type=float, metavar="X", help="the encoder's learning rate is lr x X "
                   "(layer-wise learning rate; default 1)")
    c.add_argument("--label-smoothing", type=float, metavar="X", help="label smoothing of the cross-entropy "
                   "(default 0)")
    c.add_argument("--class-weights", type=floats, metavar="A,B,C", help="cross-entropy weight of each class, "
                   "background first (one per class)")
    c.add_argument("--stain-jitter", type=float, metavar="S", help="H&E stain augmentation of RGB images: each "
                   "stain's amount x (1 +- S) and +- S per patch (0.05 light, 0.2 strong; default 0: off)")


def _distillation(k: argparse._ArgumentGroup) -> None:
    k.add_argument("--distill-from", metavar="TEACHER", help="a trained checkpoint or package of ours that teaches "
                   "this model on every pixel, beside the labels")
    k.add_argument("--kd-weight", type=float, help="weight of the distillation term (default 3)")
    k.add_argument("--kd-temperature", type=float, help="softmax temperature (default 2)")
    k.add_argument("--kd-mode", choices=("pixel", "channel"), help="pixel (logit KD, default) or channel-wise")
    k.add_argument("--unlabelled-ratio", type=float, help="windows from anywhere per labelled patch (semi-supervised "
                   "or distillation; default 0, distil 1)")


def _domain(d: argparse._ArgumentGroup) -> None:
    d.add_argument("--domain-adapt", choices=("none", "output", "dann"), help="align the painted (source) images "
                   "with --target-images: 'output' (softmax maps, any model) or 'dann' (bottleneck features)")
    d.add_argument("--target-images", metavar="DIR|FILES", help="unlabelled images of the new site/stain: a folder "
                   "or comma-separated files (the target domain of --domain-adapt)")
    d.add_argument("--da-weight", type=float, metavar="X", help="weight of the domain loss (default 0.1)")
    d.add_argument("--da-rampup", type=float, metavar="F", help="fraction of the run over which the gradient "
                   "reversal ramps up (default 1)")
    d.add_argument("--da-target-ratio", type=float, metavar="R", help="target windows per labelled patch (default 1)")


def _losses(b: argparse._ArgumentGroup) -> None:
    b.add_argument("--boundary-loss", choices=("none", "boundary", "hausdorff"), help="boundary-aware loss on "
                   "patches labelled in full (dense masks only): Kervadec's boundary loss or the Hausdorff "
                   "distance-transform loss (default none)")
    b.add_argument("--boundary-weight", type=float, metavar="X", help="its weight once ramped up (default 0.5)")
    b.add_argument("--boundary-rampup", type=float, metavar="F", help="fraction of the run over which its weight "
                   "ramps up from 0 (default 0.5)")
    b.add_argument("--deep-supervision", action="store_true", default=None, help="the loss on every output head "
                   "(unetpp), the deepest weighing most")
    b.add_argument("--contact-weight", type=float, metavar="X", help="separation weights for objects (--objects): "
                   "the cross-entropy weighs 1 + X on the painted pixels between two close objects, the gaps that "
                   "split touching nuclei (default: 10 with object classes, else off; 0: off; docs/objects.md)")
    b.add_argument("--contact-radius", type=int, metavar="PX", help="with --contact-weight: pixels with two objects "
                   "within this many pixels are weighted (default 5)")


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


MEMORY = OptionGroup("memory, fine-tuning, loss weighting and stain augmentation (docs/training.md)", _memory,
                     _same("grad_checkpoint", "accumulate", "clip_grad", "freeze", "unfreeze_at", "freeze_bn",
                           "bn_reestimate", "encoder_lr_scale", "label_smoothing", "class_weights", "stain_jitter"))
DISTILLATION = OptionGroup("distillation (docs/deployment.md; napari-medseg distil TEACHER ... sets the defaults)",
                           _distillation,
                           _same("distill_from", "kd_weight", "kd_temperature", "kd_mode", "unlabelled_ratio"))

DOMAIN = OptionGroup("domain adaptation (docs/training.md; --target-images is read with the data)", _domain,
                     _same("domain_adapt", "da_weight", "da_rampup", "da_target_ratio"))

LOSSES = OptionGroup("boundary losses, deep supervision and separation weights (docs/training.md)", _losses,
                     _same("boundary_loss", "boundary_weight", "boundary_rampup", "deep_supervision",
                           "contact_weight", "contact_radius"))

#: every group, in the order ``--help`` lists them
GROUPS: list[OptionGroup] = [MEMORY, LOSSES, DISTILLATION, DOMAIN]


def add_option_groups(p: argparse.ArgumentParser) -> None:
    for g in GROUPS:
        g.add(p.add_argument_group(g.title))


def option_fields() -> tuple[tuple[str, str], ...]:
    """``(argparse dest, TrainConfig field)`` of every group's flags."""
    return tuple(pair for g in GROUPS for pair in g.fields)
