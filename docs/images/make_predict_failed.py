"""Regenerate docs/images/predict_failed.png: the Predict widget after a failed whole-image run.

    xvfb-run -a python docs/images/make_predict_failed.py

Two MoNuSeg H&E tiles side by side (``../shared/data/monuseg_train``; a textured stand-in without it) as a
3-level zarr pyramid with one level-0 chunk truncated; an untrained 3-channel UNet. The first block is
predicted, the second holds the bad chunk: the run fails, the result layer shown for the first block goes
again, the status line says what failed and the message log keeps the whole message and what to do.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data" / "monuseg_train" / "images"
MAX_BYTES = 300_000


def _image() -> np.ndarray:
    tiles = sorted(DATA.glob("*.png"))[:2]
    if len(tiles) == 2:
        from PIL import Image

        return np.concatenate([np.asarray(Image.open(t).convert("RGB")) for t in tiles], axis=1)
    yy, xx = np.mgrid[0:1000, 0:2000].astype(np.float32)
    rgb = np.stack([180 + 50 * np.sin(xx / 37.0), 120 + 60 * np.cos(yy / 29.0), 160 + 50 * np.sin((xx + yy) / 53)], -1)
    return rgb.astype(np.uint8)


def _pyramid(path: Path, img: np.ndarray) -> list:
    import dask.array as da
    import numcodecs
    import zarr

    levels = []
    for i in range(3):
        a = np.ascontiguousarray(img[:: 2 ** i, :: 2 ** i])
        z = zarr.create_array(str(path / str(i)), shape=a.shape, chunks=(128, 128, 3), dtype=a.dtype, zarr_format=2,
                              compressors=numcodecs.Blosc(cname="zstd"), overwrite=True)
        z[...] = a
        levels.append(da.from_zarr(z))
    return levels


def _truncate(path: Path, bad: tuple[int, int]) -> None:
    key = path / "0" / f"{bad[0]}.{bad[1]}.0"
    key.write_bytes(key.read_bytes()[:20])


def _checkpoint(path: Path) -> Path:
    import torch

    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(name="unet", spatial_dims=2, in_channels=3, out_channels=2, channels=(8, 16, 32))
    return save_checkpoint(path, Checkpoint(cfg, build_model(cfg).state_dict(), norm=NormConfig.uint8(3),
                                            classes=ClassSchema(names=("background", "nucleus"))))


def main(out: Path = HERE / "predict_failed.png") -> None:
    from napari_medseg._napari.widgets.predict import PredictWidget

    tmp = Path(tempfile.mkdtemp(prefix="medseg-shot-"))
    levels = _pyramid(tmp / "slide.zarr", _image())
    viewer = napari.Viewer(title="napari-medseg")
    viewer.window.resize(1500, 950)
    viewer.add_image(levels, name="slide", rgb=True, multiscale=True, scale=(0.5, 0.5), units="micrometer")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w, name="Predict", area="right")
    w.ckpt_edit.setText(str(_checkpoint(tmp / "model.pt")))
    w.out_edit.setText(str(tmp / "slide.prediction.zarr"))
    w.window_spin.setValue(128)
    w.tissue_check.setChecked(False)
    viewer.reset_view()  # the whole slide: napari draws a coarser level from now on
    _truncate(tmp / "slide.zarr", (3, 13))  # level 0, y 384:512, x 1664:1792: in the run's second block
    w.predict()
    app = QApplication.instance()
    while w._worker is not None:
        app.processEvents()
    for _ in range(60):
        app.processEvents()
    try:  # the toast repeats the log's first line over the canvas
        from napari_medseg._napari.napari_compat_layers import close_notifications

        close_notifications()
    except ImportError:
        pass
    for _ in range(20):
        app.processEvents()
    print(w.status.text())
    viewer.screenshot(str(out), canvas_only=False)
    if out.stat().st_size > MAX_BYTES:
        from PIL import Image

        rgb = Image.open(out).convert("RGB")
        for colors in (192, 128, 96, 64):
            rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
            if out.stat().st_size <= MAX_BYTES:
                break
    print(out, out.stat().st_size)
    viewer.close()


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:2]))
