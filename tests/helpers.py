"""Helpers shared by the test packages: running an engine's event generator to its end and keeping its events.

Imported as ``from helpers import drain`` (``tests/`` is on ``sys.path`` through the root ``conftest.py``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from napari_medseg.core.events import drive


def drain(gen: Generator[Any, Any, Any]) -> tuple[list[Any], Any]:
    """Run an event generator (``train``, ``predict``, ``predict_many``) to its end: (its events, its return value)."""
    events: list[Any] = []
    result = drive(gen, events.append)
    return events, result


def predict_arrays(image: Any, model: Any, out: Any, **kw: Any) -> tuple[Any, Any]:
    """(labels, float32 probabilities) of ``run_predict(image, model, out)``: window 64, float16
    probabilities stored, no tissue mask, overwriting ``out``; ``kw`` go to ``run_predict``."""
    import numpy as np
    import zarr

    from napari_medseg.inference.predictor import run_predict

    run_predict(image, model, out, **{"window": (64, 64), "write_probs": "float16", "overwrite": True,
                                      "tissue_mask": False, **kw})
    g = zarr.open_group(out, mode="r")
    return np.asarray(g["labels"]["prediction"]["0"]), np.asarray(g["probs"]["0"]).astype(np.float32)
