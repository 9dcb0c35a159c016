"""Where the generated sample data lives, and how it gets there without half-written files.

The folder is ``$NAPARI_MEDSEG_CACHE`` if set, else the platform's user cache folder for ``napari-medseg``
(``~/.cache/napari-medseg`` on Linux). Sample files carry a version key in their name, so a change of the
generator never reads a stale file. Generation writes to temporary names in the same folder and renames
them into place (``os.replace`` is atomic), so a killed generation leaves no half file under a final name.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VAR = "NAPARI_MEDSEG_CACHE"


def cache_dir() -> Path:
    """The cache folder (created if missing)."""
    env = os.environ.get(ENV_VAR)
    if env:
        d = Path(env).expanduser()
    else:
        import platformdirs

        d = Path(platformdirs.user_cache_dir("napari-medseg", appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d


def is_cached(names: Sequence[str]) -> bool:
    """Whether every file of ``names`` is already in the cache (``ensure_files`` would not generate)."""
    d = cache_dir()
    return all((d / n).is_file() for n in names)


def ensure_files(names: Sequence[str], generate: Callable[[list[Path]], None]) -> list[Path]:
    """The cached files ``names``; if any is missing, ``generate(tmp_paths)`` writes all of them to
    temporary paths (same folder, same suffixes) which are then renamed into place."""
    d = cache_dir()
    final = [d / n for n in names]
    if is_cached(names):
        return final
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = [d / f".tmp-{tag}-{n}" for n in names]
    try:
        generate(tmp)
        missing = [str(t) for t in tmp if not t.is_file()]
        if missing:
            raise RuntimeError(f"sample generator did not write {missing}")
        for t, f in zip(tmp, final):
            os.replace(t, f)
    finally:
        for t in tmp:
            if t.exists():
                t.unlink()
    logger.info("sample data written to %s", ", ".join(str(p) for p in final))
    return final
