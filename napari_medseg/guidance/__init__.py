"""Where to paint next: rank an image's regions by how unsure the current model is there (``scoring``), and
answer which region to paint next against the labels as they are now (``ranking``).

No Qt, no napari: the CLI (``napari-medseg rank``) and the Annotate widget's "Where to paint next" box use it.
Imports torch only when ``rank_regions`` / ``run_rank`` are first used.
"""

from napari_medseg.core.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "rank_regions": "scoring", "run_rank": "scoring", "RankProgress": "ranking",
    "RegionRanking": "ranking", "RankedRegion": "ranking", "painted_fraction": "ranking",
    "PAINTED_MAX": "ranking",
})
