"""Pure IO: open slides and volumes lazily as pyramids, the label store, NGFF zarr writing, conversion.

Imports no Qt, napari or magicgui (a test checks this in a fresh interpreter).
"""

from .classes import ClassSchema
from .errors import GeometryMismatchError, MedsegError, StoreLockedError, UnreadableInputError
from .reader import open_image, open_path, sniff
from .source import ImageSource

__all__ = [
    "ClassSchema",
    "GeometryMismatchError",
    "ImageSource",
    "MedsegError",
    "StoreLockedError",
    "UnreadableInputError",
    "open_image",
    "open_path",
    "sniff",
]
