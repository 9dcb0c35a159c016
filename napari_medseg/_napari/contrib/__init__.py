"""npe2 contributions named in napari.yaml: the reader, the writers and the sample data."""
