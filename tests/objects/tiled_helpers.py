"""Synthetic predictions for the whole-slide objects tests: discs of object classes with boundary rims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.draw import disk

from napari_medseg.core.classes import ClassSchema
from napari_medseg.inference.output import Layout, OutputStore

SCHEMA = ClassSchema(("background", "tissue", "nucleus", "lesion")).with_objects(["nucleus", "lesion"])
NUC, LES, BND = 2, 3, SCHEMA.boundary_value


def _disc(pred: np.ndarray, centre, r: float, value: int) -> None:
    rr, cc = disk(centre, r + 2, shape=pred.shape)
    pred[rr, cc] = np.where(pred[rr, cc] == 0, BND, pred[rr, cc])
    rr, cc = disk(centre, r, shape=pred.shape)
    pred[rr, cc] = value


def discs_2d(shape=(600, 700), block=128, seed=0) -> np.ndarray:
    """Tissue background (1) with discs (radius 3-12) of two object classes: random ones, touching pairs
    (only the boundary between them), and discs centred on block borders and corners."""
    rng = np.random.default_rng(seed)
    pred = np.zeros(shape, np.uint8)
    pred[40:-40, 30:-30] = 1
    centres = [(y, x) for y in range(block, shape[0], block) for x in range(block, shape[1], block)]  # corners
    centres += [(y, int(rng.integers(10, shape[1] - 10))) for y in range(block, shape[0], block) for _ in range(3)]
    centres += [(int(rng.integers(10, shape[0] - 10)), x) for x in range(block, shape[1], block) for _ in range(3)]
    centres += [(int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))) for _ in range(120)]
    for c in centres:
        _disc(pred, c, float(rng.uniform(3, 12)), NUC if rng.random() < 0.7 else LES)
    for _ in range(25):  # touching pairs: two discs whose rims overlap, the later one drawn over the rim
        y, x = int(rng.integers(20, shape[0] - 20)), int(rng.integers(20, shape[1] - 20))
        r = float(rng.uniform(4, 8))
        _disc(pred, (y, x), r, NUC)
        _disc(pred, (y, x + 2 * r + 2), r, NUC)
    pred[:5, :5] = NUC  # an object in the slide's own corner
    return pred


def write_prediction(path: Path, pred: np.ndarray, schema: ClassSchema = SCHEMA, status: str = "complete") -> Path:
    """``pred`` written as a napari-medseg prediction (the layout's block is irrelevant to the objects)."""
    nd = pred.ndim
    lay = Layout(tuple(pred.shape), tuple(min(256, s) for s in pred.shape), (0.5,) * nd, (0.0,) * nd, "micrometer",
                 schema.n_classes, None)
    store = OutputStore.create(path, lay, {"test": 1}, schema)
    store.labels[0][...] = pred
    store.update_manifest(status=status)
    store.close()
    return path
