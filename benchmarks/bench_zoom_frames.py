"""What a zoom step costs the main thread, with napari's layer list reacting to every layer's zoom event and
with the plugin's filter (``_napari/layer_list_events.quiet_zoom_events``), side by side in one run.

A real viewer under Xvfb (``xvfb-run -a python benchmarks/bench_zoom_frames.py``) with the sample slide
(File > Open Sample > napari-medseg > slide) and ``--extra`` more Labels layers (hidden, as the plugin's
annotation, preview and result layers often are: the layer list repaints their rows all the same). The
camera zooms in and out smoothly; each step is timed from the zoom change to the end of the events it
sets off (``processEvents``: napari's handlers, the layer list's repaint, the canvas draw). Rounds
alternate off / on so that the machine's drift hits both.

Last line: ``RESULT {"frame_ms_p50_off", "frame_ms_p50_on", "ratio_p50", ...}`` (on / off; lower is better).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extra", type=int, default=6, help="hidden Labels layers added to the slide's two")
    ap.add_argument("--steps", type=int, default=120, help="zoom steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (off, on)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_zoom_frames_"))
    os.environ["NAPARI_CONFIG"] = str(tmp / "napari_settings.yaml")
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from napari_medseg._napari import layer_list_events

    get_settings().experimental.async_ = True  # as `napari-medseg gui` runs napari
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-medseg", "slide")
    scale = viewer.layers[0].scale
    for k in range(args.extra):
        viewer.add_labels(np.zeros((512, 512), np.uint8), name=f"extra {k}", scale=scale, visible=False)
    app = QApplication.instance()

    def spin(seconds: float) -> None:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            app.processEvents()
            time.sleep(0.002)

    spin(2.0)
    gc.collect()
    gc.freeze()  # no collector pauses inside the timed steps
    assert layer_list_events.quiet_zoom_events(viewer), "the filter could not be put in place"
    cam = viewer.camera
    z0 = cam.zoom
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            with layer_list_events.unfiltered(viewer) if mode == "off" else contextlib.nullcontext():
                spin(0.5)
                for i in range(args.steps):
                    cam.zoom = z0 * (1.0 + 0.3 * np.sin(i / 10))
                    t = time.perf_counter()
                    app.processEvents()
                    times[mode].append((time.perf_counter() - t) * 1000)
    viewer.close()
    res: dict[str, object] = {"layers": 2 + args.extra, "steps": len(times["on"]),
                              "loadavg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    for mode, t in times.items():
        a = np.asarray(t)
        res[f"frame_ms_p50_{mode}"] = round(float(np.percentile(a, 50)), 1)
        res[f"frame_ms_p90_{mode}"] = round(float(np.percentile(a, 90)), 1)
        print(f"layer list filter {mode:>3}: zoom step p50 {res[f'frame_ms_p50_{mode}']} ms, "
              f"p90 {res[f'frame_ms_p90_{mode}']} ms ({a.size} steps)", flush=True)
    res["ratio_p50"] = round(res["frame_ms_p50_on"] / res["frame_ms_p50_off"], 3)
    res["ratio_p90"] = round(res["frame_ms_p90_on"] / res["frame_ms_p90_off"], 3)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
