"""Lazy package faces: a package names its public API and where each name lives, and the module holding it
is imported on first use (so ``import napari_medseg.training`` does not import torch).

In the package's ``__init__.py``::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"train": "loop", "TrainConfig": "config"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: each name in ``exports`` is looked up in
    ``package.<module>`` when first asked for, then kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        mod = exports.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{mod}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__, sorted(exports)
