"""The folders napari-medseg keeps files in when the user has not chosen one (pure: no napari, no Qt).

- **data folder** (labels, training runs, rescued labels, predictions of images without a folder of
  their own): ``$NAPARI_MEDSEG_DATA`` if set; else ``$NAPARI_MEDSEG_CACHE`` if set (a sandbox such as a
  test run keeps everything in one place, as before); else the platform's user *data* folder
  (``~/.local/share/napari-medseg`` on Linux, ``~/Library/Application Support/napari-medseg`` on macOS,
  ``%LOCALAPPDATA%\\napari-medseg`` on Windows). Never the cache folder: cleaning tools empty caches.
- **cache folder** (the generated sample data, which can be made again): ``$NAPARI_MEDSEG_CACHE`` if set,
  else the platform's user cache folder (``~/.cache/napari-medseg`` on Linux), the same rule as
  ``napari_medseg.samples.cache.cache_dir``. Versions before 0.2 also kept the labels of the samples and
  every training run there; ``label_store_location`` moves such labels out when their image is opened.

Nothing here creates a folder: the code that writes a file creates its parents.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "napari-medseg"
DATA_ENV = "NAPARI_MEDSEG_DATA"
CACHE_ENV = "NAPARI_MEDSEG_CACHE"


def data_folder() -> Path:
    """Where napari-medseg keeps files the user must not lose (see module)."""
    for env in (DATA_ENV, CACHE_ENV):
        value = os.environ.get(env, "").strip()
        if value:
            return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def labels_folder() -> Path:
    """Labels of images whose own folder cannot take them (samples, read-only folders, in-memory images)."""
    return data_folder() / "labels"


def runs_folder() -> Path:
    """Training runs (checkpoints) when the user chose no checkpoint folder."""
    return data_folder() / "runs"


def predictions_folder() -> Path:
    """Predictions of images that have no folder of their own (or only a cache folder)."""
    return data_folder() / "predictions"


def rescue_folder() -> Path:
    """Labels that could not be saved where their store was, written when the store closes."""
    return data_folder() / "unsaved-labels"


def cache_folders() -> list[Path]:
    """The cache folder in use and the platform's default one (where older versions left labels)."""
    import platformdirs

    default = Path(platformdirs.user_cache_dir(APP, appauthor=False))
    env = os.environ.get(CACHE_ENV, "").strip()
    folders = [Path(env).expanduser()] if env else []
    return [*folders, default] if default not in folders else folders


def in_cache(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies inside a cache folder (``cache_folders``), where files may vanish."""
    p = _resolved(Path(path))
    return any(_inside(p, _resolved(c)) for c in cache_folders())


def _resolved(p: Path) -> Path:
    try:
        return p.expanduser().resolve()
    except OSError:  # pragma: no cover - e.g. a loop of symlinks
        return p.expanduser().absolute()


def _inside(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents
