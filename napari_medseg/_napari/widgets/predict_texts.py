"""The Predict widget's longer tooltips, with the measured figures they quote (docs/deployment.md,
docs/objects.md)."""

from __future__ import annotations

CRF_HELP = ("After the blocks, a dense CRF pulls the labels to the image's edges (inference.crf: 5 mean-field\n"
            "iterations, radius 4 px; tile-consistent). It needs the class probabilities (written as float16).\n"
            "On ISBI (thin EM membranes) it cut HD95 by 4-4.5 px but lost 0.6-1.3 Dice points, at 8-12 times\n"
            "the prediction's own time (docs/deployment.md): off by default.")
ZOOM_HELP = ("The model sees each window resampled by this factor; the result keeps the image's pixels.\n"
             "For objects smaller (> 1) or larger (< 1) than those it learnt from: zoom = their diameter there /\n"
             "their diameter here. MoNuSeg nuclei half the training size: AJI 0.39-0.50 -> 0.49-0.63 at 1.3-2\n"
             "(docs/objects.md). Costs about zoom^2 the model's time; 1 = as it is.\n"
             "auto (below 0.25): measured on a sample of the image against the size the model learnt\n"
             "(models with object classes trained by this version): per image, AJI 0.529 -> 0.574.")
