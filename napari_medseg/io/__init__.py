"""File formats: open slides and volumes lazily as pyramids (TIFF/SVS, OME-Zarr, NIfTI, DICOM, PNG/JPEG),
NGFF zarr writing and conversion.

The types these return (``ImageSource``, ``ClassSchema``, the errors) live in ``napari_medseg.core``.
Imports no Qt, napari or magicgui (a test checks this in a fresh interpreter).
"""

from napari_medseg.io.reader import open_image, open_path, sniff

__all__ = ["open_image", "open_path", "sniff"]
