"""File-system helpers shared by the tests: a folder made read-only for a while."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` (recursively) unwritable: chmod, or ``chattr +i`` when running as root."""
    paths = [folder, *folder.rglob("*")]
    dirs = [p for p in paths if p.is_dir()]
    for p in dirs:
        os.chmod(p, 0o555)
    used_chattr = False
    if _writable(folder):
        for p in dirs:
            os.chmod(p, 0o755)
        ok = subprocess.run(["chattr", "+i", *map(str, dirs)], capture_output=True).returncode == 0
        if not ok or _writable(folder):
            subprocess.run(["chattr", "-i", *map(str, dirs)], capture_output=True)
            pytest.skip("cannot make a read-only folder here (root without chattr)")
        used_chattr = True
    try:
        yield
    finally:
        if used_chattr:
            subprocess.run(["chattr", "-i", *map(str, dirs)], capture_output=True)
        else:
            for p in dirs:
                os.chmod(p, 0o755)
