"""Pure inference: tiling and blending, the tiled predictor, viewport preview.

Public API (imported lazily, so ``import napari_medseg.inference`` stays light):

- ``predict(source, model, out, ...)``: generator of events, tiled whole-slide / whole-volume prediction
  into an NGFF zarr (``predictor.py``); ``run_predict`` runs it to the end.
- ``predict_region(model, source, level, region, norm, ...)``: the live preview of one view (``region.py``).
- ``open_prediction(out)`` -> ``list[ImageSource]``; ``prediction_layer_data(out)`` for napari (``results.py``).
- ``predict_many(...)``: many slides, optionally on a Dask cluster (``distributed.py``).
- events: ``PredictStart``, ``BlockDone``, ``PredictWarning``, ``PredictDone``, ``TissueMaskReady``,
  ``PredictFailed`` (``predict_many(..., keep_going=True)``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "predict": "predictor", "run_predict": "predictor",
    "predict_region": "region", "RegionPrediction": "region",
    "open_prediction": "results", "prediction_layer_data": "results",
    "predict_many": "distributed",
    "PredictEvent": "events", "PredictStart": "events", "BlockDone": "events", "PredictWarning": "events",
    "PredictDone": "events", "PredictResult": "events", "TissueMaskReady": "events", "PredictFailed": "events",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
