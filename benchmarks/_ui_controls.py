"""Control conditions of ``bench_ui_latency``: what the viewer costs under the CPU load alone (``cpu_load``),
and with the run's result layers hidden by the user (``hidden_results``); what drawing the loop's extra layers
costs napari by itself (``plain_layers``); which layers each phase drew (``LayersShown``)."""

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


class plain_layers:
    """The ``--layers-floor`` control: while open, ``n`` plain napari Labels layers (4096 x 4096 uint8, mostly
    background, one painted square) lie over the whole image, as the loop's editable window, live preview and
    result do over the view, with no plugin code behind them: what drawing that many extra layers costs napari
    on this machine's OpenGL. They cover the whole slide, so they bound the loop's layers from above (its
    window and preview cover the view and a margin)."""

    def __init__(self, viewer: Any, image: Any, n: int) -> None:
        self.viewer, self.image, self.n = viewer, image, n
        self.layers: list[Any] = []

    def __enter__(self) -> plain_layers:
        import numpy as np

        side = 4096
        h, w = (float(s) * float(k) for s, k in zip(self.image.level_shapes[0][:2], self.image.scale[-2:]))
        data = np.zeros((side, side), np.uint8)
        data[side // 4: side // 2, side // 4: side // 2] = 2
        for i in range(self.n):
            self.layers.append(self.viewer.add_labels(data.copy(), name=f"plain labels {i + 1}",
                                                      scale=(h / side, w / side), opacity=0.5,
                                                      units=tuple(self.image.units)[-2:]))
        return self

    def __exit__(self, *exc: Any) -> None:
        for layer in self.layers:
            self.viewer.layers.remove(layer)
        self.layers.clear()


class LayersShown:
    """Which layers the canvas drew in each phase: a 0.5 s timer on the main thread notes the visible layers,
    and ``fractions(phase)`` gives each one's share of that phase's samples. On software OpenGL every visible
    layer that covers the canvas costs napari a share of its frame time, so a phase's ratio reads with it."""

    def __init__(self, viewer: Any) -> None:
        from collections import Counter

        from qtpy.QtCore import QTimer

        self.viewer = viewer
        self.samples: dict[str, Counter] = {}
        self.n: dict[str, int] = {}
        self.phase: str | None = None
        self.timer = QTimer()
        self.timer.setInterval(500)
        self.timer.timeout.connect(self._sample)

    def start(self, phase: str) -> None:
        from collections import Counter

        self.phase = phase
        self.samples[phase], self.n[phase] = Counter(), 0
        self._sample()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.phase = None

    def _sample(self) -> None:
        if self.phase is None:
            return
        self.n[self.phase] += 1
        self.samples[self.phase].update(layer.name for layer in self.viewer.layers if layer.visible)

    def fractions(self, phase: str) -> dict[str, float]:
        n = self.n.get(phase, 0)
        return {name: round(k / n, 2) for name, k in self.samples.get(phase, {}).most_common()} if n else {}
