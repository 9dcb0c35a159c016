"""Painting a whole slide zoomed out: what the coarse editable window costs.

Run under an X server: ``xvfb-run -a python benchmarks/bench_paint_zoomed_out.py [--size 50000]``. On a
synthetic slide (lazy zeros, a pyramid for napari) with a label store on disk and the plugin's default
window (4096 layer pixels, 512 px chunks) it measures, in a shown viewer:

1. window switches while zooming out step by step from full resolution to the whole slide (flush, read of
   the level, layer update), and which level each zoom gets;
2. per-event latency of napari's brush (mouse callbacks, as ``bench_paint.py``) at full resolution and on
   the coarsest window, and the autosave of coarse strokes (chunks written, seconds);
3. a non-contiguous fill of the whole coarsest window (every store pixel of the slide), its undo, and the
   RSS growth of both; after the undo the store must be as before the fill (sampled every 64 px).

Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_paint import MouseEvent  # napari's mouse event, as bench_paint makes them


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=50_000)
    args = ap.parse_args(argv)

    import dask.array as da
    import napari
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
    from qtpy.QtWidgets import QApplication

    from napari_medseg._napari.layers import camera_of
    from napari_medseg._napari.painting.controller import PaintingController
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.labels.store import LabelStore

    n, mpp = args.size, 0.5
    pyramid = [da.zeros((n // 2**k, n // 2**k), np.uint8, chunks=1024) for k in range(7)]
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 800)
    img = viewer.add_image(pyramid, multiscale=True, scale=(mpp, mpp), name="slide")
    app = QApplication.instance()
    tmp = Path(tempfile.mkdtemp(prefix="bench-zoomed-out-"))
    store = LabelStore.create(tmp / "slide.labels.zarr", (n, n), classes=ClassSchema(("background", "tumor")),
                              pixel_size=(mpp, mpp))
    ctl = PaintingController(viewer, store, img, inform=lambda m: None)
    layer = ctl.layer
    viewer.layers.selection.active = layer
    cam = camera_of(viewer)

    def view(zoom: float, center=(n / 2, n / 2)) -> float:
        cam.center = tuple(c * mpp for c in center)
        cam.zoom = zoom
        app.processEvents()
        t0 = time.perf_counter()
        ctl.follow_view()
        app.processEvents()
        return time.perf_counter() - t0

    def stroke(points_px, label=2) -> list[float]:
        ms = []
        for i, (y, x) in enumerate(points_px):
            p = (y * mpp, x * mpp)
            typ = "mouse_press" if i == 0 else "mouse_move"
            ev = ReadOnlyWrapper(MouseEvent(typ, p, is_dragging=i > 0, dims_point=p))
            t0 = time.perf_counter()
            (mouse_press_callbacks if i == 0 else mouse_move_callbacks)(layer, ev)
            ms.append((time.perf_counter() - t0) * 1e3)
            app.processEvents()
        p = (points_px[-1][0] * mpp, points_px[-1][1] * mpp)
        mouse_release_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_release", p, dims_point=p)))
        return ms

    out: dict = {"slide_px": n, "levels": len(store.level_shapes), "canvas": list(viewer.canvas.size)}
    switches = []
    zoom = 1.0
    while True:
        dt = view(zoom)
        switches.append({"zoom": round(zoom, 4), "level": ctl.level, "window_px": ctl.window[0].stop -
                         ctl.window[0].start, "seconds": round(dt, 3)})
        if ctl.window == (slice(0, n), slice(0, n)):
            break
        zoom /= 2
    out["zoom_out"] = switches

    layer.mode, layer.selected_label, layer.brush_size = "paint", 2, 10
    view(1.0, (n / 3, n / 3))
    rng = np.random.default_rng(0)
    fine = []
    for _ in range(5):
        y0, x0 = n / 3 + rng.uniform(-500, 500, 2)
        fine += stroke([(y0 + 3 * i, x0 + 6 * i) for i in range(40)])
    ctl.flush(wait=True)
    view(switches[-1]["zoom"])
    coarse, flushes = [], []
    f = ctl.factor[0]
    for _ in range(5):
        y0, x0 = rng.uniform(0.1, 0.8, 2) * n
        n0 = len(ctl.flush_log)
        coarse += stroke([(y0 + 3 * f * i, x0 + 6 * f * i) for i in range(40)])
        t0 = time.perf_counter()
        ctl.flush(wait=True)
        flushes.append({"seconds": round(time.perf_counter() - t0, 3),
                        "chunks": sum(e["chunks"] for e in ctl.flush_log[n0:])})
    out["event_ms_p50_p95_full_res"] = [round(float(np.percentile(fine, q)), 2) for q in (50, 95)]
    out["event_ms_p50_p95_coarse"] = [round(float(np.percentile(coarse, q)), 2) for q in (50, 95)]
    out["coarse_level"], out["coarse_factor"] = ctl.level, f
    out["coarse_stroke_flushes"] = flushes

    rss0 = rss_mb()
    before = store.read((slice(0, n, 64), slice(0, n, 64))), len(store.painted_chunks())
    layer.mode, layer.contiguous = "fill", False
    t0 = time.perf_counter()
    layer.fill((5, 5), 2)
    t_fill = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctl.flush(wait=True)
    out["fill_whole_slide"] = {"napari_fill_s": round(t_fill, 2), "save_s": round(time.perf_counter() - t0, 2),
                               "painted_chunks": len(store.painted_chunks()),
                               "class_px": store.class_counts()[2], "rss_growth_mb": round(rss_mb() - rss0)}
    t0 = time.perf_counter()
    layer.undo()
    ctl.flush(wait=True)
    out["undo_fill"] = {"seconds": round(time.perf_counter() - t0, 2),
                        "painted_chunks_before_fill": before[1], "painted_chunks_after": len(store.painted_chunks()),
                        "store_as_before_fill": bool(np.array_equal(before[0], store.read((slice(0, n, 64),
                                                                                          slice(0, n, 64))))),
                        "rss_growth_mb": round(rss_mb() - rss0)}
    ctl.close()
    store.close()
    viewer.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))
    print("RESULT " + json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
