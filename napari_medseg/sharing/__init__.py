"""Models that travel: bioimage.io packages in and out, ONNX / TorchScript files with a sidecar, and the
model library (one folder of trained and imported models with their metadata). Pure: no Qt, no napari.

Floor: imports ``core``, ``io``, ``models``; ``training``, ``inference``, ``cli`` and ``_napari`` import it.

Public API (imported lazily: ``import napari_medseg.sharing`` stays light; bioimageio.spec, onnxruntime and
torch load with the first name that needs them):

- ``export_bioimageio``, ``ExportedPackage`` (``bioimageio_export.py``);
- ``describe_model_file``, ``open_model_file``, ``read_sidecar`` (``model_files.py``); ``ModelFileInfo``,
  ``OpenedModel``, ``package_checkpoint`` (``bioimageio_import.py``); ``model_file_kind``,
  ``is_foreign_model_file`` (``package_files.py``);
- the library: ``library_folder``, ``list_models``, ``add_checkpoint``, ``add_file``, ``remove``, ``find``,
  ``LibraryEntry`` (``library.py``).
"""

from __future__ import annotations

from napari_medseg.core.lazy_exports import lazy_exports

_EXPORTS = {
    "export_bioimageio": "bioimageio_export", "ExportedPackage": "bioimageio_export",
    "describe_model_file": "model_files", "open_model_file": "model_files", "read_sidecar": "model_files",
    "ModelFileInfo": "bioimageio_import", "OpenedModel": "bioimageio_import",
    "package_checkpoint": "bioimageio_import", "model_file_kind": "package_files",
    "is_foreign_model_file": "package_files",
    "library_folder": "library", "list_models": "library", "add_checkpoint": "library", "add_file": "library",
    "remove": "library", "find": "library", "LibraryEntry": "library",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
