"""The plugin's npe2 manifest as the widgets see it: which dock widgets it contributes, in its order."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

PLUGIN = "napari-medseg"


def manifest_widgets() -> list[tuple[str, str]]:
    """(display name, command id) of every widget in the plugin's manifest (npe2, else napari.yaml)."""
    try:
        from npe2 import PluginManager

        mf = PluginManager.instance().get_manifest(PLUGIN)
        return [(w.display_name, w.command) for w in (mf.contributions.widgets or [])]
    except Exception as e:  # not registered (e.g. run from a source tree): read the file itself
        logger.debug("npe2 manifest lookup failed (%s); reading napari.yaml", e)
        import yaml

        data = yaml.safe_load((Path(__file__).resolve().parents[2] / "napari.yaml").read_text())
        return [(w["display_name"], w["command"]) for w in data.get("contributions", {}).get("widgets", [])]
