"""Control conditions of ``bench_ui_latency``: what the viewer costs under the CPU load alone (``cpu_load``),
and with the run's result layers hidden by the user (``hidden_results``)."""

from __future__ import annotations

from typing import Any


class cpu_load:
    """The ``--loaded`` control: while open, a thread at the workers' priority (``background_priority``) runs
    the Train widget's default U-Net forward on batches of 4 x 256^2 with torch's own thread count, as the
    prediction's model does, and nothing else: no layer, no event, no plugin code on the main thread."""

    def __init__(self, image: Any) -> None:
        import threading

        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(int(image.data[0].shape[-1]) if image.rgb else 1,),
                                       daemon=True, name="bench-cpu-load")
        self.passes = 0

    def _run(self, channels: int) -> None:
        import torch

        from napari_medseg._napari.jobs.workers import background_priority
        from napari_medseg.models.config import ModelConfig
        from napari_medseg.models.registry import build_model

        net = build_model(ModelConfig(in_channels=channels, out_channels=4)).eval()
        x = torch.randn(4, channels, 256, 256)
        with background_priority(), torch.inference_mode():
            while not self.stop.is_set():
                net(x)
                self.passes += 1

    def __enter__(self) -> cpu_load:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        print(f"cpu load: {self.passes} forward passes of 4 x 256^2", flush=True)


class hidden_results:
    """While open, every layer whose name ends in ``suffix`` (the Predict widget's result layers) is kept
    hidden, as a user who unticks the result's eye to pan: a 50 ms timer on the main thread unticks any that
    is shown (a new result layer is added hidden and shown a moment later, ``add_then_show``)."""

    def __init__(self, viewer: Any, suffix: str) -> None:
        from qtpy.QtCore import QTimer

        self.viewer, self.suffix = viewer, suffix
        self.timer = QTimer()
        self.timer.setInterval(50)
        self.timer.timeout.connect(self._hide)

    def _hide(self) -> None:
        for layer in list(self.viewer.layers):
            if layer.name.endswith(self.suffix) and layer.visible:
                layer.visible = False

    def __enter__(self) -> hidden_results:
        self._hide()
        self.timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timer.stop()
