"""The label store: sparse, chunked, crash-safe labels of any image size (``store.LabelStore``), composed of
its on-disk format (``format``), per-chunk index and write version (``index``) and chunk IO with the
overview pyramid (``chunks``); its edit lock (``lock``), snapshots for training (``snapshot``), whole-store
operations as functions (``ops``), where an image's labels live (``location``) and accepting a prediction
(``accept``). Chunk-grid arithmetic is in ``core.grid``.

Imports ``core`` and ``io`` only; no Qt, napari or torch.
"""
