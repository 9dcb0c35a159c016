"""napari-medseg: interactive segmentation of whole slides and CT/MRI volumes in napari.

Importing the package imports nothing heavy (no Qt, napari or torch): see ``napari_medseg.io``,
``models``, ``training``, ``inference`` for the pure engine and ``napari_medseg._napari`` for the GUI.
"""

__version__ = "0.1.0"
