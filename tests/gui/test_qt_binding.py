"""The Qt binding the package installs is one napari supports without a warning on every start."""

from __future__ import annotations

import importlib.metadata

import qtpy


def test_the_binding_in_use_is_not_the_one_napari_warns_about():
    """napari shows "support for the PyQt5 backend is deprecated" on every start under Qt 5 (its condition
    is the Qt major version): a notice a user cannot act on, over the canvas. The test environment runs
    with the binding the package's extras install."""
    assert int(qtpy.QT_VERSION.split(".")[0]) >= 6, f"running on {qtpy.API_NAME} {qtpy.QT_VERSION}"


def test_the_extras_install_a_qt6_binding():
    reqs = importlib.metadata.requires("napari-medseg") or []
    extra = {r.split(";")[0].strip() for r in reqs if 'extra == "all"' in r}
    testing = {r.split(";")[0].strip().split(">")[0] for r in reqs if 'extra == "testing"' in r}
    assert extra == {"napari[pyqt6]"}, extra
    assert "PyQt6" in testing and "PyQt5" not in testing, testing
