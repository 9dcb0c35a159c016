"""The Train widget's texts: the choices of the unpainted-pixels box and the tooltips of the form and its
Advanced part, with the measured figures they quote (benchmarks/RESULTS.md, docs/training.md)."""

from __future__ import annotations

SEMI_CHOICES = (("auto (by how you painted)", "auto"),
                ("labels only (supervised)", "none"), ("+ pseudo-labels (FixMatch-style)", "pseudo_label"),
                ("+ Mean Teacher consistency", "mean_teacher"))
SEMI_TOOLTIP = ("Learn also from the unpainted pixels. Pseudo-labels cost one extra forward pass per step (1.2-1.3x "
                "the step time, so fewer steps fit a time budget). Measured at equal time on MoNuSeg nuclei "
                "(benchmarks/RESULTS.md, 3 seeds): pseudo-labels gave +4.3 Dice when the paint sits in a few "
                "windows of a few images, the rest unpainted, and -0.3 to -0.65 (no gain) with scribbles spread "
                "over every image. 'auto' (the default) uses pseudo-labels while the paint spans at most 40 "
                "training patches; beyond, labels with the boundary regulariser (gated CRF; 2D strokes spread over the "
                "images: +0.9 Dice on 1 % MoNuSeg scribbles, +2.0 on 5 % ISBI ones at 300 s) or labels only; the "
                "message log says which it chose, and when that changes.")
DEFAULTS = {"2D": {"patch": 256, "batch": 4}, "3D": {"patch": 64, "batch": 2}}
ADVANCED_TIPS = {
    "grad_checkpoint": "Gradient checkpointing: keep only each block's input for the backward pass and compute the "
                       "rest again there. About a quarter of the activation memory (3D U-Net, 96^3) for "
                       "1.3-1.5x the step time; the same gradients. For large 3D patches.",
    "accumulate": "Gradient accumulation: add up the gradients of this many batches before each update, so a small "
                  "batch trains like a large one (batch x this) at the memory of the small one. The step count "
                  "and the schedule count updates.",
    "freeze_encoder": "Fine-tuning: the encoder's weights (the U-Net's down path, the Swin transformer) stay as they "
                      "start (from the chosen model); only the decoder learns. Needs a starting model.",
    "deep_supervision": "Deep supervision: the loss on every output head of the model (unetpp's nested decoders, "
                        "nnformer's decoder levels), the finest weighing most; other models have one head.",
    "stain_jitter": "H&E stain augmentation (RGB slides): every training patch gets random amounts of haematoxylin "
                    "and eosin (x 1 +- this, +- this), so a model painted on one lab's slides holds up on another's. "
                    "0.05 is light, 0.2 strong; off by default (docs/training.md says what it gave).",
    "crf_weight": "Boundary regulariser for scribbles (gated CRF loss): neighbouring pixels that look alike take the "
                  "same class, so an object's edge follows the image, not the stroke 3 px inside it. Costs about 3 % "
                  "of a step; uses every pixel, painted or not. 'auto' here: off, unless the unpainted-pixels "
                  "choice 'auto' adds it at 1, which it does for 2D strokes spread over the images (300 s runs, "
                  "3-9 seeds: +0.9 Dice on 1 % MoNuSeg scribbles, +2.0 on 5 % ISBI ones); a weight set here is used "
                  "with any method (docs/training.md).",
    "freeze_bn": "Fine-tuning: batch-norm layers keep their running statistics (eval mode) and their weights; "
                 "useful with small batches. The U-Net's instance norm has neither (the Attention U-Net uses "
                 "batch norm).",
    "bn_reestimate": "With frozen batch norm: first re-estimate its running statistics on this many batches of "
                     "your images (no weight changes), then freeze them: a model trained on other images adapts "
                     "its statistics to yours.",
    "unfreeze_at": "With the encoder frozen: it learns too once this share of the run has passed (gradual "
                   "fine-tuning: the decoder adapts first), at the learning rate x 'encoder lr'. Never by default.",
    "encoder_lr": "Layer-wise learning rate: the encoder learns at the learning rate x this (e.g. 0.1: it moves "
                  "ten times slower than the decoder, keeping more of a pretrained start).",
    "clip_grad": "Clip the gradients' global norm to this before each update (on the unscaled gradients under "
                 "mixed precision): steadies training with high learning rates or noisy labels. Off by default.",
    "label_smoothing": "Label smoothing of the cross-entropy on painted pixels: targets 1 - s for the painted class "
                       "and s spread over the others. Off by default.",
    "class_weights": "Weights of the classes in the cross-entropy, background first, one per class (e.g. 1, 3 to "
                     "weigh a rare foreground class 3x). Empty: all equal.",
    "contact_weight": "Separation weights for objects (classes marked as objects): the painted pixels that have two "
                      "objects within 5 px (the rims and the gap between close nuclei) weigh 1 + this in the "
                      "cross-entropy, so the model learns to split touching objects (the U-Net paper's weight map). "
                      "10 by default, for object classes only (no effect without them): on MoNuSeg nuclei, 10 CPU "
                      "minutes, it raised the held-out AJI from 0.49 to 0.53 (3 seeds) for about 6 % of a step.",
}
PATCH_TOOLTIP = ("The patch's in-plane size (Y and X). In 3D the Z size covers the same millimetres (fewer slices "
                 "when slices are thicker than pixels) and no axis is larger than the volume; the line below shows "
                 "the patch that runs. Choosing 3D plans this from the volume and the free memory.")
