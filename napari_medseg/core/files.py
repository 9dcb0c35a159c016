"""Writing a file so that readers and a killed process see the old or the new file, never half of one.

``atomic_write`` writes to a temporary file beside the target and renames it over the target (one rename is
atomic on POSIX and Windows). ``durable=True`` also fsyncs the file and its folder, so the new file survives a
power loss (about 5 ms a call: for checkpoints and manifests, not for every label chunk). Used by the label
store (chunks, index), the prediction manifest, checkpoints and the widget settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, durable: bool = False,
                 suffix: str = ".tmp", mode: int | None = None) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    The temporary file is named ``.<name>.<random><suffix>`` and removed when ``write`` fails. ``mode``
    sets its permissions (``mkstemp`` makes it owner-only).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        if mode is not None:
            with contextlib.suppress(OSError):
                os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not possible on every system: then a no-op)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, durable: bool = False, indent: int | None = None,
                      default: Callable[[Any], Any] | None = None) -> None:
    """``obj`` as JSON at ``path`` through ``atomic_write`` (compact unless ``indent`` is given)."""
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"), default=default)
    atomic_write(path, lambda f: f.write(text.encode()), durable=durable)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB pieces."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``, or None when it is missing or not JSON (callers then rebuild or use defaults)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
