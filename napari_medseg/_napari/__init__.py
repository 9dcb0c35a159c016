"""The only package that imports napari, qtpy and magicgui: reader/writer/sample glue, widgets, workers."""
