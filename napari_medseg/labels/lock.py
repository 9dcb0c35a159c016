"""An advisory lock file for a label store: one editor at a time, across processes and viewers.

The lock is a small JSON file (``pid``, ``host``, ``time``, a random ``token``) created with
``O_CREAT | O_EXCL``. A second editor gets ``StoreLockedError`` naming who holds it; readers never lock.
A lock left by a dead process on this host is taken over with a log message; a lock held by another
host cannot be checked and is only broken on request (``break_lock=True``). Two viewers in *one*
process are told apart by a registry of the locks this process holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from napari_medseg.core.errors import StoreLockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".medseg.lock"

_HELD: dict[str, str] = {}  # resolved store path -> token, for the locks this process holds
_HELD_GUARD = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def read_lock(store_path: str | os.PathLike) -> dict[str, Any] | None:
    """The lock record of a store, or None when it is not locked (or the file is unreadable)."""
    try:
        return json.loads((Path(store_path) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another editor"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("time", 0))))
    return f"process {info.get('pid')} on host {info.get('host')} (since {when})"


class StoreLock:
    """The edit lock of one store directory. ``acquire()`` raises ``StoreLockedError`` if it is taken."""

    def __init__(self, store_path: str | os.PathLike) -> None:
        self.store_path = Path(store_path)
        self.path = self.store_path / LOCK_NAME
        self.key = str(self.store_path.resolve())
        self.token: str | None = None

    @property
    def held(self) -> bool:
        return self.token is not None

    def acquire(self, *, break_lock: bool = False) -> None:
        with _HELD_GUARD:
            if self.key in _HELD:
                raise StoreLockedError(
                    f"label store {self.store_path} is already open for editing in this process (another "
                    "viewer or widget); close it there first, or open it read-only."
                )
            for _attempt in range(3):
                if self._try_create():
                    _HELD[self.key] = self.token  # type: ignore[assignment]
                    return
                info = read_lock(self.store_path)
                if info is None:
                    # half-written or vanished lock: a writer is racing us, or a crash left it empty
                    if self.path.exists() and time.time() - self.path.stat().st_mtime < 5:
                        time.sleep(0.05)
                        continue
                    log.warning("label store %s: removing an unreadable lock file", self.store_path)
                    self._remove_foreign()
                    continue
                same_host = info.get("host") == socket.gethostname()
                pid = int(info.get("pid", -1))
                if same_host and pid != os.getpid() and not _pid_alive(pid):
                    log.warning("label store %s: taking over a stale lock of %s (the process is gone)",
                                self.store_path, _describe(info))
                    self._remove_foreign()
                    continue
                if same_host and pid == os.getpid():
                    # our pid but not in the registry: left by an earlier run whose pid we reuse
                    log.warning("label store %s: taking over a stale lock left with this process id",
                                self.store_path)
                    self._remove_foreign()
                    continue
                if break_lock:
                    log.warning("label store %s: breaking the lock of %s on request", self.store_path,
                                _describe(info))
                    self._remove_foreign()
                    continue
                raise StoreLockedError(
                    f"label store {self.store_path} is open for editing by {_describe(info)}; close it "
                    "there, or open it read-only."
                )
            raise StoreLockedError(f"label store {self.store_path}: could not take its lock; try again.")

    def _try_create(self) -> bool:
        token = uuid.uuid4().hex
        record = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "token": token}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        self.token = token
        return True

    def _remove_foreign(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def release(self) -> None:
        if self.token is None:
            return
        with _HELD_GUARD:
            info = read_lock(self.store_path)
            if info is not None and info.get("token") == self.token:
                try:
                    self.path.unlink()
                except OSError as e:  # read-only now, or removed by hand: nothing we can do
                    log.warning("label store %s: could not remove its lock file (%s)", self.store_path, e)
            if _HELD.get(self.key) == self.token:
                del _HELD[self.key]
            self.token = None
