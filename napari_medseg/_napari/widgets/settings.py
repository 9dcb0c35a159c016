"""Widget settings remembered between runs of napari: one JSON file in the user's config folder.

``NAPARI_MEDSEG_CONFIG`` overrides the folder (tests use a temporary one). Unknown or damaged files are
ignored with a log message: settings are a convenience and must never stop the plugin from starting.

Settings that could crash napari (training that needs more memory than the machine has) are kept as
*unconfirmed* first: ``save_unconfirmed`` when the work starts, ``confirm`` once it has shown it runs (the
first training step), ``drop_unconfirmed`` when it ends without that. Unconfirmed settings still there at the
next launch mean napari died before confirming them: ``take_unconfirmed`` returns them (once) so the widget
can say so, and ``load_settings`` keeps returning the last confirmed ones.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from napari_medseg.core.files import write_json_atomic

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
        write_json_atomic(p, data, indent=1, default=str)
    except OSError as e:
        log.warning("could not save settings to %s (%s)", p, e)


UNCONFIRMED = ".unconfirmed"


def save_unconfirmed(section: str, values: dict[str, Any]) -> None:
    """Keep ``values`` beside the confirmed settings of ``section`` until ``confirm`` or ``drop_unconfirmed``."""
    save_settings(section + UNCONFIRMED, values)


def confirm(section: str) -> None:
    """The unconfirmed settings of ``section`` ran: they become its settings."""
    values = load_settings(section + UNCONFIRMED)
    if values:
        save_settings(section, values)
    drop_unconfirmed(section)


def drop_unconfirmed(section: str) -> None:
    _remove_section(section + UNCONFIRMED)


def take_unconfirmed(section: str) -> dict[str, Any]:
    """The unconfirmed settings of ``section`` left by a session that died before confirming them ({} if
    none); they are removed, so each is reported once."""
    values = load_settings(section + UNCONFIRMED)
    if values:
        drop_unconfirmed(section)
    return values


def _remove_section(section: str) -> None:
    p = settings_path()
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(data, dict) or section not in data:
        return
    del data[section]
    try:
        write_json_atomic(p, data, indent=1, default=str)
    except OSError as e:
        log.warning("could not update settings in %s (%s)", p, e)
