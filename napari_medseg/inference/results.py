"""Opening a prediction output as ``ImageSource``s (pure: imports no napari; ``_napari.layerdata`` makes layers).

``open_prediction(out)`` returns the labels (``kind="labels"``, multiscale, class colors in
``metadata["colors"]``), then the probabilities (if written) and the tissue mask (if used). Levels are
lazy dask arrays over the zarr chunks. ``metadata["translate"]`` places the output over the source image
in level-0 physical units (non-zero when a coarser level was predicted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.output import Layout, read_manifest
from napari_medseg.io.ngff_meta import parse_multiscales


def _levels(group: Any) -> list[Any]:
    import dask.array as da

    ms = parse_multiscales(dict(group.attrs))
    paths = ms["paths"] if ms else sorted((k for k in group.array_keys()), key=int)
    return [da.from_zarr(group[p]) for p in paths if p in set(group.array_keys())]


def open_prediction(out: str | Path) -> list[ImageSource]:
    """The prediction at ``out`` as ``ImageSource``s: labels first, then probabilities and tissue mask."""
    import zarr

    p = Path(out)
    m = read_manifest(p)
    if m is None:
        raise MedsegError(f"{p} is not a napari-medseg prediction (no {p.name}/medseg/run.json); "
                          "run the prediction first")
    layout = Layout.from_dict(m["layout"])
    classes = ClassSchema.from_dict(m["classes"])
    root = zarr.open_group(str(p), mode="r")
    name = (root.attrs.get("napari_medseg") or {}).get("name") or p.stem
    colors = {k: v for k, v in classes.prediction_colors().items() if k is not None}
    common = {"status": m.get("status"), "translate": list(layout.translation), "classes": list(classes.names)}
    out_sources = [ImageSource(
        levels=_levels(root["labels/prediction"]), axes=layout.axes, pixel_size=layout.pixel_size, unit=layout.unit,
        name=f"{name} prediction", path=str(p), kind="labels",
        metadata={**common, "colors": colors, "ngff_path": "labels/prediction"})]
    if layout.write_probs and "probs" in set(root.group_keys()):
        uint8 = layout.write_probs == "uint8"
        out_sources.append(ImageSource(
            levels=_levels(root["probs"]), axes="C" + layout.axes, pixel_size=layout.pixel_size, unit=layout.unit,
            name=f"{name} probabilities", path=str(p), kind="image", channel_names=tuple(classes.names),
            contrast_limits=(0.0, 255.0 if uint8 else 1.0),
            metadata={**common, "ngff_path": "probs", "scale_to_probability": 1 / 255 if uint8 else 1.0}))
    labels = root["labels"]
    if "tissue" in set(labels.group_keys()):
        tg = labels["tissue"]
        ms = parse_multiscales(dict(tg.attrs))
        scale = tuple(ms["scales"][0]) if ms and ms["scales"][0] else layout.pixel_size
        trans = list(ms["translations"][0]) if ms and ms["translations"][0] else [0.0, 0.0]
        out_sources.append(ImageSource(
            levels=_levels(tg), axes="YX", pixel_size=scale, unit=layout.unit, name=f"{name} tissue mask",
            path=str(p), kind="labels",
            metadata={"translate": trans, "colors": {1: (0.0, 0.8, 0.3, 0.35)}, "ngff_path": "labels/tissue"}))
    return out_sources
