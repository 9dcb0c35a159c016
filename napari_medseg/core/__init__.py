"""The ground floor: what every other package shares and nothing of the project below it.

Errors with user-ready messages (``errors``), the class schema (``classes``), ``ImageSource`` (``source``),
the user's folders (``user_folders``) and the tissue mask of an image (``tissue``). Imports numpy, dask and
scikit-image only; never torch, Qt or napari.
"""

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import (
    GeometryMismatchError,
    MedsegError,
    StoreLockedError,
    UnreadableInputError,
)
from napari_medseg.core.source import ImageSource

__all__ = [
    "ClassSchema",
    "GeometryMismatchError",
    "ImageSource",
    "MedsegError",
    "StoreLockedError",
    "UnreadableInputError",
]
