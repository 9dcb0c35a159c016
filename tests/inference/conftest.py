"""Fixtures for the inference tests (helpers live in ``infer_helpers.py``)."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import halve, small_unet, textured_rgb, zarr_source

from napari_medseg.core.source import ImageSource


@pytest.fixture
def rgb_source(tmp_path) -> ImageSource:
    img = textured_rgb(300, 350)
    return zarr_source(tmp_path / "rgb.zarr", [img, halve(img, (0, 1))], "YXC", chunks=(64, 64, 3))


@pytest.fixture
def unet2d() -> torch.nn.Module:
    return small_unet()
