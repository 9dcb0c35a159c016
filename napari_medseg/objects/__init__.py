"""Objects, not only pixels: instances from a semantic prediction, their measurements and their exchange
with other tools. Pure numpy / scikit-image; no Qt, no torch."""
