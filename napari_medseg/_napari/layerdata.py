"""The one bridge between the pure engine's ``ImageSource`` and napari layers (both ways).

- ``to_layer_data(src, role=...)``: the napari LayerData tuple ``(data, kwargs, layer_type)`` of a source:
  an ``"image"`` (multiscale when the source has several levels, ``scale`` from the pixel size, the
  plugin's description in ``metadata["napari_medseg"]``) or, for ``src.kind == "labels"``, ``"labels"``.
  The ``role`` says what the layer is for:

  - ``"source"``: a file as the reader opens it; labels get their NGFF colors, and the tissue mask a
    prediction writes beside its result opens hidden and faint (``is_tissue_mask``);
  - ``"prediction"``: the output of a prediction run as the Predict widget shows it (``prediction_layer_data``):
    labels at opacity 0.7 with the class colors, placed by their ``translate``; probabilities hidden,
    additive;
  - ``"reference"``: reference labels (a sample's ground truth, ``reference_layers``) in label-store values,
    drawn with the store colors of ``classes`` (background transparent), not editable once in a viewer.

  Keyword arguments given to ``to_layer_data`` override the layer kwargs (``visible``, ``opacity``...).
- ``from_layer(layer, reopen=...)``: the ``ImageSource`` behind an Image layer.
- ``store_colormap`` / ``prediction_colormap``: the napari colormaps of label-store values and of predictions.
- ``medseg_meta(layer)``: the plugin's metadata of a layer; ``units_of(layer, ndim)``: the units a layer drawn
  over it takes.

Nothing here touches a viewer: the functions build values from values, so a worker thread may call them (the
Predict job opens its result's layer data in its worker). The pure engine holds no napari vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from napari.utils.colormaps import DirectLabelColormap

from napari_medseg._napari.reference_layers import mark_reference
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource

LayerData = tuple[Any, ...]
Role = Literal["source", "prediction", "reference"]

#: opacity of a tissue mask layer once shown: with the mask's own colour (alpha 0.35) a faint tint over the tissue
TISSUE_OPACITY = 0.3
TISSUE_NAME = "tissue mask"
PREDICTION_OPACITY = 0.7
_CLEAR = (0.0, 0.0, 0.0, 0.0)


# -- colormaps ------------------------------------------------------------------------------------------
def store_colormap(classes: ClassSchema, *, alpha: float = 0.7, background: bool = True) -> DirectLabelColormap:
    """napari colormap for label-store values (0 transparent, 1 background, 2.. classes); without
    ``background`` value 1 is drawn transparent too (only the classes show)."""
    colors = classes.store_colors(alpha=alpha)
    if not background:
        colors[1] = _CLEAR
    return DirectLabelColormap(color_dict=colors)


def prediction_colormap(classes: ClassSchema, *, alpha: float = 0.7) -> DirectLabelColormap:
    """napari colormap for predictions (0 background, transparent; k = class k): same colors per class."""
    return DirectLabelColormap(color_dict=classes.prediction_colors(alpha=alpha))


def _label_colors(colors: dict[Any, Any]) -> dict[Any, tuple[float, ...]]:
    """A labels colormap (value -> RGBA) from NGFF ``image-label`` colors; 0 and unlisted values transparent."""
    cmap: dict[Any, tuple[float, ...]] = {0: _CLEAR, None: _CLEAR}
    cmap.update({int(k): tuple(float(c) for c in v) for k, v in colors.items() if k is not None})
    return cmap


# -- layer metadata -------------------------------------------------------------------------------------
def medseg_meta(layer: Any) -> dict[str, Any]:
    """The plugin's description of ``layer`` (``metadata["napari_medseg"]``), empty if it has none."""
    meta = getattr(layer, "metadata", None) or {}
    m = meta.get("napari_medseg")
    return m if isinstance(m, dict) else {}


def units_of(layer: Any, ndim: int) -> dict[str, Any]:
    """``{"units": ...}`` of ``layer``'s last ``ndim`` axes for a layer drawn over it (napari ignores units
    for rendering, with a console warning on every add, when layers disagree); empty if it has none."""
    units = getattr(layer, "units", None) if layer is not None else None
    return {"units": tuple(units)[-ndim:]} if units is not None else {}


def is_tissue_mask(src: ImageSource) -> bool:
    """Whether ``src`` is the tissue mask a prediction writes beside its result: the ``labels/tissue`` group
    of an NGFF zarr, named "tissue mask" (1 = tissue, where windows were computed)."""
    parts = [p for p in str(src.metadata.get("ngff_path") or "").split("/") if p]
    return src.kind == "labels" and parts[-2:] == ["labels", "tissue"] and src.name == TISSUE_NAME


