"""Helpers for the inference tests: synthetic zarr slides/volumes, small seeded models, MONAI reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_medseg.core.source import ImageSource
from napari_medseg.models import ModelConfig, build_model


def textured_rgb(h: int, w: int, seed: int = 0, tissue: np.ndarray | None = None) -> np.ndarray:
    """YXC uint8: pinkish texture where ``tissue`` (bool YX) is True, near-white glass elsewhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([200 + 40 * np.sin(xx / 23.0), 120 + 60 * np.cos(yy / 17.0), 170 + 50 * np.sin((xx + yy) / 31.0)], -1)
    img = base + rng.normal(0, 12, size=base.shape)
    if tissue is not None:
        glass = 235 + rng.normal(0, 3, size=base.shape)
        img = np.where(tissue[..., None], img, glass)
    return np.clip(img, 0, 255).astype(np.uint8)


def blobs(h: int, w: int, fraction: float, seed: int = 0, cell: int = 32) -> np.ndarray:
    """A blobby bool mask covering about ``fraction`` of the image (smooth noise thresholded)."""
    from scipy.ndimage import gaussian_filter, zoom

    rng = np.random.default_rng(seed)
    small = gaussian_filter(rng.normal(size=(max(2, h // cell), max(2, w // cell))), 1.5)
    big = zoom(small, (h / small.shape[0], w / small.shape[1]), order=1)[:h, :w]
    return big > np.quantile(big, 1 - fraction)


def zarr_source(path: Path, levels: list[np.ndarray], axes: str, pixel_size=(0.5, 0.5), chunks=None, rgb=None,
                name: str = "img", compressor=None, **kw) -> ImageSource:
    """Write ``levels`` as zarr v2 arrays under ``path`` and open them as dask levels of an ImageSource."""
    import dask.array as da
    import zarr

    path.mkdir(parents=True, exist_ok=True)
    lv = []
    for i, a in enumerate(levels):
        ch = chunks or tuple(min(64 if ax in "YXZ" else s, s) for ax, s in zip(axes, a.shape))
        extra = {"compressors": compressor} if compressor is not None else {}
        z = zarr.create_array(str(path / str(i)), shape=a.shape, chunks=ch, dtype=a.dtype, zarr_format=2,
                              overwrite=True, **extra)
        z[...] = a
        lv.append(da.from_zarr(z))
    if rgb is None:
        rgb = axes.endswith("C") and levels[0].shape[-1] in (3, 4) and levels[0].dtype == np.uint8
    return ImageSource(levels=lv, axes=axes, pixel_size=pixel_size, rgb=rgb, name=name, **kw)


def halve(a: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    sl = tuple(slice(None, None, 2) if i in spatial else slice(None) for i in range(a.ndim))
    return np.ascontiguousarray(a[sl])


def small_unet(in_channels: int = 3, out_channels: int = 3, dims: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels, channels=(4, 8),
                      num_res_units=0, norm="batch")
    return build_model(cfg).eval()


def monai_probs(model, img_chw: np.ndarray, window, overlap, norm_high=255.0) -> np.ndarray:
    """MONAI's sliding_window_inference (gaussian) on the whole (C, *spatial) image, normalised x/255."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(img_chw.astype(np.float32))[None] / norm_high
    with torch.inference_mode():
        return sliding_window_inference(x, tuple(window), 4, lambda t: torch.softmax(model(t), 1), overlap=overlap,
                                        mode="gaussian")[0].numpy()


def read_probs(out: Path, level: int = 0) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(str(out / "probs" / str(level)), mode="r"))


def read_labels(out: Path, level: int = 0) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(str(out / "labels" / "prediction" / str(level)), mode="r"))


def store_bytes(out: Path) -> dict[str, bytes]:
    """Every chunk and metadata file of the output (journal and manifest excluded), for identity checks."""
    res = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and not rel.startswith("medseg/"):
            res[rel] = p.read_bytes()
    return res
