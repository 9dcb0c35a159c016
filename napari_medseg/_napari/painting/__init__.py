"""Painting any image size: the controller that keeps an editable window of the label store under the
brush (``controller``), where that window goes (``window_geometry``), what changed in it (``window_edits``) and
the read-only overview of the whole store (``store_overview``)."""