# -- ImageSource -> napari ------------------------------------------------------------------------------
def _base_kwargs(src: ImageSource) -> dict[str, Any]:
    """What every layer of ``src`` gets: name, pyramid, scale, units and the plugin's metadata."""
    kw: dict[str, Any] = {
        "name": src.name,
        "multiscale": len(src.levels) > 1,
        "scale": src.pixel_size,
        "units": src.unit,
        "metadata": {"napari_medseg": {"path": src.path, "axes": src.axes, "modality": src.modality,
                                       "unit": src.unit, **src.metadata}},
    }
    if src.channel_axis is not None and not src.rgb:
        kw["channel_axis"] = src.channel_axis
        if src.channel_names:
            kw["name"] = [f"{src.name} [{c}]" for c in src.channel_names]
    if src.kind == "labels":
        return kw
    kw["rgb"] = src.rgb
    if src.contrast_limits is not None and not src.rgb:
        kw["contrast_limits"] = list(src.contrast_limits)
    if src.modality in ("CT", "MR") or src.spatial_dims == 3:
        kw["colormap"] = "gray"
    return kw


def to_layer_data(src: ImageSource, role: Role = "source", *, classes: ClassSchema | None = None,
                  **overrides: Any) -> LayerData:
    """The napari LayerData tuple ``(data, kwargs, layer_type)`` of ``src`` in ``role`` (see the module);
    ``classes`` (the store's class schema) is needed for ``role="reference"``."""
    data = src.levels if len(src.levels) > 1 else src.levels[0]
    kw = _base_kwargs(src)
    translate = src.metadata.get("translate")
    if role == "prediction" or translate:  # a prediction made at an offset or a coarser level
        kw["translate"] = tuple(float(t) for t in (translate or (0.0,) * src.spatial_dims))
    kind = "labels" if src.kind == "labels" or role == "reference" else "image"
    if role == "reference":
        if classes is None:
            raise ValueError("reference labels need their classes")
        kw["colormap"] = store_colormap(classes, alpha=1.0, background=False)  # only the classes are drawn
        kw["metadata"]["napari_medseg"]["classes"] = classes.to_dict()
        mark_reference(kw["metadata"])
    elif kind == "labels":
        colors = src.metadata.get("colors") or {}
        if colors:
            kw["colormap"] = _label_colors(colors)
        if role == "prediction":
            kw["opacity"] = PREDICTION_OPACITY
        elif is_tissue_mask(src):
            # where a prediction looked for tissue: context, not a result. Shown as it is it covers the image
            # with a coarse block over every tissue pixel; it opens hidden, and faint once ticked. (An outline
            # would be clearer still, but napari's Labels take ``contour`` only after they are made.)
            kw.update(visible=False, opacity=TISSUE_OPACITY)
    elif role == "prediction":  # the class probabilities: there to look at on demand
        kw.update(blending="additive", visible=False)
    kw.update(overrides)
    return (data, kw, kind)


def prediction_layer_data(out: str | Path) -> list[LayerData]:
    """The LayerData of the prediction at ``out`` (labels, then probabilities and tissue mask if written),
    as the Predict widget shows it (``role="prediction"``)."""
    from napari_medseg.inference.results import open_prediction

    return [to_layer_data(src, role="prediction") for src in open_prediction(out)]


# -- napari -> ImageSource ------------------------------------------------------------------------------
def from_layer(layer: Any, *, reopen: bool = True) -> ImageSource:
    """The ``ImageSource`` behind an Image layer.

    With ``reopen`` (for workers) a layer made by the plugin's reader is reopened lazily from its file, so
    the worker has its own file handle and never touches the layer; otherwise (and for layers from
    elsewhere) the layer's own (lazy) levels are wrapped, with axes and units from the plugin's metadata.
    """
    meta = medseg_meta(layer)
    path = meta.get("path") or getattr(getattr(layer, "source", None), "path", None)
    if reopen and meta.get("path"):
        from napari_medseg.io.reader import open_path

        for src in open_path(meta["path"]):
            if src.kind == "image":
                return src
    levels = list(layer.data) if getattr(layer, "multiscale", False) else [layer.data]
    ndim = levels[0].ndim
    axes = meta.get("axes")
    if not axes or len(axes) != ndim:
        axes = "YXC" if getattr(layer, "rgb", False) else {2: "YX", 3: "ZYX", 4: "CZYX"}.get(ndim)
    if axes is None:
        raise MedsegError(f"layer {layer.name!r} has {ndim} dimensions; napari-medseg works on 2D slides "
                          "and 3D volumes.")
    n_sp = sum(a in "ZYX" for a in axes)
    rgb = bool(getattr(layer, "rgb", False)) and "C" in axes
    return ImageSource(levels=levels, axes=axes, pixel_size=tuple(float(s) for s in layer.scale[-n_sp:]),
                       unit=meta.get("unit") or ("millimeter" if n_sp == 3 else "micrometer"), name=layer.name,
                       path=str(path) if path else None, rgb=rgb,
                       modality=meta.get("modality") or ("brightfield" if rgb else "unknown"))
