"""napari-medseg: interactive segmentation of whole slides and CT/MRI volumes in napari.

Importing the package imports nothing heavy (no Qt, napari or torch): see ``napari_medseg.io``,
``models``, ``training``, ``inference`` for the pure engine and ``napari_medseg._napari`` for the GUI. Its one
side effect: on Linux it sets ``THP_MEM_ALLOC_ENABLE=1`` in the environment unless it is set (below).
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# PyTorch's CPU tensors of 2 MiB and more on transparent huge pages (PyTorch reads the variable once, by the time
# it has loaded: this works where torch is imported after this package, as the CLI and the plugin do; a value the
# user set wins): a CPU training step's activations no longer fault in 4 KiB at a time (core/heap.py,
# docs/training.md).
if _sys.platform.startswith("linux"):
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
