"""``ClassSchema.default``: the schema of n model outputs when nothing names the classes."""

from __future__ import annotations

import pytest

from napari_medseg.core.classes import DEFAULT_COLORS, ClassSchema
from napari_medseg.core.errors import MedsegError


def test_default_schema_names_background_and_numbered_classes():
    s = ClassSchema.default(3)
    assert s.names == ("background", "class 1", "class 2") and s.n_classes == 3
    assert s.colors == tuple(DEFAULT_COLORS[:3])
    assert ClassSchema.default(20).colors[12] == DEFAULT_COLORS[0]  # colors cycle
    assert ClassSchema.from_dict(s.to_dict()) == s


def test_default_schema_needs_a_class():
    with pytest.raises(MedsegError):
        ClassSchema.default(1)
