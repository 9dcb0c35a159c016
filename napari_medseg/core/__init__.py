"""The ground floor: what every other package shares, importing nothing of the project.

Errors with user-ready messages (``errors``), the class schema (``classes``), ``ImageSource`` and ``read_box``
(``source``), chunk and box arithmetic (``grid``), one atomic file write (``files``), dask computes safe from
any thread (``compute``), driving a generator of events (``events``), config field checking
(``config_values``), lazy package faces (``lazy_exports``), the user's folders (``user_folders``), the
tissue mask of an image (``tissue``) and glibc's heap during long runs (``heap``). Imports numpy, dask and scikit-image only; never torch, Qt or napari.
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
