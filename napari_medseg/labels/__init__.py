"""The label store: sparse, chunked, crash-safe labels of any image size (``store``), its chunk IO
(``chunks``), per-chunk index (``index``), lock (``lock``), snapshots for training (``snapshot``), edits as
functions (``ops``), where an image's labels live (``location``) and accepting a prediction (``accept``).

Imports ``core`` and ``io`` only; no Qt, napari or torch.
"""
