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
PROCESS_HELP = ("Finishes sooner: the model, tile reads and writes run in their own process at a lower priority, not "
                "sharing the viewer's Python lock: the image is predicted 15-28 % sooner, after a few seconds to "
                "start. On a CPU it also runs as many batches at once as torch has threads (model streams: the light "
                "model about 2x, the UNet 1.2-1.3x faster on 2 cores).")
OVERWRITE_HELP = ("Replace another run's prediction in the output: an output holding a prediction made with another "
                  "model or settings is deleted and predicted again; otherwise such an output is refused. The same run "
                  "is always resumed.")
ACCEPT_HELP = ("Accept the prediction in view into the labels: writes the prediction of the current view into this "
               "image's labels where nothing is painted yet; your own strokes are never overwritten. Correct, then "
               "train again.")
