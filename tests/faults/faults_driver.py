"""Child process of the fault-injection suite: the real CLI or a real painting session, with a pause point.

    python faults_driver.py cli ARGS...            napari_medseg.cli.main(ARGS), exit with its status
    python faults_driver.py paint STORE LOG READY  paint strokes into a label store through napari

``MEDSEG_FAULT_PLAN`` (JSON) installs faults before the work starts:

- ``{"pause": {"target": T, "nth": N, "marker": PATH}}``: at the ``N``-th call of ``T`` the child creates
  ``PATH`` and sleeps until it is killed, so the parent's SIGKILL lands exactly there. Targets:
  ``torch.save`` (pauses half-way through writing the file: half the bytes written and synced),
  ``output.write_array`` (after the N-th chunk write of the prediction output, before its block's journal
  entry), ``output.write_block`` (after the N-th block is written and journaled);
- ``{"oom_steps": [k, ...]}``: training step ``k`` raises a (simulated) CUDA out-of-memory error once.

Painting: a napari viewer (needs an X display) with an image, a new label store and the plugin's
``PaintingController``; a timer paints one brush stroke every ``STROKE_MS`` through ``Labels.paint`` (the
brush's own door) on a lattice of distinct points, and appends ``time index y x label`` to LOG after each
stroke returns. READY is created once the first stroke is done.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STROKE_MS = 40
PAINT_SHAPE = (768, 1024)
LATTICE = 12  # px between stroke centres (brush 5 px wide: strokes never touch)


def _pause(marker: str) -> None:
    Path(marker).touch()
    while True:  # until SIGKILL
        time.sleep(3600)


def _install(plan: dict[str, Any]) -> None:
    pause = plan.get("pause")
    if pause:
        target, nth, marker = pause["target"], int(pause["nth"]), pause["marker"]
        calls = {"n": 0}
        if target == "torch.save":
            import torch

            real_save = torch.save

            def save(obj: Any, f: Any, *a: Any, **k: Any) -> None:
                calls["n"] += 1
                if calls["n"] < nth or not hasattr(f, "write"):
                    return real_save(obj, f, *a, **k)
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                data = buf.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _pause(marker)

            torch.save = save
        elif target in ("output.write_array", "output.write_block"):
            from napari_medseg.inference import output

            name = "_write_array" if target == "output.write_array" else "_write_block"
            real = getattr(output.OutputStore, name)

            def patched(self: Any, *a: Any, **k: Any) -> Any:
                r = real(self, *a, **k)
                calls["n"] += 1
                if calls["n"] == nth:
                    _pause(marker)
                return r

            setattr(output.OutputStore, name, patched)
        else:
            raise SystemExit(f"unknown pause target {target!r}")
    oom = set(plan.get("oom_steps") or ())
    if oom:
        import torch

        from napari_medseg.training import loop

        fired: set[int] = set()

        def hook(step: int) -> None:
            if step in oom and step not in fired:
                fired.add(step)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

        loop._fault_hook = hook


def run_cli(argv: list[str]) -> int:
    from napari_medseg.cli import main

    return main(argv)


def paint(store_path: str, log_path: str, ready: str) -> None:
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_medseg._napari.painting.controller import PaintingController
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.labels.store import LabelStore

    viewer = napari.Viewer(show=False)
    img = viewer.add_image(np.zeros(PAINT_SHAPE, np.uint8), scale=(0.5, 0.5), name="slide")
    store = LabelStore.create(store_path, PAINT_SHAPE, chunks=(128, 128), pixel_size=(0.5, 0.5),
                              classes=ClassSchema(("background", "tumour", "stroma")))
    ctl = PaintingController(viewer, store, img)
    layer = ctl.layer
    layer.brush_size = 5
    ny, nx = PAINT_SHAPE[0] // LATTICE - 1, PAINT_SHAPE[1] // LATTICE - 1
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives until the process is killed
    state = {"i": 0}

    def stroke() -> None:
        i = state["i"]
        if i >= ny * nx:
            return
        y, x = LATTICE * (1 + (i // nx) % ny), LATTICE * (1 + i % nx)
        label = 2 + i % 2
        layer.paint((y, x), label)
        log.write(f"{time.time():.6f} {i} {y} {x} {label}\n")
        log.flush()  # in the kernel: survives SIGKILL
        if i == 0:
            Path(ready).touch()
        state["i"] = i + 1

    timer = QTimer()
    timer.setInterval(STROKE_MS)
    timer.timeout.connect(stroke)
    timer.start()
    QApplication.instance().exec_()


def main() -> int:
    plan = json.loads(os.environ.get("MEDSEG_FAULT_PLAN", "{}") or "{}")
    mode, args = sys.argv[1], sys.argv[2:]
    _install(plan)
    if mode == "cli":
        return run_cli(args)
    if mode == "paint":
        paint(*args)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
