"""Widget settings remembered between runs of napari: one JSON file in the user's config folder.

``NAPARI_MEDSEG_CONFIG`` overrides the folder (tests use a temporary one). Unknown or damaged files are
ignored with a log message: settings are a convenience and must never stop the plugin from starting.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def settings_path() -> Path:
    env = os.environ.get("NAPARI_MEDSEG_CONFIG")
    if env:
        return Path(env) / "settings.json"
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-medseg")) / "settings.json"


def load_settings(section: str) -> dict[str, Any]:
    p = settings_path()
    try:
        data = json.loads(p.read_text())
        sec = data.get(section, {})
        return sec if isinstance(sec, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable settings file %s (%s)", p, e)
        return {}


def save_settings(section: str, values: dict[str, Any]) -> None:
    p = settings_path()
    try:
        try:
            data = json.loads(p.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data[section] = values
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".settings.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, p)
    except OSError as e:
        log.warning("could not save settings to %s (%s)", p, e)
