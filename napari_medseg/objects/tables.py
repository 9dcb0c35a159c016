"""Object tables: counts and densities per class (and per drawn region), and reading/writing tables.

``summarize(table)`` counts the objects of a ``measure_objects`` table per class and divides by the area
(2D, per mm^2) or volume (3D, per mm^3) they were found in: the whole measured array, or each region of
``regions`` (a label array of user-drawn regions on the objects' pixel grid, or polygons in level-0
pixel coordinates ``(x, y)``, QuPath's convention). An object belongs to the region that holds its centroid.

``write_table`` / ``read_table`` pick the format by suffix: ``.csv``, ``.tsv`` (text, opened by any
spreadsheet) or ``.parquet`` (typed, compressed, fast for the millions of rows of a whole slide; via
pyarrow).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.errors import GeometryMismatchError, MedsegError, UnreadableInputError
from napari_medseg.io.lazy import unit_to_meter

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
#: the units of the table's column names, by metres per unit (any spelling ``io.lazy.unit_to_meter`` knows)
_SHORT = {1e-6: "um", 1e-3: "mm", 1e-9: "nm", 1e-2: "cm"}


def normalize_unit(unit: str) -> tuple[str, float]:
    """(short name used in column names, metres per unit; 0 for pixels) of a unit spelling."""
    if str(unit).strip().lower() in ("px", "pixel", "pixels"):
        return "px", 0.0
    metres = unit_to_meter(unit)
    if metres not in _SHORT:
        raise MedsegError(f"unknown unit {unit!r}; use one of um, mm, nm, cm or px.")
    return _SHORT[metres], metres


def _geometry(table: Any, pixel_size: Any, unit: str | None, shape: Any) -> dict[str, Any]:
    a = dict(getattr(table, "attrs", {}) or {})
    cols = [str(c) for c in table.columns]
    nd = 3 if any(c.startswith("volume_") for c in cols) or "centroid_z_px" in cols else 2
    nd = int(a.get("ndim", nd))
    if unit is None:
        unit = a.get("unit")
    if unit is None:  # from the column names, e.g. centroid_x_um
        unit = next((c.rsplit("_", 1)[1] for c in cols if c.startswith("centroid_x_") and not c.endswith("_px")),
                    "px")
    u, _ = normalize_unit(unit)
    px = pixel_size if pixel_size is not None else a.get("pixel_size")
    px = tuple(float(v) for v in np.broadcast_to(np.asarray(px if px is not None else 1.0, float), (nd,)))
    return {"ndim": nd, "unit": u, "pixel_size": px, "shape": shape if shape is not None else a.get("shape"),
            "offset": tuple(a.get("offset") or (0.0,) * nd), "downsample": tuple(a.get("downsample") or (1.0,) * nd)}


def _region_index(table: Any, g: dict[str, Any], regions: np.ndarray) -> np.ndarray:
    """The region value under each object's centroid (objects' pixel grid)."""
    nd = g["ndim"]
    if regions.ndim != nd or (g["shape"] is not None and tuple(regions.shape) != tuple(g["shape"])):
        raise GeometryMismatchError(f"the regions array has shape {regions.shape} but the objects were measured "
                                    f"in an array of shape {tuple(g['shape'] or ())}; draw the regions on the "
                                    "same grid.")
    idx = []
    for i, a in enumerate("zyx"[-nd:]):
        c = (table[f"centroid_{a}_px"].to_numpy(float) - g["offset"][i] - (g["downsample"][i] - 1) / 2)
        idx.append(np.clip(np.rint(c / g["downsample"][i]).astype(np.int64), 0, regions.shape[i] - 1))
    return regions[tuple(idx)] if len(table) else np.zeros(0, regions.dtype)


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def summarize(table: Any, *, regions: Any = None, class_names: Sequence[str] | None = None,
              region_names: Sequence[str] | Mapping[int, str] | None = None, pixel_size: Any = None,
              unit: str | None = None, shape: Sequence[int] | None = None) -> Any:
    """Count and density per class, per region (``"all"``: the whole measured array) as a DataFrame with
    columns ``region``, ``class``, ``count``, ``area_mm2``/``volume_mm3`` and ``density_per_mm2``/``_mm3``
    (``_px2``/``_px3`` when no physical size is known), plus one ``class == "all"`` row per region.

    ``class_names``: classes listed even when they have no object (e.g. ``ClassSchema.objects``).
    ``regions``: a label array (0 = outside every region) on the objects' grid, or polygons (a list of
    ``(N, 2)`` ``(x, y)`` arrays or a mapping name -> polygon) in level-0 pixels (2D only). Geometry
    (``pixel_size``, ``unit``, ``shape``) defaults to what ``measure_objects`` kept in ``table.attrs``."""
    import pandas as pd

    if "class" not in table.columns:
        raise MedsegError("a table to summarize needs a 'class' column (made by measure_objects).")
    g = _geometry(table, pixel_size, unit, shape)
    nd, u = g["ndim"], g["unit"]
    to_mm = normalize_unit(u)[1] / 1e-3 if u != "px" else 1.0
    au = "mm" if u != "px" else "px"
    cell = float(np.prod(g["pixel_size"])) * to_mm ** nd  # one pixel of the objects' grid, mm^nd
    level0_px = [p / d for p, d in zip(g["pixel_size"], g["downsample"])]
    names: list[str] = []
    areas: list[float] = []
    member: list[np.ndarray] = []
    n = len(table)
    if regions is None:
        names, member = ["all"], [np.ones(n, bool)]
        areas = [float(np.prod(g["shape"])) * cell if g["shape"] is not None else float("nan")]
    elif isinstance(regions, (Mapping, list, tuple)):
        if nd != 2:
            raise MedsegError("polygon regions are 2D; give 3D regions as a label array.")
        items = list(regions.items()) if isinstance(regions, Mapping) else [
            (None, r) for r in regions]
        if n:
            pts = np.stack([table["centroid_x_px"].to_numpy(float) + 0.5,
                            table["centroid_y_px"].to_numpy(float) + 0.5], axis=1)
        from skimage.measure import points_in_poly

        for k, (name, poly) in enumerate(items):
            poly = np.asarray(poly, float)
            if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
                raise MedsegError(f"region {k + 1}: a polygon needs at least 3 (x, y) vertices, got shape {poly.shape}.")
            names.append(str(name) if name is not None else _region_name(k + 1, region_names))
            areas.append(_polygon_area(poly) * level0_px[0] * level0_px[1] * to_mm ** 2)
            member.append(points_in_poly(pts, poly) if n else np.zeros(0, bool))
    else:
        reg = np.asarray(regions)
        if reg.dtype.kind not in "uib":
            raise MedsegError(f"a regions array holds integer region ids, got {reg.dtype}.")
        reg = reg.astype(np.int64)
        under = _region_index(table, g, reg)
        counts = np.bincount(reg.ravel()[reg.ravel() >= 0])
        for v in np.flatnonzero(counts):
            if v == 0:
                continue
            names.append(_region_name(int(v), region_names))
            areas.append(float(counts[v]) * cell)
            member.append(under == v)
    classes = list(dict.fromkeys([*(class_names or []), *sorted(set(table["class"].astype(str)))]))
    cls = table["class"].astype(str).to_numpy() if n else np.zeros(0, str)
    area_col = f"area_{au}2" if nd == 2 else f"volume_{au}3"
    dens_col = f"density_per_{au}{nd}"
    rows = []
    for name, area, m in zip(names, areas, member):
        for c in [*classes, "all"]:
            count = int(m.sum()) if c == "all" else int((m & (cls == c)).sum())
            rows.append({"region": name, "class": c, "count": count, area_col: area,
                         dens_col: count / area if area and np.isfinite(area) else float("nan")})
    return pd.DataFrame(rows, columns=["region", "class", "count", area_col, dens_col])


def _region_name(v: int, region_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if isinstance(region_names, Mapping):
        return str(region_names.get(v, f"region {v}"))
    if region_names is not None and 0 < v <= len(region_names):
        return str(region_names[v - 1])
    return f"region {v}"


def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    if s not in TABLE_SUFFIXES:
        raise MedsegError(f"{path}: unknown table format {s or '(no suffix)'!r}; name the file .csv, .tsv or "
                          ".parquet.")
    return s


def write_table(df: Any, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV, TSV or Parquet (by the suffix of ``path``) and return the path."""
    p = Path(path)
    s = _suffix(p)
    if not p.parent.is_dir():
        raise MedsegError(f"{p.parent}: the folder does not exist; create it or choose another path for the table.")
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise MedsegError(f"{p}: no permission to write there; choose another path for the table.")
    try:
        if s == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as e:
                raise MedsegError("writing .parquet needs pyarrow (pip install pyarrow), or write .csv.") from e
            out = df.copy()
            out.attrs = {}  # the geometry in attrs is for summarize in memory; columns say the units
            out.to_parquet(p, index=False)
        else:
            df.to_csv(p, sep="," if s == ".csv" else "\t", index=False)
    except OSError as e:
        raise MedsegError(f"{p}: could not write the table ({e.strerror or e}).") from e
    return p


def read_table(path: str | os.PathLike) -> Any:
    """Read a table written by ``write_table`` (or any CSV/TSV/Parquet table)."""
    import pandas as pd

    p = Path(path)
    s = _suffix(p)
    if not p.is_file():
        raise UnreadableInputError(f"{p}: no such file.")
    try:
        if s == ".parquet":
            return pd.read_parquet(p)
        return pd.read_csv(p, sep="," if s == ".csv" else "\t")
    except ImportError as e:
        raise MedsegError("reading .parquet needs pyarrow (pip install pyarrow).") from e
    except Exception as e:
        raise UnreadableInputError(f"{p}: not a readable {s[1:].upper()} table ({type(e).__name__}: {e}).") from e
