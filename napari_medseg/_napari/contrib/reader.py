"""npe2 reader: whole slides, OME-Zarr and volumes as lazy (multiscale) napari layers.

``get_reader(path)`` answers quickly: ``None`` for anything ``io.reader.sniff`` does not claim (it never
raises on a foreign file). The returned function opens each path with ``io.open_path`` and returns
LayerData tuples (``layerdata.to_layer_data``): images as ``"image"`` (multiscale when the source has several
levels, ``scale`` from the pixel size), labels as ``"labels"`` with their NGFF colors. The tissue mask a
prediction writes beside its result (``labels/tissue``) opens hidden and faint, named after the result
("slide tissue mask").

A file we claim but cannot read: the user gets one napari error notification naming the file and the
reason, and the reader returns napari's "nothing to add" sentinel ``[(None,)]``, so the viewer keeps
working and no second error dialog appears. Hints (e.g. "convert this strip TIFF") are shown as info
notifications.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from napari.utils.notifications import show_error, show_info

from napari_medseg._napari.layerdata import TISSUE_NAME, LayerData, is_tissue_mask, to_layer_data
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.io.reader import open_path, sniff

logger = logging.getLogger(__name__)


def _paths(path: str | Sequence[str]) -> list[str]:
    return [path] if isinstance(path, str) else [str(p) for p in path]


def get_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """The reader function if napari-medseg handles every path in ``path``, else None. Never raises."""
    try:
        paths = _paths(path)
        if not paths or any(sniff(p) is None for p in paths):
            return None
    except Exception:  # a foreign object or path: simply not ours
        return None
    return read_layers


def _name_tissue_masks(sources: list[ImageSource], layers: list[LayerData]) -> None:
    """Name a tissue mask plainly after the result it belongs to ("slide tissue mask" beside "slide
    prediction", as the Predict widget names it), so masks of several predictions stay apart."""
    results = [str(kw.get("name", "")) for src, (_, kw, _) in zip(sources, layers)
               if src.kind == "labels" and not is_tissue_mask(src)]
    stem = next((n[: -len(" prediction")] for n in results if n.endswith(" prediction")), "")
    for src, (_, kw, _) in zip(sources, layers):
        if is_tissue_mask(src):
            kw["name"] = f"{stem} {TISSUE_NAME}" if stem else TISSUE_NAME


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Open every path; unreadable ones become an error notification (see module docstring)."""
    out: list[LayerData] = []
    for p in _paths(path):
        try:
            sources = open_path(p)
        except MedsegError as e:
            logger.warning("napari-medseg could not open %s: %s", p, e)
            show_error(f"napari-medseg could not open {p}: {_reason(e, p)}")
            continue
        reported = False
        layers = [to_layer_data(src) for src in sources]
        _name_tissue_masks(sources, layers)
        out.extend(layers)
        for src in sources:
            hint = src.metadata.get("hint")
            if hint:
                show_info(hint)
            # DICOM: several series in the folder, or files skipped as broken: say so once per path
            report = src.metadata.get("series_report")
            if report and not reported and (src.metadata.get("skipped_files") or len(sources) > 1):
                show_info(str(report))
                reported = True
    return out or [(None,)]


def _reason(e: Exception, path: str) -> str:
    """The error message without the leading ``<path>:`` our errors start with."""
    msg = str(e)
    prefix = f"{path}:"
    return msg[len(prefix):].strip() if msg.startswith(prefix) else msg
