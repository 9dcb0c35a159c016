"""Helpers for the Predict widget's GUI tests (test_predict_*.py): checkpoints, the widget in a viewer, an
image whose zarr holds a chunk that does not decode, and waiting for a run to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_medseg._napari.widgets.predict import PredictWidget
from napari_medseg.core.classes import ClassSchema
from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint

IMAGE_SHAPE = (300, 260)


def make_checkpoint(path: Path, spatial_dims: int = 2, seed: int = 0) -> Path:
    """An untrained small UNet (3 classes, 1 channel, uint8 normalisation) saved as a checkpoint."""
    torch.manual_seed(seed)
    cfg = ModelConfig(name="unet", spatial_dims=spatial_dims, in_channels=1, out_channels=3, channels=(8, 16, 32))
    ck = Checkpoint(cfg, build_model(cfg).state_dict(), classes=ClassSchema(names=("background", "a", "b")),
                    norm=NormConfig.uint8(1))
    return save_checkpoint(path, ck)


def noise_image(shape=IMAGE_SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def make_widget(viewer, image=None, name: str = "img", **image_kw) -> PredictWidget:
    """``image`` (a noise image by default) as layer ``name`` and the Predict widget docked, set for quick
    runs (window 64, no tissue mask)."""
    if image is not None or name not in viewer.layers:
        viewer.add_image(noise_image() if image is None else image, name=name,
                         **({"scale": (0.5, 0.5), "units": "micrometer"} | image_kw))
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.window_spin.setValue(64)
    w.tissue_check.setChecked(False)
    w.process_check.setChecked(False)
    return w


def corrupt_zarr_levels(path: Path, shape=(300, 1800), bad=(1, 25), chunk: int = 64) -> list:
    """A 3-level pyramid of noise as zarr v2 arrays (Blosc, ``chunk`` px chunks) opened with dask; the level-0
    chunk ``bad`` (row, column of chunks) is truncated so it does not decode. With the default shape the
    prediction has two blocks (x 0:1536 and 1536:1800) and the bad chunk (y 64:128, x 1600:1664) lies in
    the second, out of reach of the first block's windows."""
    import dask.array as da
    import numcodecs
    import zarr

    img = noise_image(shape)
    levels = []
    for i in range(3):
        a = np.ascontiguousarray(img[:: 2 ** i, :: 2 ** i])
        z = zarr.create_array(str(path / str(i)), shape=a.shape, chunks=(chunk, chunk), dtype=a.dtype,
                              zarr_format=2, compressors=numcodecs.Blosc(cname="zstd"), overwrite=True)
        z[...] = a
        levels.append(da.from_zarr(z))
    key = path / "0" / f"{bad[0]}.{bad[1]}"
    key.write_bytes(key.read_bytes()[:20])
    return levels


def wait_idle(qtbot, w, timeout_ms: int = 120_000) -> None:
    qtbot.waitUntil(lambda: w._worker is None, timeout=timeout_ms)
    qtbot.wait(50)  # the layers shown a moment after being added (add_then_show)


def assert_idle(w) -> None:
    """The widget is ready for another try."""
    assert w._worker is None
    assert w.predict_btn.isEnabled() and not w.cancel_btn.isEnabled()
    assert w._progress is None


def assert_one_sentence(text: str, start: str = "Prediction failed: ") -> None:
    assert text.startswith(start), text
    assert "\n" not in text and text.endswith("."), text
    assert "Traceback" not in text and "predicting into" not in text, text
