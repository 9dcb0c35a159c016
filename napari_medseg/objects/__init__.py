"""Objects, not only pixels: instances from a semantic prediction, their measurements and their exchange
with other tools. Pure numpy / scikit-image; no Qt, no torch. This face imports nothing heavy (the CLI reads its
defaults while building ``--help``)."""

#: interiors smaller than this many pixels are speckle of an uncertain prediction, not objects (the default of
#: the CLI, the Objects widget and the benchmark; ``find_objects`` itself defaults to 0, no filtering)
DEFAULT_MIN_SEED = 10
