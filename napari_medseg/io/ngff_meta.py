"""OME-NGFF metadata: build and parse ``multiscales`` (0.4 and 0.5) and ``image-label`` attributes.

napari-medseg *writes* NGFF 0.4 (zarr format 2, attributes at the top of ``.zattrs``): the most widely
read flavour (napari-ome-zarr, QuPath, Fiji/MoBIE). It *reads* 0.4 and 0.5 (zarr format 3, attributes
under the ``"ome"`` key). Every writer in the package (convert, label store, labels writer, predictor)
goes through ``multiscales_attrs`` so the layout is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WRITE_VERSION = "0.4"
SPACE_UNITS = {"micrometer", "millimeter", "nanometer", "meter", "centimeter"}


def axes_list(axes: str, unit: str) -> list[dict[str, Any]]:
    """NGFF axes for our axis names (``YXC`` is stored as ``CYX``: NGFF wants channel before space)."""
    out = []
    for a in axes:
        if a == "C":
            out.append({"name": "c", "type": "channel"})
        elif a == "T":
            out.append({"name": "t", "type": "time"})
        else:
            out.append({"name": a.lower(), "type": "space", "unit": unit})
    return out


def ngff_axes_order(axes: str) -> str:
    """The on-disk axis order for ``axes``: channel (and time) before space, e.g. ``YXC -> CYX``."""
    return "".join(a for a in axes if a in "TC") + "".join(a for a in axes if a not in "TC")


def multiscales_attrs(
    axes: str,
    level_scales: Sequence[Sequence[float]],
    unit: str,
    name: str = "image",
    level_translations: Sequence[Sequence[float]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``multiscales`` attribute for on-disk ``axes`` with one scale vector per level (all axes)."""
    datasets = []
    for i, sc in enumerate(level_scales):
        if len(sc) != len(axes):
            raise ValueError(f"scale {sc} does not match axes {axes}")
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [float(s) for s in sc]}]
        if level_translations is not None:
            transforms.append({"type": "translation", "translation": [float(t) for t in level_translations[i]]})
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    ms: dict[str, Any] = {"version": WRITE_VERSION, "name": name, "axes": axes_list(axes, unit), "datasets": datasets}
    if metadata:
        ms["metadata"] = metadata
    return {"multiscales": [ms]}


def image_label_attrs(colors: dict[int, tuple[float, float, float, float]] | None = None,
                      source_image: str = "../../") -> dict[str, Any]:
    """The ``image-label`` attribute for a labels group (colors as RGBA 0-255 per label value)."""
    il: dict[str, Any] = {"version": WRITE_VERSION, "source": {"image": source_image}}
    if colors:
        il["colors"] = [{"label-value": int(v), "rgba": [int(round(c * 255)) for c in rgba]}
                        for v, rgba in sorted(((v, c) for v, c in colors.items() if v is not None),
                                              key=lambda kv: kv[0])]
    return {"image-label": il}


def ome_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """NGFF attributes of a group, whichever version: 0.5 nests them under ``"ome"``."""
    if isinstance(attrs.get("ome"), dict):
        return attrs["ome"]
    return attrs


def parse_multiscales(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The first multiscales entry with ``axes`` (our names, e.g. ``CZYX``), ``paths``, per-level ``scales``
    and ``translations`` (full vectors), ``units`` per axis and ``version``; None if there is none."""
    a = ome_attrs(attrs)
    ms = a.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        return None
    m = ms[0]
    raw_axes = m.get("axes")
    datasets = m.get("datasets") or []
    if not datasets:
        return None
    if raw_axes is None:  # NGFF 0.1-0.3 had none: assume 5D TCZYX trimmed later by the caller
        names, units = None, None
    else:
        names = "".join((ax["name"] if isinstance(ax, dict) else str(ax)).upper()[:1] for ax in raw_axes)
        units = [ax.get("unit") if isinstance(ax, dict) else None for ax in raw_axes]
    scales, translations, paths = [], [], []
    for d in datasets:
        paths.append(str(d["path"]))
        sc, tr = None, None
        for t in d.get("coordinateTransformations", []) or []:
            if t.get("type") == "scale":
                sc = [float(v) for v in t.get("scale", [])]
            elif t.get("type") == "translation":
                tr = [float(v) for v in t.get("translation", [])]
        scales.append(sc)
        translations.append(tr)
    version = str(m.get("version") or a.get("version") or ("0.5" if "ome" in attrs else "0.4"))
    return {"axes": names, "units": units, "paths": paths, "scales": scales, "translations": translations,
            "name": m.get("name"), "version": version, "metadata": m.get("metadata") or {}}
