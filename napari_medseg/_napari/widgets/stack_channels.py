"""Dock widget "Stack channels": open image layers (T1, T2, FLAIR; CT and PET...) as the channels of one image.

Tick the layers in the order the model should see them and press "Stack": a new Image layer ``a+b`` holds
them as ``C(Z)YX`` (a channel slider in napari), which the Train and Predict widgets take like a 4D NIfTI.
The check (same grid, spacing and position within 1e-3 mm, else a message naming the layer and the
difference) and the stacking are ``io/stack.py``'s ``stack_arrays``; nothing is copied (a lazy dask stack of
the layers' full-resolution data). See docs/multimodal.md.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from napari_medseg._napari.dock_layout import TabsOnFirstShow
from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg._napari.layers import add_then_show, on_layer_renamed
from napari_medseg.core.errors import MedsegError


def _level0(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def stack_layers(viewer: Any, layers: list[Any], name: str | None = None) -> Any:
    """Add (and return) an Image layer whose channels are ``layers`` (single-channel 2D or 3D images)."""
    from napari_medseg.io.stack import stack_arrays

    if len(layers) < 2:
        raise MedsegError("Tick at least two image layers to stack as channels.")
    for lay in layers:
        if getattr(lay, "rgb", False):
            raise MedsegError(f"{lay.name}: an RGB layer cannot be a channel; stack grey images.")
    arrays = [_level0(lay) for lay in layers]
    ndim = arrays[0].ndim
    metas = [medseg_meta(lay) for lay in layers]
    affines = [m.get("affine_ras") for m in metas]
    data, names = stack_arrays(arrays, [lay.name for lay in layers],
                               [tuple(float(s) for s in lay.scale[-ndim:]) for lay in layers],
                               affines if all(a is not None for a in affines) else None)
    first = metas[0]
    unit = first.get("unit") or ("millimeter" if ndim == 3 else "micrometer")
    modalities = [m.get("modality", "unknown") for m in metas]
    meta = {"napari_medseg": {
        "path": None, "axes": "C" + ("ZYX" if ndim == 3 else "YX"), "unit": unit,
        "modality": modalities[0] if len(set(modalities)) == 1 else "unknown",
        "channel_names": names, "channel_modalities": modalities, "stacked_layers": names,
        **({"affine_ras": first["affine_ras"]} if "affine_ras" in first else {})}}
    return add_then_show(viewer, "image", data, name=name or "+".join(names), metadata=meta,
                         scale=(1.0, *layers[0].scale[-ndim:]), colormap="gray", activate=True)


class StackChannelsWidget(TabsOnFirstShow, QWidget):
    """Tick image layers, press Stack: one multi-channel layer for the Train/Predict widgets (see module)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Co-registered images to use as the channels of one image, in order:"))
        self.list = QListWidget()
        lay.addWidget(self.list)
        self.button = QPushButton("Stack as channels")
        self.button.clicked.connect(self._stack)
        lay.addWidget(self.button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._refresh()
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh)
        on_layer_renamed(napari_viewer, self._refresh)

    def _refresh(self, *_: Any) -> None:
        from napari.layers import Image

        ticked = set(self.checked_names())
        self.list.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and not getattr(layer, "rgb", False) and _level0(layer).ndim in (2, 3):
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if layer.name in ticked else Qt.CheckState.Unchecked)
                self.list.addItem(item)

    def checked_names(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())
                if self.list.item(i).checkState() == Qt.CheckState.Checked]

    def _stack(self) -> None:
        try:
            names = self.checked_names()
            layer = stack_layers(self.viewer, [self.viewer.layers[n] for n in names])
        except MedsegError as e:
            self.status.setText(str(e))
            return
        self.status.setText(f"Added {layer.name!r}: {len(names)} channels ({', '.join(names)}). Choose it as "
                            "the image in Train or Predict.")
