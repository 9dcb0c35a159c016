"""``python -m napari_medseg.cli``: the same as the ``napari-medseg`` console script."""

import sys

from napari_medseg.cli import main

sys.exit(main())
