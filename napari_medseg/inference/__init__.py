"""Pure inference: tiling and blending, the tiled predictor, viewport preview.

Public API (imported lazily, so ``import napari_medseg.inference`` stays light):

- ``predict(source, model, out, ...)``: generator of events, tiled whole-slide / whole-volume prediction
  into an NGFF zarr (``predictor.py``); ``run_predict`` runs it to the end.
- ``predict_region(model, source, level, region, norm, ...)``: the live preview of one view (``region.py``).
- ``open_prediction(out)`` -> ``list[ImageSource]`` (``results.py``).
- ``predict_many(...)``: many slides, optionally on a Dask cluster (``distributed.py``).
- events: ``PredictStart``, ``BlockDone``, ``PredictWarning``, ``PredictDone``, ``TissueMaskReady``,
  ``PredictFailed`` (``predict_many(..., keep_going=True)``).
"""

from __future__ import annotations

from napari_medseg.core.lazy_exports import lazy_exports

_EXPORTS = {
    "predict": "predictor", "run_predict": "predictor",
    "predict_region": "region", "RegionPrediction": "region",
    "open_prediction": "results",
    "predict_many": "distributed",
    "PredictEvent": "events", "PredictStart": "events", "BlockDone": "events", "PredictWarning": "events",
    "PredictDone": "events", "PredictResult": "events", "TissueMaskReady": "events", "PredictFailed": "events",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
