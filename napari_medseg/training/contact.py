"""Separation weights: the painted pixels where two objects come close weigh more in the loss.

Touching nuclei are split by the ``object boundary`` class (``objects/boundaries.py``), but on a dense image the
pixels that separate two close objects are a small share of the painted ones, and a model trained for minutes
learns the rims around isolated objects well and the thin gaps between close ones poorly: close objects come
out merged (benchmarks/RESULTS.md, "Objects"). Weighting the boundary class as a whole does not help there (it
weighs every rim); the U-Net paper's answer (Ronneberger et al. 2015, its weight map
``w0 * exp(-(d1 + d2)^2 / 2 sigma^2)`` over the background between cells) weighs only the pixels *between* two
objects.

``ContactWeights`` does that on each training patch after augmentation, from the painting itself: the objects
are the connected regions of object-class pixels (rims excluded, so two objects that touch are two regions),
and every pixel that has two different objects within ``radius`` pixels (a square / cube window, the
Chebyshev distance) gets the weight ``1 + weight``; the others 1. With rims of 2 px and a gap of 1 px, a rim
pixel next to its own object's interior is 5 px from the other's, so a radius of 5 covers the whole band
between them (rims and gap). The loss
(``SparseSegLoss``) then takes a weighted mean of the cross-entropy over the painted pixels; the Dice term is
not weighted. Unpainted pixels (store value 0) are neither objects nor weighted.

Cost: one ``scipy.ndimage.label`` per patch and a maximum and a minimum filter (separable, scipy's): about
17 ms for a batch of 8 x 256^2 on one core, about 6 % of the default UNet's CPU step (the step counts of 600 s
runs on MoNuSeg did not move beyond this VM's drift between runs). On a GPU the patches' labels come to the
CPU for it and the weights go back: one small copy each way per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_medseg.core.errors import MedsegError

_NONE = np.iinfo(np.int32).max  # "no object in the window" for the minimum filter


class ContactWeights:
    """Per-pixel loss weights ``(N, *S)`` from label-store patches ``(N, *S)``: ``1 + weight`` where two
    objects lie within ``radius`` pixels, 1 elsewhere. ``object_values`` are the store values of the object
    classes (prediction value + 1)."""

    def __init__(self, object_values: Sequence[int], weight: float, radius: int) -> None:
        if not object_values:
            raise MedsegError("contact_weight weighs the gaps between objects, but no class is an object class: "
                              "mark the classes to count as objects (--objects, or the objects tick of the class table) "
                              "or set contact_weight to 0")
        if not weight >= 0 or int(radius) < 1:  # NaN too
            raise MedsegError(f"contact_weight must be >= 0 and contact_radius at least 1 pixel, got {weight} and "
                              f"{radius}")
        self.values = np.asarray(sorted({int(v) for v in object_values}))
        self.weight = float(weight)
        self.radius = int(radius)

    def ids(self, store: np.ndarray) -> np.ndarray:
        """Object ids ``(N, *S)`` int32 (0 = no object), unique across the batch."""
        objects = np.isin(store, self.values)
        out = np.zeros(store.shape, np.int32)
        offset = 0
        for i in range(store.shape[0]):
            lab, n = ndi.label(objects[i], output=np.int32)
            if n:
                out[i] = np.where(lab > 0, lab + offset, 0)
                offset += n
        return out

    def contact(self, store: torch.Tensor) -> torch.Tensor:
        """Boolean ``(N, *S)``: pixels with two different objects within ``radius`` (on ``store``'s device)."""
        if store.dim() - 1 not in (2, 3):
            raise MedsegError(f"separation weights need 2D or 3D patches, got shape {tuple(store.shape)}")
        ids = self.ids(store.detach().cpu().numpy())
        size = (1,) + (2 * self.radius + 1,) * (ids.ndim - 1)  # each patch on its own
        hi = ndi.maximum_filter(ids, size=size, mode="constant", cval=0)
        lo = ndi.minimum_filter(np.where(ids > 0, ids, _NONE), size=size, mode="constant", cval=_NONE)
        return torch.from_numpy((hi > 0) & (lo < _NONE) & (hi != lo)).to(store.device)

    def __call__(self, store: torch.Tensor) -> torch.Tensor:
        return 1.0 + self.weight * self.contact(store).float()


__all__ = ["ContactWeights"]
