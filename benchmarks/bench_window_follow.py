"""What moving the editable window after a pan costs the GUI thread: the synchronous move against the
background read (``_napari/painting/window_prefetch``), side by side in one viewer.

Run under an X server (``xvfb-run -a python benchmarks/bench_window_follow.py [--quick]``). On the synthetic
50,000 x 50,000 px slide of ``bench_paint`` with a label store whose every chunk in the visited area is painted
(so each read decompresses real chunks; ``--sparse``: only a 1024 px square in the middle of each window, as
on a slide where most of the tissue is not yet painted, so most of each window is read as zeros), the camera
jumps ``--moves`` times to a new place at full resolution
(the window, 4096 x 4096 px, must move each time); moves alternate between the two ways:

- ``sync``: ``follow_view()`` as before: the safety-net comparison of the old window with the store, the read
  of the new window and the layer's new data, all on the GUI thread;
- ``background``: what the debounced camera handler now does: the request on the GUI thread; the snapshot of
  the old window, both reads and the new window's page mapping in the writer thread; then the check of the
  old window against the snapshot and the layer's new data on the GUI thread.

For each: the GUI thread's time per move (p50 / max, ms; the background way's two parts added) and the wall
time until the window shows the new place. Last line: ``RESULT {"gui_ms_p50_sync", "gui_ms_p50_background",
"gui_ratio_p50", "gui_ms_max_sync", "gui_ms_max_background", "wall_ms_p50_background", "used", "refused"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paint import CLASSES, MPP, make_viewer, set_view, synthetic_slide  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--moves", type=int, default=24)
    ap.add_argument("--sparse", action="store_true", help="paint a 1024 px square per window, not all of it")
    a = ap.parse_args(argv)
    from napari_medseg._napari.painting.controller import PaintingController
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.labels.store import LabelStore

    moves = 6 if a.quick else a.moves
    img = synthetic_slide()
    viewer, image_layer, app = make_viewer(img)
    folder = Path(tempfile.mkdtemp(prefix="bench-follow-"))
    store = LabelStore.create(folder / "s.labels.zarr", img.shape, classes=ClassSchema(names=CLASSES),
                              pixel_size=img.pixel_size, unit=img.unit, image_shape=img.shape)
    rng = np.random.default_rng(0)
    centers = [(8000 + 6000 * (i % 4), 8000 + 6000 * (i // 4 % 6)) for i in range(moves)]
    half = 512 if a.sparse else 2560
    for cy, cx in centers:  # paint the area each window covers: noisy labels, every chunk written
        y0, x0, n = cy - half, cx - half, 2 * half
        store.write((slice(y0, y0 + n), slice(x0, x0 + n)),
                    rng.integers(0, 4, (n, n), dtype=np.uint8) * (rng.random((n, n)) < 0.3))
    ctl = PaintingController(viewer, store, image_layer)
    gui: dict[str, list[float]] = {"sync": [], "background": []}
    wall: list[float] = []
    spent = [0.0]
    orig_request, orig_on = ctl.prefetch.request, ctl._on_prefetched

    def timed(fn):
        def run(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[0] += time.perf_counter() - t
        return run

    ctl.prefetch.request = timed(orig_request)
    ctl._prefetched.disconnect(ctl._on_prefetched)
    ctl._prefetched.connect(timed(orig_on))
    for i, (cy, cx) in enumerate(centers):
        way = "sync" if i % 2 == 0 else "background"
        set_view(viewer, app, (cy * MPP, cx * MPP), 1.0)
        ctl._follow_timer.stop()  # moved by hand below, one way or the other
        before = ctl.window
        t0 = time.perf_counter()
        if way == "sync":
            ctl.follow_view()
            gui[way].append(1e3 * (time.perf_counter() - t0))
        else:
            spent[0] = 0.0
            ctl.follow_view(background=True)
            while ctl.window == before and time.perf_counter() - t0 < 30:
                app.processEvents()
                time.sleep(0.001)
            wall.append(1e3 * (time.perf_counter() - t0))
            gui[way].append(1e3 * spent[0])
        assert ctl.window != before, "the window did not move"
        print(f"move {i} ({way}): GUI thread {gui[way][-1]:.1f} ms", flush=True)
    res = {"gui_ms_p50_sync": round(float(np.median(gui["sync"])), 1),
           "gui_ms_p50_background": round(float(np.median(gui["background"])), 1),
           "gui_ms_max_sync": round(max(gui["sync"]), 1), "gui_ms_max_background": round(max(gui["background"]), 1),
           "wall_ms_p50_background": round(float(np.median(wall)), 1),
           "used": ctl.prefetch.used, "refused": ctl.prefetch.refused, "moves": moves, "window": ctl.max_window,
           "sparse": a.sparse}
    res["gui_ratio_p50"] = round(res["gui_ms_p50_background"] / res["gui_ms_p50_sync"], 3)
    ctl.close()
    store.close()
    viewer.close()
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
